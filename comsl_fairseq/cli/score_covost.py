"""Per-language CoVoST 2 scores from fairseq-generate logs: X->En beside the paper's, or En->X.

    comsl-score-covost --gen-dir EVAL --data DATA [--direction x-en|en-x] [--langs fr,de] [--out EVAL/results]

Reads EVAL/generate-test_{lang}_en.txt for each language (En->X: generate-test_en_{lang}.txt;
and, when present, the same names under EVAL/asr/ and EVAL/mt/ from evaluate.sh with
DECODE_ASR=1 / DECODE_MT=1), checks that every utterance of DATA/test_{lang}_en.tsv
(test_en_{lang}.tsv) was decoded, and writes a Markdown and a JSON table: sacreBLEU per
language with its signature and chrF beside it, the average over the languages scored (the
21-language or 15-pair average when all are there), for X->En the high / medium / low resource
group averages and the paper's numbers, ASR WER (CER for zh-CN and ja) after Whisper's
BasicTextNormalizer (lower case, punctuation removed, as the original ComSL scores ASR) and MT
BLEU / chrF on gold transcripts when available. BLEU is tokenized for the target language:
zh for Chinese, ja-mecab for Japanese (char, with a warning, where MeCab is not installed),
13a otherwise.
"""
import argparse
from pathlib import Path

from comsl_fairseq.cli.command import argument_parser, command, output_arg, output_file
from comsl_fairseq.vocab.languages import COVOST_EN_X_LANGS, COVOST_X_EN_LANGS


def build_parser() -> argparse.ArgumentParser:
    p = argument_parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gen-dir", type=Path, required=True,
                   help="folder with generate-test_{lang}_en.txt (en-x: generate-test_en_{lang}.txt)")
    p.add_argument("--data", type=Path, required=True, help="folder with test_{lang}_en.tsv (en-x: test_en_{lang}.tsv)")
    p.add_argument("--direction", choices=("x-en", "en-x"), default="x-en",
                   help="x-en: --langs are sources into English (default); en-x: --langs are English's targets")
    p.add_argument("--langs", help=f"languages to score (default: all 21 for x-en, {','.join(COVOST_X_EN_LANGS)}; "
                                   f"all 15 for en-x, {','.join(COVOST_EN_X_LANGS)})")
    p.add_argument("--out", type=output_arg,
                   help="output prefix for .md and .json (default: GEN_DIR/results; a folder: FOLDER/results)")
    return p


@command
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from comsl_fairseq.evaluation.covost import score_covost

    langs = args.langs or ",".join(COVOST_X_EN_LANGS if args.direction == "x-en" else COVOST_EN_X_LANGS)
    out = output_file(args.out or args.gen_dir / "results", "results")  # a folder: FOLDER/results.{md,json}
    out.parent.mkdir(parents=True, exist_ok=True)
    table = score_covost(args.gen_dir, args.data, [x for x in langs.split(",") if x], out, direction=args.direction)
    print(table)
    return 0
