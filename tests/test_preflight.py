"""comsl-preflight on the tiny arch: through the recipe, a refused configuration, random weights.

comsl-preflight on the tiny arch: through the recipe (PREFLIGHT=1, the row's exact flags),
a refused configuration, and the random-weights mode.
"""
import re
import subprocess

from tests.test_multiprocess_recipes import ABLATIONS, recipe_env


def preflight_via_recipe(script, data_dir, whisper_pt, mbart_dir, tmp_path, *flags, **env):
    proc = subprocess.run(["bash", str(ABLATIONS / script), "--cpu", "--steps", "1", "--sample-clips", "4", *flags],
                          capture_output=True, text=True, timeout=300,
                          env=recipe_env(data_dir, whisper_pt, mbart_dir, tmp_path / "ckpt", PREFLIGHT="1",
                                         BATCH_SIZE="4", **env))
    return proc.returncode, proc.stdout


def test_preflight_checks_times_and_estimates_a_row(data_dir, whisper_pt, mbart_dir, tmp_path):
    rc, out = preflight_via_recipe("row5_freeze.sh", data_dir, whisper_pt, mbart_dir, tmp_path,
                                   NPROC_PER_NODE="2", GLOBAL_BATCH="8")
    assert rc == 0, out
    for check in ("DDP backend vs freezing", "devices vs world size", "data config and dictionary",
                  "manifest train", "manifest dev", "checkpoints vs --arch and dictionary", "clips decode"):
        assert f"[ok] {check}:" in out, out
    assert "[ok] manifest train: 16 rows kept" in out and "4 of 4 sampled clips read" in out
    # 16 rows / 4 per batch / 2 processes, update_freq 1 -> 2 updates per epoch; Whisper frozen 5 epochs
    assert "updates per epoch: 2\n" in out and "unfreeze update 10" in out
    hours = float(re.search(r"hours per epoch: ([0-9.e-]+)", out).group(1))
    run = float(re.search(r"hours for the run: ([0-9.e-]+) \(15 epochs\)", out).group(1))
    assert hours > 0 and abs(run - 15 * hours) <= 0.01 * run
    assert re.search(r"peak memory per device: [0-9.]+ GB", out)
    assert re.search(r"disk for checkpoints: [0-9.]+ GB \(5 epoch checkpoints \+ best \+ last", out)
    assert out.rstrip().endswith("preflight: all checks passed")


def test_preflight_refuses_fully_sharded_with_freezing(data_dir, capsys):
    from comsl_fairseq.benchmark import preflight
    from comsl_fairseq.training.fairseq_setup import train_cfg

    report = preflight.Report()
    cfg = train_cfg([
        str(data_dir), "--task", "comsl_speech_to_text", "--arch", "whisper_mbart_composite_tiny", "--criterion",
        "comsl_multitask", "--optimizer", "adam", "--lr", "1e-4", "--cpu", "--ddp-backend", "fully_sharded",
        "--freeze-whisper-epochs", "5"])
    preflight.check_config(cfg, 2, report)
    assert report.failed == ["DDP backend vs freezing"]
    assert "[FAIL] DDP backend vs freezing: --ddp-backend fully_sharded" in capsys.readouterr().out


def test_preflight_random_weights_reports_parameters_and_memory(capsys):
    from comsl_fairseq.cli import preflight

    assert preflight.main(["--random-weights", "--arch", "whisper_mbart_composite_tiny", "--batch-size", "2",
                                  "--seconds", "1", "--steps", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    counts = {m.group(1): int(m.group(2).replace(",", "")) for m in re.finditer(r"parameters, (.+): ([0-9,]+)", out)}
    parts = ["whisper encoder", "adapter", "mBART encoder (without token embeddings)",
             "mBART decoder (without token embeddings)", "shared token embeddings"]
    assert sum(counts[p] for p in parts) == counts["total"] > 0
    assert re.search(r"utterances/s: [0-9.]+", out) and re.search(r"peak memory: [0-9.]+ GB", out)
