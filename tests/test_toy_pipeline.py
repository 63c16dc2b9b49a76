"""The toy demo's MT stage: examples/covost2/finetune_mbart50.sh with a tiny random-init mBART
(MT_ARCH=mbart50_text_tiny) writes a text-only checkpoint that initialises the composite's
language part and is its frozen MT teacher."""
import os
import subprocess
from pathlib import Path

import torch

from tests.builders import BIN, build_task_and_model

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_mt_stage_initialises_the_composite_and_teaches_it(data_dir, whisper_pt, tmp_path):
    save = tmp_path / "mt"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DATA": str(data_dir), "SAVE_DIR": str(save),
           "MT_ARCH": "mbart50_text_tiny", "MT_BATCH_SIZE": "8", "MT_UPDATE_FREQ": "1", "MT_MAX_EPOCH": "1",
           "MT_LR": "1e-3", "MT_WARMUP": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MBART", None)
    proc = subprocess.run(["bash", str(ROOT / "examples" / "covost2" / "finetune_mbart50.sh"), "--cpu",
                           "--disable-validation", "--no-epoch-checkpoints", "--max-update", "2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    mt = save / "checkpoint_last.pt"
    state = torch.load(mt, weights_only=True)["model"]
    assert state and not any(k.startswith(("encoder.whisper.", "encoder.adapter.")) for k in state)
    _, _, composite = build_task_and_model(data_dir, "--whisper-checkpoint", str(whisper_pt), "--mbart-checkpoint",
                                           str(mt), "--mt-teacher", str(mt))
    own = composite.state_dict()
    for key, value in state.items():  # every mBART weight comes from the MT stage
        assert torch.equal(own[key], value), key
    assert own["encoder.whisper.ln_post.weight"].numel() > 0  # and the speech part is there
    from fairseq import criterions

    cfg, task, _ = build_task_and_model(data_dir, "--whisper-checkpoint", str(whisper_pt), "--mbart-checkpoint",
                                        str(mt), "--mt-teacher", str(mt))
    teacher = criterions.build_criterion(cfg.criterion, task).teacher
    assert torch.equal(teacher.decoder.layers[0].fc1.weight, state["decoder.layers.0.fc1.weight"])
