"""Ablation recipes launched as a user launches them: 2 processes through torchrun, and 1.

Ablation recipes launched as a user launches them: NPROC_PER_NODE=2 through torchrun (gloo,
CPU, fairseq's default pytorch_ddp backend) and 1 process, on the tiny fixture.

16 training rows, 4 utterances per process per step, 2 epochs, Whisper frozen for 1 epoch.
On 2 processes (GLOBAL_BATCH 8 -> update_freq 1) an epoch is 2 updates. Row 5 on 1 process
with the same global batch (update_freq 2) must train the same schedule and, without dropout,
the same weights: each update sees the same utterances, so this checks DDP's averaging and our
own for Whisper (kept out of DDP's reducer while freezing is configured). Row 7 on 1 process
with the same per-process batch and update_freq (GLOBAL_BATCH 4) has 4 updates per epoch: the
measured schedule, the unfreeze update and the LR decay must follow.
"""
import re
import subprocess
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from comsl_fairseq.checkpoints.pretrained import load_whisper_checkpoint
from tests.builders import ABLATIONS, free_port, recipe_env

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = re.compile(r"training schedule \(measured\): world size (\d+), (\d+) batches .*?-> (\d+) updates per "
                      r"epoch; total updates (\d+) .*?unfreeze update (\d+)")


def whisper_state(path: Path) -> dict:
    state = torch.load(path, map_location="cpu")
    whisper = {k[len("encoder.whisper."):]: v for k, v in state["model"].items() if k.startswith("encoder.whisper.")}
    return whisper, state["optimizer_history"][-1]["num_updates"]


def test_launch_plan_follows_world_size_and_slurm(data_dir, tmp_path):
    """DRY_RUN=1: the command each launch would run (no training)."""
    def plan(**env):
        proc = subprocess.run(["bash", str(ABLATIONS / "row7_cml.sh"), "--cpu"], capture_output=True, text=True,
                              timeout=60, env=recipe_env(data_dir, "w.pt", tmp_path, tmp_path / "s", ARCH="x",
                                                         DRY_RUN="1", **env))
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    one = plan()  # --cpu: 1 process, no torchrun; the paper's 512 utterances from 16 x update_freq 32
    assert one.startswith("fairseq-train ") and "--update-freq 32 " in one and "--distributed" not in one
    eight = plan(NPROC_PER_NODE="8")
    assert eight.startswith("torchrun --nnodes 1 --nproc-per-node 8 ") and "--update-freq 4 " in eight
    assert "--distributed-world-size 8 --distributed-backend gloo" in eight
    slurm = plan(NPROC_PER_NODE="8", SLURM_NNODES="4", SLURM_NODEID="2", SLURM_JOB_ID="4242")
    assert "--nnodes 4 --nproc-per-node 8 --node-rank 2 " in slurm and "--master-port 24242 " in slurm
    assert "--distributed-world-size 32 " in slurm and "--update-freq 1 " in slurm
    assert "--lr-scheduler epoch_polynomial_decay" in slurm and "--total-num-update" not in slurm
    assert "--freeze-whisper-epochs 5" in slurm


def run_row(script, nproc, global_batch, data_dir, whisper_pt, mbart_dir, save_dir, *flags) -> str:
    env = recipe_env(data_dir, whisper_pt, mbart_dir, save_dir, NPROC_PER_NODE=str(nproc), MASTER_PORT=str(free_port()),
                     BATCH_SIZE="4", GLOBAL_BATCH=str(global_batch), MAX_EPOCH="2", FREEZE_EPOCHS="1", WARMUP="1")
    proc = subprocess.run(["bash", str(ABLATIONS / script), "--cpu", "--eval-bleu-max-len-b", "4", *flags],
                          capture_output=True, text=True, env=env, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]  # torchrun: every rank exited cleanly
    return out


def check_run(out, nproc, update_freq, save_dir, original) -> int:
    """The schedule checks of one run; returns the unfreeze update."""
    m = SCHEDULE.search(out)
    assert m, out[-3000:]
    world, batches, per_epoch, total, unfreeze = map(int, m.groups())
    assert (world, batches, per_epoch) == (nproc, 4 // nproc, 4 // nproc // update_freq)  # 16 rows / 4 / world
    assert total == 2 * per_epoch and unfreeze == per_epoch  # 2 epochs, frozen for the first
    if nproc > 1:
        assert "distributed init (rank 1)" in out
    last_train = [line for line in out.splitlines() if "| train | epoch 002" in line][-1]
    assert f"num_updates {total} " in last_train and "| lr 1e-07 " in last_train, last_train  # decay's end
    frozen, updates = whisper_state(save_dir / "checkpoint1.pt")
    assert updates == unfreeze
    assert all(torch.equal(frozen[k], original[k].float()) for k in original)  # through the last frozen update
    trained, updates = whisper_state(save_dir / "checkpoint_last.pt")
    assert updates == total
    changed = [k for k in original if not torch.equal(trained[k], original[k].float())]
    assert "conv1.weight" in changed and len(changed) > len(original) // 2
    return unfreeze


def reload_and_decode(checkpoint: Path) -> list:
    from fairseq import checkpoint_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)])
    task.load_dataset("test")
    ds = task.dataset("test")
    sample = ds.collater([ds[i] for i in range(3)])
    generator = task.build_generator(models, Namespace(beam=2, max_len_b=4, prefix_size=1))
    hyps = task.inference_step(generator, models, sample, prefix_tokens=sample["target"][:, :1])
    return [task.decode_tokens(h[0]["tokens"]) for h in hyps]


# script: [(processes, global batch)], expected unfreeze update per run, extra flags
# Row 5 forces --embedding-grad rows (auto keeps torch's embedding for the fixture's small matrix),
# so the one-gradient-per-step path is checked under DDP too.
ROWS = {"row5_freeze.sh": ([(2, 8), (1, 8)], [2, 2], ("--dropout", "0", "--adapter-dropout", "0",
                                                      "--embedding-grad", "rows")),
        "row7_cml.sh": ([(2, 8), (1, 4)], [2, 4], ())}


@pytest.mark.parametrize("script", sorted(ROWS))
def test_row_on_two_processes_and_one(script, data_dir, whisper_pt, mbart_dir, tmp_path):
    _, original = load_whisper_checkpoint(whisper_pt)
    runs, expected_unfreeze, flags = ROWS[script]
    unfreeze = []
    for nproc, global_batch in runs:
        save = tmp_path / f"np{nproc}"
        out = run_row(script, nproc, global_batch, data_dir, whisper_pt, mbart_dir, save, *flags)
        unfreeze.append(check_run(out, nproc, global_batch // (4 * nproc), save, original))
        if script.startswith("row7"):
            assert "| stm_st_loss " in out and "| erm_loss " in out
    assert unfreeze == expected_unfreeze  # same global batch: same schedule; else it follows the world size
    if script.startswith("row5"):  # the same utterances per update, no dropout: the same weights
        two, one = (torch.load(tmp_path / f"np{n}" / "checkpoint_last.pt", map_location="cpu") for n in (2, 1))
        assert two["cfg"]["model"]["embedding_grad"] == "rows"  # the one-gradient path ran under DDP
        two, one = two["model"], one["model"]
        assert max((two[k] - one[k]).abs().max().item() for k in two) <= 1e-8
    hyps = reload_and_decode(tmp_path / "np2" / "checkpoint_last.pt")
    assert len(hyps) == 3 and all(isinstance(h, str) for h in hyps)
