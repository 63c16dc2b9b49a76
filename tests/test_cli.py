"""The fairseq-train and fairseq-generate command lines, end to end, as a user runs them (subprocesses)."""
import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.builders import generate_cmd, run, train_cmd

pytestmark = pytest.mark.subprocess


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir, whisper_pt, mbart_dir):
    """Train 3 updates from copies of the pretrained files, then delete the copies:
    decoding must not need them."""
    tmp = tmp_path_factory.mktemp("cli")
    whisper = shutil.copy(whisper_pt, tmp / "whisper.pt")
    mbart = shutil.copy(mbart_dir / "model.pt", tmp / "mbart.pt")
    log = run(*train_cmd(data_dir, whisper, mbart, tmp / "ckpt"))
    Path(whisper).unlink()
    Path(mbart).unlink()
    return tmp / "ckpt", log


def test_train_logs_each_term(trained):
    ckpt, log = trained
    assert (ckpt / "checkpoint_last.pt").is_file()
    valid = [line for line in log.splitlines() if "valid on 'dev' subset" in line]
    assert valid, log[-2000:]
    for key in ("st_loss", "asr_loss", "mt_loss", "st_acc", "asr_acc", "mt_acc"):
        assert f"| {key} " in valid[-1]
    assert "num_updates 3" in log


def test_generate_strips_tags_and_scores_every_utterance(trained, data_dir):
    ckpt, _ = trained
    out = run(*generate_cmd(data_dir, ckpt / "checkpoint_last.pt"))
    n_rows = len((data_dir / "test.tsv").read_text().strip().splitlines()) - 1
    hyps = [line for line in out.splitlines() if line.startswith("D-")]
    refs = [line for line in out.splitlines() if line.startswith("T-")]
    assert len(hyps) == len(refs) == n_rows
    assert not any(re.search(r"\[[a-z]{2}_[A-Z]{2}\]", line) for line in hyps + refs)
    assert re.search(r"Generate test with beam=5: BLEU = \d+\.\d+", out)


def test_checkpoint_reloads_with_weights_only(trained):
    ckpt, _ = trained
    from fairseq import checkpoint_utils

    state = torch.load(ckpt / "checkpoint_last.pt", map_location="cpu")  # weights_only=True by default
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(ckpt / "checkpoint_last.pt")])
    reloaded = models[0].state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in state["model"].items())
    assert cfg.model.whisper_dims["n_audio_state"] == 64  # the dims travel with the checkpoint


def test_checkpoint_with_the_older_flat_dims_still_loads(trained, tmp_path):
    """Checkpoints written before WhisperDims / MbartDims saved flat whisper_* / mbart_* fields."""
    from fairseq import checkpoint_utils

    ckpt, _ = trained
    state = torch.load(ckpt / "checkpoint_last.pt", map_location="cpu")
    model_cfg = state["cfg"]["model"]
    whisper, mbart = model_cfg.pop("whisper_dims"), model_cfg.pop("mbart_dims")
    model_cfg.update(whisper_n_mels=whisper["n_mels"], whisper_n_ctx=whisper["n_audio_ctx"],
                     whisper_dim=whisper["n_audio_state"], whisper_heads=whisper["n_audio_head"],
                     whisper_layers=whisper["n_audio_layer"], mbart_dim=mbart["dim"], mbart_ffn_dim=mbart["ffn_dim"],
                     mbart_heads=mbart["heads"], mbart_encoder_layers=mbart["encoder_layers"],
                     mbart_decoder_layers=mbart["decoder_layers"], mbart_max_positions=mbart["max_positions"],
                     mbart_activation_fn=mbart["activation_fn"])
    torch.save(state, tmp_path / "old.pt")
    models, cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "old.pt")])
    assert all(torch.equal(models[0].state_dict()[k], v) for k, v in state["model"].items())
    assert cfg.model.whisper_dims == whisper  # the pretrained files (deleted) were not needed


def test_resume_continues_from_checkpoint_last(trained, data_dir, whisper_pt, mbart_dir, tmp_path):
    ckpt, _ = trained
    resumed = tmp_path / "ckpt"
    shutil.copytree(ckpt, resumed)
    log = run(*train_cmd(data_dir, whisper_pt, mbart_dir / "model.pt", resumed, "--max-update", "4"))
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 3 updates\)", log), log[-3000:]
    assert "num_updates 4" in log


def test_validation_bleu_selects_best_checkpoint(data_dir, whisper_pt, mbart_dir, tmp_path):
    log = run(*train_cmd(data_dir, whisper_pt, mbart_dir / "model.pt", tmp_path / "ckpt", "--max-update", "4",
                         "--eval-bleu", "--eval-bleu-beam", "2", "--eval-bleu-max-len-b", "5",
                         "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric"))
    valid = [line for line in log.splitlines() if "valid on 'dev' subset" in line]
    assert valid and re.search(r"\| bleu \d+(\.\d+)? ", valid[-1]) and "best_bleu" in valid[-1], log[-3000:]
    assert (tmp_path / "ckpt" / "checkpoint_best.pt").is_file()


def test_checkpoint_with_arbitrary_callable_is_refused(trained, data_dir, tmp_path):
    import os

    ckpt, _ = trained
    state = torch.load(ckpt / "checkpoint_last.pt", map_location="cpu")
    state["extra_state"]["payload"] = os.getcwd  # any callable outside the allowlist
    torch.save(state, tmp_path / "evil.pt")
    with pytest.raises(AssertionError, match=r"would run code when loaded \(it pickles posix.getcwd.*is refused"):
        run(*generate_cmd(data_dir, tmp_path / "evil.pt"))
