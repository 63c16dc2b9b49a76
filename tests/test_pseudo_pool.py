"""Pseudo-ST clip selection: a newer Common Voice root, no CoVoST 2 dev or test sentence.

Pseudo-ST clip selection (examples/covost2/make_pseudo_st.py): a separate, newer Common
Voice root, and no clip whose sentence is a CoVoST 2 dev or test sentence.
"""
import logging
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes"


def load_script():
    from examples.covost2 import make_pseudo_st

    return make_pseudo_st


def write_validated(folder: Path, rows: list) -> Path:
    folder.mkdir(parents=True)
    lines = [HEADER] + [f"spk\t{path}\t{sentence}\t2\t0" for path, sentence in rows]
    (folder / "validated.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_newer_pool_drops_covost_paths_and_dev_test_sentences(tmp_path, caplog):
    mod = load_script()
    assert mod.normalise_sentence("  Le Chat, noir !") == mod.normalise_sentence("le chat noir")
    cv4 = write_validated(tmp_path / "cv4" / "fr", [("a.mp3", "le chat noir"), ("b.mp3", "Une pomme rouge."),
                                                     ("c.mp3", "le grand chien")])
    (tmp_path / "covost_v2.fr_en.tsv").write_text(
        "path\ttranslation\tsplit\na.mp3\tthe black cat\ttest\nb.mp3\ta red apple\tdev\n"
        "c.mp3\tthe big dog\ttrain\n", encoding="utf-8")
    newer = write_validated(tmp_path / "cv9" / "fr", [
        ("a.mp3", "le chat noir"),            # the CoVoST test clip itself
        ("c.mp3", "le grand chien"),          # a CoVoST train clip
        ("d.mp3", "Le chat\u00a0noir !"),     # a new recording of a test sentence
        ("e.mp3", "une pomme rouge"),         # a new recording of a dev sentence
        ("f.mp3", "le grand chien"),          # a new recording of a train sentence: allowed
        ("g.mp3", "un oiseau bleu"),          # a new sentence
        ("h.mp3", "   "),                     # empty transcript
    ])
    dropped = []
    paths, held_out = mod.covost_exclusions(cv4, tmp_path / "covost_v2.fr_en.tsv", dropped, "fr")
    assert paths == {"a.mp3", "b.mp3", "c.mp3"} and len(held_out) == 2
    with caplog.at_level(logging.INFO, logger="make_pseudo_st"):
        candidates, counts = mod.pseudo_candidates(newer, paths, held_out, dropped, "fr")
    assert [c[0] for c in candidates] == ["f.mp3", "g.mp3"]
    assert counts == {"pool": 7, "in_covost": 2, "leaked": 2, "empty": 1}
    assert {(d[2], d[3]) for d in dropped} == {("d.mp3", "sentence of a CoVoST 2 dev/test clip"),
                                                ("e.mp3", "sentence of a CoVoST 2 dev/test clip"),
                                                ("h.mp3", "empty transcript")}
    assert "fr: pool 7 validated clips" in caplog.text
