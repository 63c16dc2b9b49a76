#!/usr/bin/env python3
"""Score a fairseq-generate log on the toy corpus: sacreBLEU, exact match, examples.

    python examples/toy/score_toy.py --generate-log gen.txt --manifest data/toy/test.tsv

Every utterance of the manifest must have a hypothesis (fairseq can drop a last partial
batch); a missing one is an error, not a silently smaller test set.
"""
import argparse
import json
import sys

from comsl_fairseq.data.manifest import read_table
from comsl_fairseq.evaluation.logs import read_generate_log
from comsl_fairseq.evaluation.scoring import bleu_metric


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--generate-log", required=True, help="stdout of fairseq-generate")
    p.add_argument("--manifest", required=True, help="the manifest that was decoded")
    p.add_argument("--examples", type=int, default=5, help="examples to print")
    p.add_argument("--name", help="name of the test set: the last line is then 'NAME: BLEU = X, exact_match = Y%%'")
    p.add_argument("--json", help="also write the scores to this JSON file")
    args = p.parse_args(argv)

    _, rows = read_table(args.manifest)
    hyps, refs = read_generate_log(args.generate_log)
    missing = [i for i in range(len(rows)) if i not in hyps]
    if missing:
        print(f"error: {len(missing)} of {len(rows)} utterances have no hypothesis (first: {rows[missing[0]]['id']})",
              file=sys.stderr)
        return 1
    order = range(len(rows))
    hyp_list = [hyps[i] for i in order]
    ref_list = [rows[i]["tgt_text"] for i in order]
    mismatched = [i for i in order if refs.get(i, ref_list[i]) != ref_list[i]]
    if mismatched:
        print(f"error: generate log references differ from {args.manifest} (first at id {mismatched[0]})",
              file=sys.stderr)
        return 1
    exact = sum(h == r for h, r in zip(hyp_list, ref_list, strict=True))
    for i in list(order)[:: max(1, len(rows) // max(1, args.examples))][: args.examples]:
        row = rows[i]
        mark = "ok " if hyp_list[i] == ref_list[i] else "   "
        print(f"{mark}{row['id']:<14} {row['src_lang']}: {row['src_text']:<38} "
              f"ref: {ref_list[i]:<36} hyp: {hyp_list[i]}")
    metric = bleu_metric()
    bleu = metric.corpus_score(hyp_list, [ref_list])
    print(f"utterances: {len(rows)}")
    print(f"exact_match: {100.0 * exact / len(rows):.1f}%")
    print(f"sacreBLEU: {bleu} (signature {metric.get_signature()})")
    print(f"BLEU = {bleu.score:.2f}")
    if args.json:
        scores = {"name": args.name, "utterances": len(rows), "bleu": round(bleu.score, 2),
                  "exact_match": round(100.0 * exact / len(rows), 1), "signature": str(metric.get_signature())}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(scores, f, indent=1)
    if args.name:
        print(f"{args.name}: BLEU = {bleu.score:.2f}, exact_match = {100.0 * exact / len(rows):.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
