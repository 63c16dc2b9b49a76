"""The CoVoST 2 recipe README's commands, run as pasted on a fake Common Voice / CoVoST 2 layout.

CoVoST 2 end to end on a fake Common Voice / CoVoST 2 layout made here: the README's
commands, extracted and run as pasted: prep -> MT stage -> pseudo ST -> row 8 training ->
beam-5 evaluation -> per-language report.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.builders import synth_clip

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "examples" / "covost2" / "README.md"

CV_HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccent\tlocale\tsegment"
SENTENCES = {
    "fr": ['le chat noir mange une pomme', 'il dit "bonjour" à son ami', 'la maison\u00a0bleue est grande',
           'mon petit\u202fchat', 'une pomme rouge', 'le grand chien noir', 'mon ami mange', 'la pomme bleue',
           'le chat rouge', 'un grand ami'],
    "de": ['der hund sieht einen apfel', 'sie sagt "hallo" zu ihm', 'das haus ist groß', 'mein freund ist klein',
           'ein roter apfel', 'der große hund', 'mein kleiner freund', 'ein blaues haus', 'der rote hund',
           'ein großer freund'],
}
TRANSLATIONS = ["the black cat eats an apple", 'he says "hello" to his friend', "the blue house is big",
                "my small cat", "a red apple", "the big black dog", "my friend eats", "the blue apple",
                "the red cat", "a big friend"]
# per language: row index -> (covost split or None = only in validated.tsv, clip fault)
LAYOUT = {0: ("train", None), 1: ("train", None), 2: ("train_covost", None), 3: ("train", "missing"),
          4: ("train", "corrupt"), 5: ("dev", None), 6: ("test", None), 7: ("test", "zero_bytes"),
          8: ("train", "empty_translation"), 9: (None, None)}


def make_layout(root: Path) -> tuple:
    rng = np.random.default_rng(0)
    cv, tsv = root / "cv", root / "tsv"
    tsv.mkdir(parents=True)
    expected = {"kept": {}, "dropped": {}}
    for lang, sentences in SENTENCES.items():
        (cv / lang / "clips").mkdir(parents=True)
        validated = [CV_HEADER]
        covost = ["path\ttranslation\tsplit\tclient_id"]
        for i, (split, fault) in LAYOUT.items():
            name = f"common_voice_{lang}_{i:04d}.mp3"
            clip = cv / lang / "clips" / name
            if fault == "corrupt":
                clip.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00 this is not mpeg audio at all")
            elif fault == "zero_bytes":
                clip.write_bytes(b"")
            elif fault != "missing":
                sf.write(clip, synth_clip(float(rng.uniform(1.0, 2.0)), rng, sr=48000), 48000, format="MP3")
            validated.append(f"spk{i % 3}\t{name}\t{sentences[i]}\t2\t0\t\t\t\t{lang}\t")
            if split is not None:
                translation = "" if fault == "empty_translation" else TRANSLATIONS[i]
                if i == 6:  # a quoted field holding a tab and doubled quotes
                    translation = '"my ""friend""\teats"'
                covost.append(f"{name}\t{translation}\t{split}\tspk{i % 3}")
                key = (lang, name)
                if fault is None:
                    expected["kept"][key] = split
                else:
                    expected["dropped"][key] = fault
        # a new recording of a test sentence, outside CoVoST: must not become pseudo-ST data
        validated.append(f"spk1\tcommon_voice_{lang}_0010.mp3\t{sentences[6].upper()} !\t2\t0\t\t\t\t{lang}\t")
        (cv / lang / "validated.tsv").write_text("\n".join(validated) + "\n", encoding="utf-8")
        (tsv / f"covost_v2.{lang}_en.tsv").write_text("\n".join(covost) + "\n", encoding="utf-8")
    return cv, tsv, expected


def readme_commands() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 6, "the README lost its stage commands"
    return "\n".join(blocks)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, mbart_dir, whisper_pt):
    root = tmp_path_factory.mktemp("covost")
    cv, tsv, expected = make_layout(root)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               CV=str(cv), TSV=str(tsv), OUT=str(root / "out"), EXP=str(root / "exp"), MBART50=str(mbart_dir),
               WHISPER=str(whisper_pt), LANGS="fr,de", ARCH="whisper_mbart_composite_tiny", BATCH_SIZE="4",
               GLOBAL_BATCH="4",
               TRAIN_FLAGS="--cpu --max-update 2 --erm-layer 2", GEN_FLAGS="--cpu --max-len-b 8")
    script = "set -euo pipefail\ncd " + str(ROOT) + "\n" + readme_commands()
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return root, expected, proc.stdout + proc.stderr


def manifest_rows(path: Path) -> list:
    lines = path.read_text(encoding="utf-8").strip().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


def test_prep_keeps_every_good_clip_and_names_every_dropped_one(chain):
    root, expected, _ = chain
    out = root / "out"
    kept = {}
    for lang in SENTENCES:
        for split in ("train", "dev", "test"):
            for row in manifest_rows(out / f"{split}_{lang}_en.tsv"):
                kept[(lang, row["id"][len(lang) + 1:] + ".mp3")] = split
                info = sf.info(str(out / "clips" / row["audio"]))
                assert info.samplerate == 16000 and info.channels == 1 and info.frames == int(row["n_frames"])
    assert kept == {k: ("train" if v == "train_covost" else v) for k, v in expected["kept"].items()}
    dropped = {(r["lang"], r["path"]): r["reason"] for r in manifest_rows(out / "dropped.tsv")}
    reasons = {"missing": "clip missing", "corrupt": "unreadable", "zero_bytes": "empty file",
               "empty_translation": "empty translation"}
    for key, fault in expected["dropped"].items():
        assert dropped[key].startswith(reasons[fault]), (key, dropped.get(key))
    fr = {r["id"]: r for r in manifest_rows(out / "train_fr_en.tsv")}
    assert fr["fr_common_voice_fr_0002"]["src_text"] == "la maison bleue est grande"  # NBSP normalised
    assert manifest_rows(out / "test_fr_en.tsv")[0]["tgt_text"] == 'my "friend" eats'  # quoted field with a tab
    dev = manifest_rows(out / "train_fr_en.tsv") + manifest_rows(out / "dev_fr_en.tsv")
    assert any('"bonjour"' in r["src_text"] for r in dev)  # quotes kept as text
    summary = json.loads((out / "prep_summary.json").read_text())
    assert summary["dropped"] == len(expected["dropped"]) and "libsndfile" in summary["decoder"]


def test_pseudo_st_covers_clips_outside_covost(chain):
    root, _, log = chain
    for lang in SENTENCES:
        rows = manifest_rows(root / "out" / f"pseudo_{lang}_en.tsv")
        assert [r["id"] for r in rows] == [f"{lang}_common_voice_{lang}_0009"]
        assert rows[0]["src_text"] == SENTENCES[lang][9] and rows[0]["tgt_text"]
    assert re.search(r"fr: 1 validated clips outside CoVoST 2, 1 pseudo-ST rows written", log)
    assert re.search(r"fr: pool 11 validated clips .*; 9 in CoVoST 2 \(by path\), 1 with a CoVoST 2 dev/test", log)


def test_training_used_pseudo_data_and_evaluation_wrote_the_report(chain):
    root, _, log = chain
    assert re.search(r"ComSL recipe: world size 1 ", log) and "training schedule (measured): world size 1" in log
    results = json.loads((root / "exp" / "row8" / "eval" / "results.json").read_text())
    assert set(results["per_language"]) == {"fr", "de"}
    fr = results["per_language"]["fr"]
    assert fr["utterances"] == 1 and fr["paper_large"] == 38.8 and "asr_wer" in fr and "mt_bleu" in fr
    assert "chrf" in fr and "nc:6" in results["chrf_signature"]
    assert (root / "exp" / "row8" / "eval" / "checkpoint_avg_last5.pt").is_file()  # AVERAGE_LAST=5 decoded
    # step 1b trims the X->En vocabulary: the MT stage and row 8 trained with the same kept rows
    import torch

    from comsl_fairseq.vocab.fingerprint import checkpoint_fingerprint

    trims = [checkpoint_fingerprint(torch.load(root / "exp" / run / "checkpoint_last.pt", map_location="cpu"))["trim"]
             for run in ("mt", "row8")]
    assert trims[0]["sha256"] == trims[1]["sha256"] and trims[0]["rows"] < trims[0]["full_rows"]
    assert trims[0]["file"].endswith("vocab_keep_x_en.txt")
    assert results["summary"]["languages"] == 2 and results["summary"]["high_average"] is not None
    assert "nrefs:1" in results["sacrebleu_signature"]
    md = (root / "exp" / "row8" / "eval" / "results.md").read_text()
    assert "| fr | high | 1 |" in md and "average of 2 languages" in md
