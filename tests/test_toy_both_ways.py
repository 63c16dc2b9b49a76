"""The toy corpus in both directions: English speech into fr/de number words beside the default
fr/de -> English corpus, which the option leaves byte for byte as it was."""
import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import soundfile as sf
from num2words import num2words

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--numbers", "14", "--dev-numbers", "2", "--test-numbers", "3", "--variants", "2", "--langs", "fr,de",
        "--vocab-size", "60"]
X_EN_FILES = ("train.tsv", "dev.tsv", "test.tsv", "unseen_voices.tsv", "noise_10db.tsv", "train_mt.tsv",
              "dict.txt", "config.yaml")


def rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def make(out: Path, *extra: str) -> None:
    cmd = [sys.executable, str(ROOT / "examples" / "toy" / "make_toy_corpus.py"), "--out", str(out), *ARGS, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    plain = tmp_path_factory.mktemp("toy_plain")
    make(plain)
    both = tmp_path_factory.mktemp("toy_both")
    shutil.copytree(plain, both, dirs_exist_ok=True)  # the X->En clips are reused, English ones added
    make(both, "--en-x-targets", "fr,de")
    return plain, both


def number(row) -> int:
    return int(row["id"].split("_")[1])


def test_the_x_en_corpus_is_unchanged_by_the_option(corpora):
    plain, both = corpora
    for name in X_EN_FILES:
        assert (plain / name).read_bytes() == (both / name).read_bytes(), name
    # the SentencePiece model file also records the folder it was written to: compare its pieces
    models = [spm.SentencePieceProcessor(model_file=str(folder / "sentence.bpe.model")) for folder in corpora]
    pieces = [[(m.id_to_piece(i), m.get_score(i)) for i in range(m.get_piece_size())] for m in models]
    assert pieces[0] == pieces[1]
    assert not list(plain.glob("*_en_x.tsv"))


def test_english_speech_into_french_and_german_number_words(corpora):
    _, out = corpora
    train, dev, test = (rows(out / f"{s}_en_x.tsv") for s in ("train", "dev", "test"))
    # training: each clip one target, the targets taking turns over a number's 2 voices
    assert len(train) == 9 * 2 and len(dev) == 2 * 1 * 2 and len(test) == 3 * 2 * 2
    for r in train + dev + test:
        n = number(r)
        assert (r["src_lang"], r["src_text"]) == ("en", num2words(n, lang="en"))
        assert r["tgt_lang"] in ("fr", "de") and r["tgt_text"] == num2words(n, lang=r["tgt_lang"])
    assert {number(r) for r in test} == {number(r) for r in rows(out / "test.tsv")}  # the same held-out numbers
    assert not {number(r) for r in train} & {number(r) for r in test + dev}
    by_number = {}
    for r in train:
        by_number.setdefault(number(r), set()).add(r["tgt_lang"])
    assert all(langs == {"fr", "de"} for langs in by_number.values())
    # a test clip is decoded into every target: one clip, two rows
    assert len({r["audio"] for r in test}) == len(test) // 2
    info = sf.info(str(out / "clips" / test[0]["audio"]))
    assert info.samplerate == 16000 and info.frames == int(test[0]["n_frames"]) > 1600
    mt = rows(out / "train_mt_en_x.tsv")
    assert {(r["src_text"], r["tgt_lang"]) for r in mt} == {(num2words(n, lang="en"), t)
                                                            for n in {number(r) for r in mt} for t in ("fr", "de")}


def test_english_unseen_voices_and_noise_sets(corpora):
    _, out = corpora
    train, test = rows(out / "train_en_x.tsv"), rows(out / "test_en_x.tsv")
    unseen, noisy = rows(out / "unseen_voices_en_x.tsv"), rows(out / "noise_10db_en_x.tsv")
    assert len(unseen) == len(noisy) == len(test)
    assert not {r["speaker"] for r in unseen} & {r["speaker"] for r in train}
    for clean, dirty in zip(test, noisy, strict=True):
        assert (dirty["src_text"], dirty["tgt_text"], dirty["tgt_lang"]) == (
            clean["src_text"], clean["tgt_text"], clean["tgt_lang"])
        x, _ = sf.read(str(out / "clips" / clean["audio"]), dtype="float64")
        y, _ = sf.read(str(out / "clips" / dirty["audio"]), dtype="float64")
        snr = 10 * np.log10(np.mean(x ** 2) / np.mean((y - x) ** 2))
        assert abs(snr - 10) < 0.5, snr
    assert len({r["id"] for r in test + unseen + noisy + train}) == len(test + unseen + noisy + train)
