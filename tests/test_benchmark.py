"""comsl-benchmark in its seconds-long smoke mode (the real figures are in the README)."""
import re
import subprocess

import pytest

from tests.builders import BIN


@pytest.mark.subprocess
def test_benchmark_smoke_mode():
    proc = subprocess.run([str(BIN / "comsl-benchmark"), "--arch", "tiny", "--smoke"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    rows = {}
    for name in ("ours", "paper-style (11 s, 7 passes)"):
        row = next(line for line in lines if line.startswith(f"| {name} |"))
        rows[name] = [float(x) for x in re.findall(r"\| (\d+\.\d+) ", row)[:3]]  # train utt/s, audio-s/s, decode
        assert len(rows[name]) == 3 and all(x > 0 for x in rows[name]), row
    # the summary lines are the ratios of the table's columns (up to the table's rounding)
    ours, paper = rows["ours"], rows["paper-style (11 s, 7 passes)"]
    decode = re.fullmatch(r"decode_speedup_vs_fixed11: (\d+\.\d+)", lines[-2])
    train = re.fullmatch(r"speedup_vs_fixed11: (\d+\.\d+)", lines[-1])
    assert decode and train, lines[-2:]
    assert float(train.group(1)) == pytest.approx(ours[0] / paper[0], rel=0.02, abs=0.011)
    assert float(decode.group(1)) == pytest.approx(ours[2] / paper[2], rel=0.02, abs=0.011)
