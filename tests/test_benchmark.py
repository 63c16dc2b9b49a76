"""comsl-benchmark in its seconds-long smoke mode (the real figures are in the README)."""
import re
import subprocess
from pathlib import Path

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


@pytest.mark.subprocess
def test_benchmark_times_the_frozen_whisper_epochs():
    """--frozen-whisper: every row frozen, ours reading the feature cache (every timed clip
    read, none computed), a row that fills it (every clip computed), and the ratios named
    frozen_* (no decoding: freezing changes training only)."""
    proc = subprocess.run([str(BIN / "comsl-benchmark"), "--arch", "tiny", "--smoke", "--frozen-whisper",
                           "--configs", "paper-style (11 s, 7 passes)", "ours + Whisper feature cache only",
                           "ours, first frozen epoch (fills the feature cache)"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    rows = {c[0]: c[1:] for c in ([x.strip() for x in line.strip("|").split("|")] for line in lines
                                  if line.startswith("| ") and not line.startswith("| config"))}
    assert list(rows) == ["paper-style (11 s, 7 passes)", "ours + Whisper feature cache only", "ours",
                          "ours, first frozen epoch (fills the feature cache)"], lines
    assert all(cells[3] == "-" for cells in rows.values())  # no decoding
    use = dict(re.fullmatch(r"# (.+): Whisper feature cache over the timed steps: (\d+ clips read, \d+ computed)"
                            r" and stored", line).groups() for line in lines if "feature cache over" in line)
    assert use == {"ours + Whisper feature cache only": "2 clips read, 0 computed",
                   "ours": "2 clips read, 0 computed",
                   "ours, first frozen epoch (fills the feature cache)": "0 clips read, 2 computed"}, lines
    ratios = dict(line.split(": ") for line in lines if "_vs_fixed11: " in line)
    assert ratios.keys() == {"frozen_fill_memory_vs_fixed11", "frozen_fill_speedup_vs_fixed11",
                             "frozen_memory_vs_fixed11", "frozen_speedup_vs_fixed11"}, lines
    paper = rows["paper-style (11 s, 7 passes)"]
    assert float(ratios["frozen_speedup_vs_fixed11"]) == ratio_of(rows["ours"][0], paper[0])
    assert float(ratios["frozen_fill_speedup_vs_fixed11"]) == ratio_of(
        rows["ours, first frozen epoch (fills the feature cache)"][0], paper[0])


def test_frozen_rows_freeze_whisper_and_name_their_cache(tmp_path):
    """Under --frozen-whisper every row's flags freeze Whisper; the cache rows share one folder
    to read and the filling row gets an empty one of its own; without it nothing changes."""
    from types import SimpleNamespace

    from comsl_fairseq.benchmark.synthetic import FEATURE_CACHE, FILLING, PAPER_STYLE, configs, row_flags

    def cache_of(flags):
        return flags[flags.index("--whisper-feature-cache") + 1] if "--whisper-feature-cache" in flags else None

    frozen, trained = SimpleNamespace(frozen_whisper=True), SimpleNamespace(frozen_whisper=False)
    rows = {c.name: c for c in configs(False, trimmed=True, frozen=True)}
    flags = {name: row_flags(c, frozen, tmp_path) for name, c in rows.items()}
    assert all("--freeze-whisper-updates" in f for f in flags.values())
    read = {name for name, f in flags.items() if cache_of(f) == str(tmp_path / "whisper_feature_cache")}
    assert read == {FEATURE_CACHE, "ours", "ours + trimmed vocabulary"}
    assert cache_of(flags[PAPER_STYLE]) is None and cache_of(flags["ours, switches off"]) is None
    fill = Path(cache_of(flags[FILLING]))
    assert fill.parent == tmp_path and fill.is_dir() and not any(fill.iterdir())
    assert FEATURE_CACHE not in {c.name for c in configs(False)}
    assert all(c.feature_cache is None and "--freeze-whisper-updates" not in row_flags(c, trained, tmp_path)
               for c in configs(False, trimmed=True))
