"""A checkpoint saved by earlier code loads and decodes to the hypotheses it gave then.

``tests/fixtures/old_checkpoint`` was written by ``scripts/write_checkpoint_fixture.py``
(fairseq-train, 3 updates of the tiny arch) before the package was reorganised; its
``hypotheses.txt`` is what fairseq-generate printed at that time.
"""
import pickletools
import shutil
import zipfile
from pathlib import Path

import pytest

from tests.builders import decoded_lines

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "old_checkpoint"


def pickled_globals(path: Path) -> set:
    """Every ``module.name`` the checkpoint's pickle refers to (what unpickling imports)."""
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            found.add(".".join(strings[-2:]))
    return found


def test_the_old_checkpoint_pickles_no_class_of_ours():
    """Class paths inside a checkpoint would break when modules move; it names none of ours."""
    names = pickled_globals(FIXTURE / "checkpoint.pt")
    assert names and not [n for n in names if n.startswith("comsl_fairseq")], sorted(names)


@pytest.mark.subprocess
def test_the_old_checkpoint_decodes_to_the_same_hypotheses(tmp_path):
    data = shutil.copytree(FIXTURE, tmp_path / "old")
    got = decoded_lines(data, data / "checkpoint.pt")
    want = (FIXTURE / "hypotheses.txt").read_text(encoding="utf-8").splitlines()
    assert [line.split("\t")[::2] for line in got] == [line.split("\t")[::2] for line in want]  # ids, tokens
    for g, w in zip(got, want, strict=True):
        scores = [float(x) for x in g.split("\t")[1].split()], [float(x) for x in w.split("\t")[1].split()]
        assert scores[0] == pytest.approx(scores[1], abs=2e-3), (g, w)
