"""comsl-benchmark in its seconds-long smoke mode (the real figures are in the README)."""
import re
import subprocess

import pytest

from tests.builders import BIN


def ratio_of(a: str, b: str):
    """a / b of two table cells printed with 2 decimals, within what that rounding allows (the
    summary line is the ratio of the unrounded figures, itself rounded to 2 decimals)."""
    x, y = float(a), float(b)
    return pytest.approx(x / y, abs=(x / y) * (0.005 / x + 0.005 / y) + 0.0051)


@pytest.mark.subprocess
def test_benchmark_smoke_mode():
    proc = subprocess.run([str(BIN / "comsl-benchmark"), "--arch", "tiny", "--smoke"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    rows = {}
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and not line.startswith("| config") and len(cells) == 7:
            rows[cells[0]] = cells[1:]
    # a row for paper-style, ours with every switch off, each switch alone, and ours
    assert list(rows) == ["paper-style (11 s, 7 passes)", "ours, switches off", "ours + lean output layer only",
                          "ours + fused output layer only", "ours + foreach Adam only",
                          "ours + one embedding gradient only", "ours + oneDNN CPU products only", "ours",
                          "ours + trimmed vocabulary"], lines
    for name, cells in rows.items():
        assert float(cells[0]) > 0 and float(cells[2]) > 0 and cells[4].endswith(" GB"), (name, cells)
    ours, paper = rows["ours"], rows["paper-style (11 s, 7 passes)"]
    # the summary lines are the ratios of the table's columns (up to the table's rounding)
    decode = re.fullmatch(r"decode_speedup_vs_fixed11: (\d+\.\d+)", lines[-2])
    train = re.fullmatch(r"speedup_vs_fixed11: (\d+\.\d+)", lines[-1])
    assert decode and train and lines[-3].startswith("memory_vs_fixed11: "), lines[-3:]
    assert float(train.group(1)) == ratio_of(ours[0], paper[0])
    assert float(decode.group(1)) == ratio_of(ours[3], paper[3])
    trimmed = {k: float(v) for k, v in (line.split(": ") for line in lines if line.startswith("trimmed_"))}
    assert trimmed.keys() == {"trimmed_memory_vs_fixed11", "trimmed_decode_speedup_vs_fixed11",
                              "trimmed_speedup_vs_fixed11"}, lines
    row = rows["ours + trimmed vocabulary"]
    assert trimmed["trimmed_speedup_vs_fixed11"] == ratio_of(row[0], paper[0])


@pytest.mark.subprocess
def test_benchmark_profiles_the_top_operators():
    proc = subprocess.run([str(BIN / "comsl-benchmark"), "--arch", "tiny", "--smoke", "--profile-ops", "5",
                           "--configs", "ours"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert any("ran under the profiler" in line for line in lines)  # its timings are marked as such
    head = [i for i, line in enumerate(lines) if line.startswith("ours: top 5 operators by CPU self time")]
    assert len(head) == 1, lines
    ops = [[c.strip() for c in line.strip("|").split("|")] for line in lines[head[0] + 3: head[0] + 8]]
    assert all(len(op) == 4 and op[3].endswith(" %") for op in ops), ops
    seconds = [float(op[2]) for op in ops]
    assert seconds == sorted(seconds, reverse=True) and seconds[0] > 0
    shares = [float(op[3][:-2]) for op in ops]
    assert 0 < sum(shares) <= 100.05
    assert any(op[0].startswith("`aten::") for op in ops), ops


def test_each_switch_row_turns_on_its_switch_alone():
    """The rows' fairseq-train flags, parsed as fairseq-train parses them: two switches set
    --output-layer, and a row's own switch must win over the other's "off"."""
    from comsl_fairseq.benchmark.synthetic import RECIPE_OPTIMIZER, configs
    from comsl_fairseq.training.fairseq_setup import train_cfg

    seen = {}
    for conf in configs(stack_decoder_passes=False):
        if conf.flags is not None:
            cfg = train_cfg(["data", "--task", "comsl_speech_to_text", "--arch", "whisper_mbart_composite_tiny",
                             "--criterion", "comsl_multitask", *RECIPE_OPTIMIZER, *conf.flags])
            seen[conf.name] = (cfg.criterion.output_layer, cfg.model.embedding_grad, not cfg.optimizer.no_foreach,
                               cfg.model.cpu_matmul)
    assert seen == {"ours, switches off": ("full", "dense", False, "torch"),
                    "ours + lean output layer only": ("lean", "dense", False, "torch"),
                    "ours + fused output layer only": ("fused", "dense", False, "torch"),
                    "ours + foreach Adam only": ("full", "dense", True, "torch"),
                    "ours + one embedding gradient only": ("full", "rows", False, "torch"),
                    "ours + oneDNN CPU products only": ("full", "dense", False, "auto"),
                    "ours": ("auto", "auto", True, "auto")}
