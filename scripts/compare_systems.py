#!/usr/bin/env python3
"""Is system B better than system A, or is the difference noise? Paired bootstrap resampling
(sacreBLEU's implementation, 1,000 resamples, seed 12345) per language and overall.

    python scripts/compare_systems.py A B [--data DATA] [--json OUT.json]

A and B are fairseq-generate outputs of two models on the same test sets: each a
``generate-SUBSET.txt`` file or a folder of them (``examples/covost2/evaluate.sh`` writes
``EVAL/generate-test_{lang}_en.txt``). With ``--data`` the language of each utterance is read
from the subset's manifest, else from the subset name. Prints, per language, BLEU of A and B,
Delta BLEU = B - A with its 95 % bootstrap interval and sacreBLEU's p-value, and the same for
chrF; then all utterances pooled, and (with several languages) the mean of per-language BLEU
(the paper's headline figure), resampled within each language.
"""
import argparse
import json
import logging
import sys
from pathlib import Path

from comsl_fairseq.evaluation.decoded_system import align, read_system
from comsl_fairseq.evaluation.scoring import BOOTSTRAP_SAMPLES, paired_bootstrap, stratified_bootstrap_mean


def compare(groups: dict, samples: int) -> dict:
    """{row name: {"bleu": PairedResult dict, "chrf": ...}} for each language, pooled and mean."""
    rows = {}
    for lang, (a, b, refs) in groups.items():
        rows[lang] = {m: paired_bootstrap(a, b, refs, m, samples).as_dict() for m in ("bleu", "chrf")}
    if len(groups) > 1:
        pooled = [sum((list(g[i]) for g in groups.values()), []) for i in range(3)]
        rows["all (pooled)"] = {m: paired_bootstrap(*pooled, m, samples).as_dict() for m in ("bleu", "chrf")}
        rows["mean of languages"] = {m: stratified_bootstrap_mean(groups, m, samples).as_dict()
                                     for m in ("bleu", "chrf")}
    return rows


def table(rows: dict, name_a: str, name_b: str) -> str:
    lines = [f"A = {name_a}", f"B = {name_b}", "",
             "| set | n | BLEU A | BLEU B | Δ BLEU [95 % CI] | p | chrF A | chrF B | Δ chrF [95 % CI] | p |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        cells = []
        for m in ("bleu", "chrf"):
            x = r[m]
            cells += [f"{x['a']:.2f}", f"{x['b']:.2f}",
                      f"{x['delta']:+.2f} [{x['delta_low']:+.2f}, {x['delta_high']:+.2f}]", f"{x['p_value']:.4f}"]
        lines.append(f"| {name} | {r['bleu']['n']} | " + " | ".join(cells) + " |")
    first = next(iter(rows.values()))
    lines += ["", f"BLEU: `{first['bleu']['signature']}`", f"chrF: `{first['chrf']['signature']}`",
              "p: sacreBLEU's paired bootstrap p-value (chance of a difference this large if A and B were equal)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="baseline: generate-SUBSET.txt or a folder of them")
    p.add_argument("b", type=Path, help="system compared with the baseline, decoded on the same test sets")
    p.add_argument("--data", type=Path, help="data folder with SUBSET.tsv manifests (language per utterance)")
    p.add_argument("--samples", type=int, default=BOOTSTRAP_SAMPLES, help="bootstrap resamples (default 1000)")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    try:
        groups = align(read_system(args.a, args.data), read_system(args.b, args.data), str(args.a), str(args.b))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = compare(groups, args.samples)
    if args.json:
        args.json.write_text(json.dumps({"a": str(args.a), "b": str(args.b), "rows": rows}, indent=1),
                             encoding="utf-8")
    print(table(rows, str(args.a), str(args.b)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
