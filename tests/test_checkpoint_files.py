"""A kill during a checkpoint save loses nothing; unreadable files are named."""
import re

import pytest
import torch
from fairseq import checkpoint_utils

from comsl_fairseq.checkpoints import files as checkpoint_files
from comsl_fairseq.checkpoints.files import checkpoint_problem, resume_file
from comsl_fairseq.checkpoints.pretrained import CheckpointError
from tests.test_cli import run
from tests.test_reliability import inner_args


def test_fairseq_copies_checkpoint_last_through_the_atomic_copy():
    assert isinstance(checkpoint_utils.PathManager, checkpoint_files._AtomicCopyPathManager)
    assert checkpoint_utils.PathManager.exists(__file__)  # everything else is fairseq's own PathManager


def test_copy_killed_before_the_rename_leaves_the_old_file(tmp_path, monkeypatch):
    src, dst = tmp_path / "checkpoint_1_4.pt", tmp_path / "checkpoint_last.pt"
    torch.save({"n": 4}, src)
    torch.save({"n": 2}, dst)

    def killed(*_):  # the process dies after writing the copy, before renaming it
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_files.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint_utils.PathManager.copy(str(src), str(dst), overwrite=True)
    assert torch.load(dst)["n"] == 2 and not (tmp_path / "checkpoint_last.pt.copying").exists()
    monkeypatch.undo()
    assert checkpoint_utils.PathManager.copy(str(src), str(dst), overwrite=True)
    assert torch.load(dst)["n"] == 4


def truncate(path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_unreadable_checkpoint_is_named(tmp_path):
    ckpt = tmp_path / "checkpoint_last.pt"
    torch.save({"model": {"w": torch.zeros(1000)}}, ckpt)
    assert checkpoint_problem(ckpt) is None
    for keep, what in ((0.0, "empty"), (0.5, "truncated")):
        torch.save({"model": {"w": torch.zeros(1000)}}, ckpt)
        truncate(ckpt, keep)
        assert what in checkpoint_problem(ckpt)
        with pytest.raises(CheckpointError, match=rf"cannot read checkpoint {re.escape(str(ckpt))}: {what}"):
            checkpoint_utils.load_checkpoint_to_cpu(str(ckpt))


def test_no_intact_checkpoint_left_says_which_file_to_move(tmp_path):
    (tmp_path / "checkpoint_last.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"checkpoint_last.pt is empty .* Move .*checkpoint_last.pt away"):
        resume_file(tmp_path, "checkpoint_last.pt")
    assert resume_file(tmp_path / "absent", "checkpoint_last.pt") is None  # first launch: fairseq's logic


def test_resume_after_a_kill_during_the_copy_falls_back_to_the_newest_intact_checkpoint(data_dir, tmp_path):
    save = tmp_path / "ckpt"
    run(*inner_args(data_dir, save, "--max-update", "4", "--save-interval-updates", "2"))
    assert {p.name for p in save.glob("*.pt")} == {"checkpoint_1_2.pt", "checkpoint_best.pt", "checkpoint_last.pt"}
    (save / "checkpoint_last.pt").write_bytes(b"")  # what a kill during fairseq's plain copy left behind
    truncate(save / "checkpoint_best.pt", 0.5)  # newer than checkpoint_1_2.pt, but cut off too
    log = run(*inner_args(data_dir, save, "--max-update", "5", "--save-interval-updates", "2"))
    assert re.search(r"checkpoint_last.pt is empty .*; resuming from \S*checkpoint_1_2.pt instead", log), log[-3000:]
    assert re.search(r"Loaded checkpoint \S*checkpoint_1_2.pt \(epoch 1 @ 2 updates\)", log), log[-3000:]
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu")  # the next save repaired it
    assert state["optimizer_history"][-1]["num_updates"] == 5
