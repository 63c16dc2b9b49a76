"""The recipe's speed settings: the command it runs (DRY_RUN=1) and what comsl-preflight estimates."""
import re
import subprocess

import pytest

from tests.builders import ABLATIONS, recipe_env


def plan(script, data_dir, tmp_path, **env):
    proc = subprocess.run(["bash", str(ABLATIONS / script), "--cpu"], capture_output=True, text=True, timeout=60,
                          env=recipe_env(data_dir, "w.pt", tmp_path, tmp_path / "s", ARCH="x", DRY_RUN="1", **env))
    return proc.returncode, proc.stdout + proc.stderr


def test_feature_cache_only_in_frozen_rows_and_bucketing(data_dir, tmp_path):
    rc, out = plan("row5_freeze.sh", data_dir, tmp_path, WHISPER_FEATURE_CACHE=str(tmp_path / "cache"),
                   AUDIO_BUCKET_SECONDS="1.5")
    assert rc == 0, out
    assert f"--freeze-whisper-epochs 5 --whisper-feature-cache {tmp_path / 'cache'} " in out
    assert "--audio-bucket-seconds 1.5 " in out
    rc, out = plan("row5_freeze.sh", data_dir, tmp_path)
    assert rc == 0 and "--whisper-feature-cache" not in out and "--audio-bucket-seconds" not in out, out
    rc, out = plan("row4_asr.sh", data_dir, tmp_path, WHISPER_FEATURE_CACHE=str(tmp_path / "cache"))
    assert rc == 2 and "only while Whisper is frozen" in out, out


def test_preflight_counts_the_feature_cache_and_prints_padding(data_dir, whisper_pt, mbart_dir, tmp_path):
    from tests.test_preflight import preflight_via_recipe

    rc, out = preflight_via_recipe("row5_freeze.sh", data_dir, whisper_pt, mbart_dir, tmp_path,
                                   WHISPER_FEATURE_CACHE=str(tmp_path / "cache"))
    assert rc == 0, out
    m = re.search(r"Whisper feature cache: epochs 2-5 read .*: ([0-9.]+) s less per batch, ([0-9.e-]+) hours per such "
                  r"epoch \(disk: about ([0-9.]+) GB\)", out)
    assert m and float(m.group(1)) > 0, out
    hours = float(re.search(r"hours per epoch: ([0-9.e-]+)", out).group(1))
    run = float(re.search(r"hours for the run: ([0-9.e-]+) \(15 epochs, 4 of them with cached Whisper outputs\)",
                          out).group(1))
    assert run == pytest.approx(11 * hours + 4 * float(m.group(2)), rel=0.02)
    for how in ("0 (this run)", "1"):
        assert re.search(rf"padding, --audio-bucket-seconds {re.escape(how)}: audio [0-9.]+ %, transcript [0-9.]+ %, "
                         r"translation [0-9.]+ % of the batch tensors \(\d+ training batches\)", out), out
