"""Per-language CoVoST 2 X->En scores from fairseq-generate logs, beside the paper's.

    comsl-score-covost --gen-dir EVAL --data DATA [--langs fr,de] [--out EVAL/results]

Reads EVAL/generate-test_{lang}_en.txt for each language (and, when present,
EVAL/asr/generate-test_{lang}_en.txt and EVAL/mt/generate-test_{lang}_en.txt from
evaluate.sh with DECODE_ASR=1 / DECODE_MT=1), checks that every utterance of
DATA/test_{lang}_en.tsv was decoded, and writes a Markdown and a JSON table: sacreBLEU per
language with its signature and chrF beside it, the average over the languages scored (the
21-language average when all are there), the high / medium / low resource group averages, ASR
WER (CER for zh-CN and ja) after Whisper's BasicTextNormalizer (lower case, punctuation
removed, as the original ComSL scores ASR) and MT BLEU / chrF on gold transcripts when
available, and the paper's numbers beside ours.
"""
import argparse
from pathlib import Path

from comsl_fairseq.cli.command import argument_parser, command
from comsl_fairseq.vocab.languages import COVOST_X_EN_LANGS


def build_parser() -> argparse.ArgumentParser:
    p = argument_parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gen-dir", type=Path, required=True, help="folder with generate-test_{lang}_en.txt")
    p.add_argument("--data", type=Path, required=True, help="folder with test_{lang}_en.tsv")
    p.add_argument("--langs", default=",".join(COVOST_X_EN_LANGS), help="languages to score (default: all 21)")
    p.add_argument("--out", type=Path, help="output prefix for .md and .json (default: GEN_DIR/results)")
    return p


@command
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from comsl_fairseq.evaluation.covost import score_covost

    table = score_covost(args.gen_dir, args.data, [x for x in args.langs.split(",") if x],
                         args.out or args.gen_dir / "results")
    print(table)
    return 0
