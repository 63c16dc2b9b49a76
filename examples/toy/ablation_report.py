#!/usr/bin/env python3
"""The toy ablation table: per row and test set, BLEU with its 95 % bootstrap interval, exact
match, and a paired bootstrap (sacreBLEU's, 1,000 resamples) of each row against the previous
row and against row 1; a markdown table, a JSON file and a PNG chart with the intervals.

    python examples/toy/ablation_report.py --exp exp/ablation --data data/toy \
        --rows row1_st_only,row2_mt,... --sets test_a,unseen_voices_a,noise_10db_a --out exp/ablation

Each row folder EXP/ROW holds fairseq-generate outputs generate-SET.txt and optionally
time.txt (training and decoding seconds).
"""
import argparse
import json
import logging
import sys
from pathlib import Path

from comsl_fairseq.evaluation.decoded_system import read_log
from comsl_fairseq.evaluation.scoring import bootstrap_interval, paired_bootstrap

# The paper's figures (ComSL Medium, CoVoST 2 average BLEU) for the rows that have one.
PAPER = {"row1_st_only": 26.48, "row2_mt": 26.31, "row8_pseudo": 30.77}
LABELS = {"row1_st_only": "1 ST only", "row2_mt": "2 + MT", "row3_ddm": "3 + DDM", "row4_asr": "4 + ASR",
          "row5_freeze": "5 + freeze Whisper", "row6_mt_reg": "6 + MT regularisation", "row7_cml": "7 + CML",
          "row8_pseudo": "8 + pseudo ST"}


def system(folder: Path, sets: list, data: Path) -> dict:
    out = {}
    for s in sets:
        _, _, hyps, refs, _ = read_log(folder / f"generate-{s}.txt", data)
        out[s] = (hyps, refs)
    return out


def report(rows: list, sets: list, exp: Path, data: Path) -> dict:
    systems = {r: system(exp / r, sets, data) for r in rows}
    result = {"rows": {}}
    for i, r in enumerate(rows):
        entry = {}
        for s in sets:
            hyps, refs = systems[r][s]
            bleu, low, high = bootstrap_interval(hyps, refs)
            cell = {"bleu": round(bleu, 2), "low": round(low, 2), "high": round(high, 2), "n": len(refs),
                    "exact_match": round(100 * sum(h == t for h, t in zip(hyps, refs, strict=True)) / len(refs), 1)}
            previous, first = (rows[i - 1] if i > 0 else None), (rows[0] if i > 1 else None)
            for name, other in (("vs_previous", previous), ("vs_row1", first)):
                if other is not None:
                    a = systems[other][s][0]
                    cell[name] = paired_bootstrap(a, hyps, refs, "bleu").as_dict()
            entry[s] = cell
        times = exp / r / "time.txt"
        entry["time"] = times.read_text(encoding="utf-8").strip() if times.is_file() else ""
        result["rows"][r] = entry
    return result


def delta(cell: dict, key: str) -> str:
    d = cell.get(key)
    if d is None:
        return "—"
    mark = "*" if d["p_value"] < 0.05 else ""
    return f"{d['delta']:+.2f}{mark} [{d['delta_low']:+.2f}, {d['delta_high']:+.2f}]"


def markdown(result: dict, sets: list) -> str:
    head = "| row | paper | " + " | ".join(f"{s}: BLEU [95 % CI] | EM % | Δ prev | Δ row 1" for s in sets) + " | time |"
    lines = [head, "|" + "---|" * (3 + 4 * len(sets))]
    for r, entry in result["rows"].items():
        cells = [LABELS.get(r, r), f"{PAPER[r]:.2f}" if r in PAPER else "—"]
        for s in sets:
            c = entry[s]
            cells += [f"{c['bleu']:.2f} [{c['low']:.2f}, {c['high']:.2f}]", f"{c['exact_match']:.1f}",
                      delta(c, "vs_previous"), delta(c, "vs_row1")]
        cells.append(entry["time"])
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Δ: paired bootstrap (sacreBLEU, 1,000 resamples, seed 12345) of the row against the previous "
              "row / row 1, with its 95 % interval; * = p < 0.05. Paper: ComSL Medium, CoVoST 2 mean BLEU."]
    return "\n".join(lines) + "\n"


def chart(result: dict, sets: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(result["rows"])
    fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 3, 4.2))
    width = 0.8 / len(sets)
    for j, s in enumerate(sets):
        xs = [i + (j - (len(sets) - 1) / 2) * width for i in range(len(rows))]
        cells = [result["rows"][r][s] for r in rows]
        ys = [c["bleu"] for c in cells]
        err = [[c["bleu"] - c["low"] for c in cells], [c["high"] - c["bleu"] for c in cells]]
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=s)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([LABELS.get(r, r) for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("BLEU (95 % bootstrap interval)")
    low = min(result["rows"][r][s]["low"] for r in rows for s in sets)
    ax.set_ylim(max(0, low - 10), 100)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(sets), frameon=False)  # above
    ax.set_title("ComSL ablation rows on the toy corpus (Whisper base, MT-stage mBART)", pad=24)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exp", type=Path, required=True, help="folder of the row folders")
    p.add_argument("--data", type=Path, required=True, help="corpus folder (SET.tsv manifests)")
    p.add_argument("--rows", required=True, help="comma-separated row folder names, in table order")
    p.add_argument("--sets", required=True, help="comma-separated test sets")
    p.add_argument("--out", type=Path, required=True, help="output folder: ablation.md/.json/.png")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, force=True)  # no sacreBLEU / matplotlib chatter
    rows, sets = args.rows.split(","), args.sets.split(",")
    result = report(rows, sets, args.exp, args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    table = markdown(result, sets)
    (args.out / "ablation.md").write_text(table, encoding="utf-8")
    chart(result, sets, args.out / "ablation.png")
    print(table)
    print(f"written: {args.out / 'ablation.md'}, {args.out / 'ablation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
