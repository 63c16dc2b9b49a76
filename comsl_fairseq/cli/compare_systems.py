"""Is system B better than system A, or is the difference noise?

Is system B better than system A, or is the difference noise? Paired bootstrap resampling
(sacreBLEU's implementation, 1,000 resamples, seed 12345) per language and overall.

    comsl-compare-systems A B [--data DATA] [--out OUT.json]

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
from pathlib import Path

from comsl_fairseq.cli.command import argument_parser, command, output_arg, output_file
from comsl_fairseq.evaluation.scoring import BOOTSTRAP_SAMPLES


def build_parser() -> argparse.ArgumentParser:
    p = argument_parser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="baseline: generate-SUBSET.txt or a folder of them")
    p.add_argument("b", type=Path, help="system compared with the baseline, decoded on the same test sets")
    p.add_argument("--data", type=Path, help="data folder with SUBSET.tsv manifests (language per utterance)")
    p.add_argument("--samples", type=int, default=BOOTSTRAP_SAMPLES, help="bootstrap resamples (default 1000)")
    p.add_argument("--out", type=output_arg, help="also write the results as JSON here (a folder: FOLDER/compare.json)")
    return p


@command
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.samples < 1:
        raise ValueError(f"--samples is the number of bootstrap resamples and must be at least 1, got {args.samples}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    from comsl_fairseq.evaluation.compare import compare, table
    from comsl_fairseq.evaluation.decoded_system import align, read_system

    groups = align(read_system(args.a, args.data), read_system(args.b, args.data), str(args.a), str(args.b))
    rows = compare(groups, args.samples)
    if args.out:
        result = {"a": str(args.a), "b": str(args.b), "rows": rows}
        output_file(args.out, "compare.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(table(rows, str(args.a), str(args.b)))
    return 0
