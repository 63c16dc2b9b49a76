"""scripts/benchmark.py in its seconds-long smoke mode (the real figures are in the README)."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_smoke_mode():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--arch", "tiny", "--smoke"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert any(line.startswith("| ours |") for line in lines)
    assert any(line.startswith("| paper-style (11 s, 7 passes) |") for line in lines)
    m = re.fullmatch(r"speedup_vs_fixed11: (\d+\.\d+)", lines[-1])
    assert m and float(m.group(1)) > 0
