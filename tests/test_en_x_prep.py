"""CoVoST 2 En->X preparation on a tiny fake Common Voice English / CoVoST 2 layout."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from comsl_fairseq.data.manifest import SkipLog, read_manifest
from comsl_fairseq.vocab.languages import COVOST_EN_X_LANGS, all_tag_symbols, mbart_tag
from tests.builders import synth_clip

CV_HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccent\tlocale\tsegment"
ENGLISH = ["the black cat eats an apple", "my small cat", "a red apple", "the big black dog", "my friend eats",
           "the blue house"]
# per clip: (covost split, fault)
CLIPS = {0: ("train", None), 1: ("train_covost", None), 2: ("train", "missing"), 3: ("dev", None),
         4: ("test", None), 5: ("test", "corrupt")}
TRANSLATIONS = {
    "de": ["die schwarze katze isst einen apfel", "meine kleine katze", "ein roter apfel", "der große schwarze hund",
           "mein freund isst", "das blaue haus"],
    # clip 4 has no Japanese translation
    "ja": ["黒い猫がりんごを食べる", "私の小さな猫", "赤いりんご", "大きな黒い犬", "", "青い家"],
    "cy": ["mae'r gath ddu yn bwyta afal", "fy nghath fach", "afal coch", "y ci du mawr", "mae fy ffrind yn bwyta",
           "y tŷ glas"],
}


def make_en_layout(root: Path) -> tuple:
    rng = np.random.default_rng(0)
    cv, tsv = root / "cv", root / "tsv"
    (cv / "en" / "clips").mkdir(parents=True)
    tsv.mkdir(exist_ok=True)
    validated = [CV_HEADER]
    for i, (_, fault) in CLIPS.items():
        name = f"common_voice_en_{i:04d}.mp3"
        clip = cv / "en" / "clips" / name
        if fault == "corrupt":
            clip.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00 not mpeg audio")
        elif fault != "missing":
            sf.write(clip, synth_clip(float(rng.uniform(1.0, 2.0)), rng, sr=48000), 48000, format="MP3")
        validated.append(f"spk{i % 2}\t{name}\t{ENGLISH[i]}\t2\t0\t\t\t\ten\t")
    (cv / "en" / "validated.tsv").write_text("\n".join(validated) + "\n", encoding="utf-8")
    for lang, translations in TRANSLATIONS.items():
        lines = ["path\tsentence\ttranslation\tclient_id\tsplit"]
        for i, (split, _) in CLIPS.items():
            lines.append(f"common_voice_en_{i:04d}.mp3\t{ENGLISH[i]}\t{translations[i]}\tspk{i % 2}\t{split}")
        (tsv / f"covost_v2.en_{lang}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return cv, tsv


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, mbart_dir):
    from examples.covost2 import prep_covost2

    root = tmp_path_factory.mktemp("covost_en_x")
    cv, tsv = make_en_layout(root)
    out = root / "out"
    assert prep_covost2.main(["--cv-root", str(cv), "--covost-tsv-root", str(tsv), "--out-root", str(out),
                              "--mbart-dir", str(mbart_dir), "--direction", "en-x", "--langs", "de,ja,cy",
                              "--workers", "1", "--no-progress"]) == 0
    return out


def rows_of(path: Path) -> list:
    lines = path.read_text(encoding="utf-8").strip().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


def test_every_en_x_target_has_a_tag_in_our_dictionary():
    assert len(COVOST_EN_X_LANGS) == 15
    symbols = set(all_tag_symbols())
    tags = {lang: mbart_tag(lang) for lang in COVOST_EN_X_LANGS}
    assert all(f"[{tag}]" in symbols for tag in tags.values())
    assert (tags["cy"], tags["ca"], tags["zh-CN"], tags["ja"]) == ("cy_GB", "ca_ES", "zh_CN", "ja_XX")


def test_en_x_manifests_per_pair_with_english_sources_and_target_tags(prepared):
    out = prepared
    kept = {}
    for lang in TRANSLATIONS:
        for split in ("train", "dev", "test"):
            rows = rows_of(out / f"{split}_en_{lang}.tsv")
            assert {(r["src_lang"], r["tgt_lang"]) for r in rows} <= {("en", lang)}
            kept[(lang, split)] = sorted(r["id"] for r in rows)
            for r in rows:
                assert r["src_text"] == ENGLISH[int(r["id"][-4:])]
                assert r["tgt_text"] == TRANSLATIONS[lang][int(r["id"][-4:])]
                info = sf.info(str(out / "clips" / r["audio"]))
                assert info.samplerate == 16000 and info.frames == int(r["n_frames"])
    assert kept[("de", "train")] == ["en_de_common_voice_en_0000", "en_de_common_voice_en_0001"]
    assert kept[("de", "dev")] == ["en_de_common_voice_en_0003"]
    assert kept[("de", "test")] == ["en_de_common_voice_en_0004"]
    assert kept[("ja", "test")] == []  # its one good test clip has no Japanese translation
    assert kept[("cy", "test")] == ["en_cy_common_voice_en_0004"]
    # the English clips are decoded once for all pairs; the ids differ per pair
    assert sorted(p.name for p in (out / "clips" / "en").glob("*.flac")) == [
        f"common_voice_en_{i:04d}.flac" for i in (0, 1, 3, 4)]
    rows = read_manifest(out / "train_en_ja.tsv", SkipLog("t")) + read_manifest(out / "train_en_cy.tsv", SkipLog("t"))
    assert {(r.src_tag, r.tgt_tag) for r in rows} == {("en_XX", "ja_XX"), ("en_XX", "cy_GB")}


def test_en_x_drops_are_named_per_pair(prepared):
    out = prepared
    dropped = {(r["lang"], r["path"]): r["reason"] for r in rows_of(out / "dropped_en_x.tsv")}
    for lang in TRANSLATIONS:
        assert dropped[(f"en_{lang}", "common_voice_en_0002.mp3")] == "clip missing"
        assert dropped[(f"en_{lang}", "common_voice_en_0005.mp3")].startswith("unreadable")
    assert dropped[("en_ja", "common_voice_en_0004.mp3")] == "empty translation"
    assert len(dropped) == 7
    summary = json.loads((out / "prep_summary_en_x.json").read_text())
    assert summary["direction"] == "en-x" and summary["dropped"] == 7
    assert summary["kept"]["en_de/train"] == 2 and "train_en_cy" in summary["manifests"]
    assert not (out / "dropped.tsv").exists()  # the X->En report is not overwritten


def test_en_x_refuses_a_language_outside_the_15(tmp_path, mbart_dir):
    from examples.covost2 import prep_covost2

    with pytest.raises(SystemExit) as e:
        prep_covost2.main(["--cv-root", str(tmp_path), "--covost-tsv-root", str(tmp_path), "--out-root",
                           str(tmp_path / "out"), "--mbart-dir", str(mbart_dir), "--direction", "en-x",
                           "--langs", "de,fr"])
    assert e.value.code == 2
