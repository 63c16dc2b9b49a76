"""The demo's tools: toy corpus generation, single-file translation, toy scoring."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from comsl_fairseq.data.config import DataConfig
from comsl_fairseq.vocab.vocabulary import build_dictionary
from tests.builders import BIN, run, train_cmd

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parents[1]


def rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    cmd = [sys.executable, str(ROOT / "examples" / "toy" / "make_toy_corpus.py"), "--out", str(out), "--numbers", "14",
           "--dev-numbers", "2", "--test-numbers", "3", "--variants", "2", "--langs", "fr,de", "--vocab-size", "60"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, cmd


def test_toy_corpus_is_split_by_number_and_in_the_data_contract(toy):
    out, _ = toy
    train, dev, test = (rows(out / f"{s}.tsv") for s in ("train", "dev", "test"))
    assert (len(train), len(dev), len(test)) == (9 * 2 * 2, 2 * 2 * 1, 3 * 2 * 2)
    number = lambda r: int(r["id"].split("_")[1])  # noqa: E731
    assert not {number(r) for r in train} & {number(r) for r in test + dev}
    for r in test:
        info = sf.info(str(out / "clips" / r["audio"]))
        assert info.samplerate == 16000 and info.channels == 1 and info.frames == int(r["n_frames"]) > 1600
    zero = [r for r in train + test if number(r) == 0]
    assert {(r["src_lang"], r["src_text"], r["tgt_text"]) for r in zero} <= {("fr", "zéro", "zero"),
                                                                              ("de", "null", "zero")}
    cfg = DataConfig.load(out / "config.yaml")
    d, n_pretrained = build_dictionary(cfg.vocab_filename)
    assert d.index("<mask>") == n_pretrained - 1 and len(d) == n_pretrained + 2


def test_toy_corpus_rerun_reuses_clips(toy):
    out, cmd = toy
    clip = next((out / "clips").glob("*.flac"))
    before = clip.stat().st_mtime_ns
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    assert clip.stat().st_mtime_ns == before


def test_toy_test_sets_unseen_voices_and_noise(toy):
    out, _ = toy
    train, test = rows(out / "train.tsv"), rows(out / "test.tsv")
    unseen, noisy = rows(out / "unseen_voices.tsv"), rows(out / "noise_10db.tsv")
    assert len(unseen) == len(noisy) == len(test)
    assert not {r["speaker"] for r in unseen} & {r["speaker"] for r in train}  # voices never heard in training
    assert [r["tgt_text"] for r in unseen] == [r["tgt_text"] for r in test]
    for clean, dirty in zip(test, noisy, strict=True):
        assert (dirty["src_text"], dirty["tgt_text"]) == (clean["src_text"], clean["tgt_text"])
        x, _ = sf.read(str(out / "clips" / clean["audio"]), dtype="float64")
        y, _ = sf.read(str(out / "clips" / dirty["audio"]), dtype="float64")
        snr = 10 * np.log10(np.mean(x ** 2) / np.mean((y - x) ** 2))
        assert abs(snr - 10) < 0.5, snr  # 10 dB (FLAC is 16-bit; clipping is rare)
    mt = rows(out / "train_mt.tsv")  # every training number as text, for the MT stage
    assert {(r["src_lang"], r["src_text"]) for r in mt} == {(r["src_lang"], r["src_text"]) for r in train}


def load_corpus_builder():
    from examples.toy import make_toy_corpus

    return make_toy_corpus


def test_trim_silence_keeps_the_asked_margin_around_the_speech():
    trim = load_corpus_builder().trim_silence
    sr = 16000
    t = np.arange(sr) / sr
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # 1 s of "speech"
    wav = np.concatenate([np.zeros(sr // 5), tone, 1e-4 * np.ones(sr // 2)]).astype(np.float32)  # 0.2 s + 1 s + 0.5 s
    out = trim(wav, 0.1)
    assert abs(len(out) - int(1.2 * sr)) <= sr // 100  # speech plus 0.1 s at each end, to the 10 ms frame
    assert np.abs(out[: int(0.09 * sr)]).max() == 0 and np.abs(out[int(0.11 * sr):int(0.12 * sr)]).max() > 0.1
    assert len(trim(wav, 1.0)) == len(wav)  # a margin longer than the silence keeps all of it
    assert len(trim(np.zeros(sr, np.float32), 0.1)) == sr  # nothing above the floor: left alone


def test_clips_cut_another_way_are_synthesized_again(tmp_path):
    builder = load_corpus_builder()
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "fr_0001_v0.flac").write_bytes(b"old")
    (tmp_path / "corpus_info.json").write_text(json.dumps({"keep_silence": 0.1, "recipe": builder.RECIPE}))
    builder.drop_stale_clips(tmp_path, 0.1)  # same setting: reused
    assert (tmp_path / "clips" / "fr_0001_v0.flac").exists()
    (tmp_path / "corpus_info.json").write_text(json.dumps({"keep_silence": 0.1}))  # an older recipe's clips
    builder.drop_stale_clips(tmp_path, 0.1)
    assert not (tmp_path / "clips" / "fr_0001_v0.flac").exists()
    (tmp_path / "clips" / "fr_0001_v0.flac").write_bytes(b"old")
    (tmp_path / "corpus_info.json").write_text(json.dumps({"langs": ["fr"]}))  # written before --keep-silence
    builder.drop_stale_clips(tmp_path, 0.1)
    assert not (tmp_path / "clips" / "fr_0001_v0.flac").exists() and not (tmp_path / "corpus_info.json").exists()


def test_translate_command(data_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    run(*train_cmd(data_dir, "", "", ckpt, "--max-update", "1", "--disable-validation"))
    clips = sorted((data_dir / "clips").glob("test_*"))
    proc = subprocess.run([str(BIN / "comsl-translate"), "--path",
                           str(ckpt / "checkpoint_last.pt"), "--src-lang", "fr", "--beam", "5", "--max-len-b", "6",
                           "--cpu", "--keep-no-speech", str(clips[0]), str(data_dir / "clips")],
                          capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    n_clips = len(list((data_dir / "clips").iterdir()))
    assert len(lines) == 1 + n_clips and lines[0].startswith(str(clips[0]) + "\t")
    assert "[" not in proc.stdout  # no language tags in the output
    assert "real-time factor:" in proc.stderr
    bad = subprocess.run([str(BIN / "comsl-translate"), "--path",
                          str(ckpt / "checkpoint_last.pt"), "--src-lang", "xx", str(clips[0])],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "unknown language code 'xx'" in bad.stderr


def test_score_toy_counts_exact_matches_and_refuses_missing_hypotheses(tmp_path):
    manifest = tmp_path / "test.tsv"
    manifest.write_text("id\taudio\tn_frames\tsrc_text\ttgt_text\tsrc_lang\ttgt_lang\n"
                        "a\ta.flac\t16000\tun\tone\tfr\ten\nb\tb.flac\t16000\tdeux\ttwo\tfr\ten\n", encoding="utf-8")
    log = tmp_path / "gen.txt"
    log.write_text("T-0\tone\nD-0\t-0.1\tone\nT-1\ttwo\nD-1\t-0.3\tthree\n", encoding="utf-8")
    script = [sys.executable, str(ROOT / "examples" / "toy" / "score_toy.py"), "--generate-log", str(log),
              "--manifest", str(manifest)]
    proc = subprocess.run(script, capture_output=True, text=True)
    assert proc.returncode == 0 and "exact_match: 50.0%" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("BLEU = ")
    log.write_text("T-0\tone\nD-0\t-0.1\tone\n", encoding="utf-8")
    proc = subprocess.run(script, capture_output=True, text=True)
    assert proc.returncode == 1 and "1 of 2 utterances have no hypothesis" in proc.stderr


def test_train_progress_prints_updates_validation_and_warnings(tmp_path):
    log = "\n".join([
        '2026-01-01 00:00:00 | INFO | train_inner | {"epoch": 1, "loss": "6.7", "st_loss": "7.01", "ups": "1.5", '
        '"num_updates": "10"}',
        "2026-01-01 00:00:01 | WARNING | fairseq.trainer | something odd",
        '2026-01-01 00:00:02 | INFO | dev | {"epoch": 1, "dev_loss": "6.5", "dev_st_loss": "6.9", '
        '"dev_num_updates": "20"}',
        '2026-01-01 00:00:03 | INFO | train | {"epoch": 1, "train_loss": "6.6", "train_num_updates": "20"}',
        "2026-01-01 00:00:04 | INFO | hydra | a notice"]) + "\n"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "toy" / "train_progress.py"), "--total", "100",
                           "--log", str(tmp_path / "train.log")], input=log, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("update    10/100 ( 10 %) | loss 6.700 st_loss 7.010 | 1.50 upd/s")
    assert lines[1:] == ["2026-01-01 00:00:01 | WARNING | fairseq.trainer | something odd",
                         "  dev after epoch 1: loss 6.500 st_loss 6.900"]
    assert (tmp_path / "train.log").read_text() == log


def test_ablation_report_tables_rows_with_intervals_and_paired_deltas(tmp_path):
    """examples/toy/ablation_report.py on two rows' generate logs: a markdown table with each
    row's BLEU and interval per set, and the second row's paired difference against the first."""
    from comsl_fairseq.data.manifest import write_manifest
    from comsl_fairseq.evaluation.logs import write_generate_log

    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    refs = [f"{a} hundred and {b}" for a in words for b in words][:60]
    columns = ("id", "audio", "n_frames", "src_text", "tgt_text", "src_lang", "tgt_lang")
    (tmp_path / "data").mkdir()
    write_manifest(tmp_path / "data" / "set_a.tsv",
                   [[f"fr_{i}_v0", f"c{i}.flac", "16000", "x", r, "fr", "en"] for i, r in enumerate(refs)],
                   columns=columns)
    good = refs[:50] + ["nine"] * 10  # right on 50 of 60
    write_generate_log(tmp_path / "exp" / "row1_st_only" / "generate-set_a.txt", refs, good)
    write_generate_log(tmp_path / "exp" / "row2_mt" / "generate-set_a.txt", refs, ["nine"] * 60)
    (tmp_path / "exp" / "row2_mt" / "time.txt").write_text("train 10 s, decode 2 s\n")
    proc = subprocess.run([sys.executable, "examples/toy/ablation_report.py", "--exp", tmp_path / "exp", "--data",
                           tmp_path / "data", "--rows", "row1_st_only,row2_mt", "--sets", "set_a", "--out",
                           tmp_path / "out"], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "out" / "ablation.md").read_text()
    row1, row2 = (line for line in table.splitlines() if line.startswith(("| 1 ST only", "| 2 + MT")))
    assert "26.48" in row1 and "[" in row1  # the paper's figure and an interval
    assert "*" in row2 and "train 10 s" in row2  # a significant drop against row 1
    result = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert result["rows"]["row1_st_only"]["set_a"]["bleu"] > result["rows"]["row2_mt"]["set_a"]["bleu"]
    assert (tmp_path / "out" / "ablation.png").stat().st_size > 0


def test_multilingual_toy_vocabulary_is_mostly_unused_and_trims_without_losing_text(tmp_path):
    """The premise of `make trim-vocab-ab`: with --vocab-languages the toy's dictionary is
    multilingual and its own text uses a small part of it; the trimmed tokenizer still spells
    held-out numbers exactly."""
    from comsl_fairseq.vocab.trim import pieces_to_keep, restrict_sentencepiece, write_keep_file
    from comsl_fairseq.vocab.vocabulary import load_sentencepiece, train_sentencepiece

    builder = load_corpus_builder()
    texts = builder.vocabulary_texts("fr,de,es,en,ru,it,pl,tr", 400)
    assert len(texts) == 8 * 400 and texts[400] == "null"  # German's 0, in the order asked
    assert len(builder.vocabulary_texts("all", 2)) >= 2 * 40  # every num2words language that can spell
    with pytest.raises(SystemExit, match="no language 'xx'"):
        builder.vocabulary_texts("fr,xx", 2)
    train_sentencepiece(texts, tmp_path, 1000)
    sp = load_sentencepiece(tmp_path / "sentence.bpe.model")
    dictionary, _ = build_dictionary(tmp_path / "dict.txt")
    train_text = [builder.spell(n, lang) for n in range(0, 100, 3) for lang in ("fr", "de", "es", "en")]
    kept = pieces_to_keep(sp, dictionary, train_text)
    assert len(kept) < 0.3 * sp.get_piece_size()
    write_keep_file(tmp_path / "keep.txt", kept)
    restricted = restrict_sentencepiece(load_sentencepiece(tmp_path / "sentence.bpe.model"), kept)
    for n in (101, 245, 399):  # never in the kept text: spelled with the kept pieces, never <unk>
        for lang in ("fr", "de", "es", "en"):
            text = builder.spell(n, lang)
            pieces = restricted.encode(text, out_type=str)
            assert set(pieces) <= set(kept) and restricted.decode(pieces) == text, (lang, n, pieces)
