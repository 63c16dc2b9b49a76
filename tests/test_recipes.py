"""Every ablation recipe runs 2 updates on the tiny fixture; Whisper freezing through the CLI."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from comsl_fairseq.checkpoints.pretrained import load_whisper_checkpoint
from tests.builders import copy_data

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = ROOT / "examples" / "covost2" / "ablations"
SCRIPTS = sorted(p.name for p in ABLATIONS.glob("*.sh"))


def run_recipe(script, data_dir, whisper_pt, mbart_dir, save_dir, *extra, env_extra=None):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", DATA=str(data_dir),
               SAVE_DIR=str(save_dir), ARCH="whisper_mbart_composite_tiny", WHISPER=str(whisper_pt),
               MBART=str(mbart_dir / "model.pt"), MT_TEACHER=str(mbart_dir / "model.pt"), BATCH_SIZE="8",
               GLOBAL_BATCH="8", PSEUDO_SUBSETS="pseudo", **(env_extra or {}))
    proc = subprocess.run(["bash", str(ABLATIONS / script), "--cpu", *extra], capture_output=True, text=True,
                          env=env, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def test_there_is_one_script_per_row_and_the_baseline():
    assert SCRIPTS == ["baseline_no_cml.sh"] + [f"row{i}_{n}.sh" for i, n in enumerate(
        ["st_only", "mt", "ddm", "asr", "freeze", "mt_reg", "cml", "pseudo"], start=1)]


@pytest.fixture(scope="module")
def pseudo_data(data_dir, tmp_path_factory):
    """A copy of the data folder with its train manifest again, as a stand-in pseudo-ST
    manifest for row 8."""
    data = copy_data(data_dir, tmp_path_factory.mktemp("pseudo_data"))
    shutil.copy(data / "train.tsv", data / "pseudo.tsv")
    return data


@pytest.mark.parametrize("script", SCRIPTS)
def test_ablation_recipe_trains_two_updates(script, pseudo_data, whisper_pt, mbart_dir, tmp_path):
    out = run_recipe(script, pseudo_data, whisper_pt, mbart_dir, tmp_path / "ckpt", "--max-update", "2")
    assert "num_updates 2" in out
    assert list((tmp_path / "ckpt" / "tensorboard").rglob("events.out.tfevents.*"))  # TENSORBOARD_DIR default
    train_line = [line for line in out.splitlines() if "| train | epoch" in line][-1]
    expected = {"row1": ["st"], "row2": ["st", "mt"], "row7": ["st", "asr", "mt", "stm_asr", "stm_st", "mtp", "erm"]}
    for key in expected.get(script[:4], ["st"]):
        assert f"| {key}_loss " in train_line, train_line
    if script.startswith(("row1", "row2", "row3", "row4", "row5", "row6", "baseline")):
        assert "stm_st_loss" not in train_line and "erm_loss" not in train_line
    if script.startswith(("row6", "row7", "row8", "baseline")):
        assert "MT teacher from" in out
        # the frozen teacher's weights are not written into our checkpoints
        state = torch.load(tmp_path / "ckpt" / "checkpoint_last.pt", map_location="cpu")
        assert not state.get("criterion") and all(k.startswith(("encoder.", "decoder.")) for k in state["model"])
        assert not any("teacher" in k for k in state["model"])
    if script.startswith("row8"):
        assert re.search(r"train,pseudo: kept 32 rows", out)  # train + pseudo


def test_whisper_is_unchanged_while_frozen_and_trains_after(pseudo_data, whisper_pt, mbart_dir, tmp_path):
    _, original = load_whisper_checkpoint(whisper_pt)

    def whisper_after(updates, save):
        # row 5's strategy with a 2-update freeze, weight decay 0.1 and a large learning rate
        run_recipe("row5_freeze.sh", pseudo_data, whisper_pt, mbart_dir, save, "--max-update", str(updates),
                   "--freeze-whisper-updates", "2", "--lr", "1e-2", "--warmup-updates", "1",
                   env_extra={"FREEZE_EPOCHS": "0"})  # by updates only (by epochs: test_multiprocess_recipes)
        state = torch.load(save / "checkpoint_last.pt", map_location="cpu")["model"]
        return {k[len("encoder.whisper."):]: v for k, v in state.items() if k.startswith("encoder.whisper.")}

    frozen = whisper_after(2, tmp_path / "a")
    assert all(torch.equal(frozen[k], original[k].float()) for k in original)
    trained = whisper_after(4, tmp_path / "b")
    changed = [k for k in original if not torch.equal(trained[k], original[k].float())]
    assert "conv1.weight" in changed and len(changed) > len(original) // 2
