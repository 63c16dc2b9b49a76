"""Convert a Hugging Face mBART-50 folder into the fairseq layout our model loads.

    comsl-convert-hf-mbart50 --hf-dir mbart-large-50-many-to-many-mmt --out mbart50_fairseq

Input: a local folder in the layout of facebook/mbart-large-50-many-to-many-mmt
(config.json, model.safetensors or pytorch_model.bin, sentencepiece.bpe.model). Output:
model.pt (a fairseq checkpoint of the mbart_large architecture, with its args), dict.txt
and sentence.bpe.model. Nothing is downloaded.

Vocabulary: the Hugging Face tokenizer gives SentencePiece piece i the id i + 1 and puts
the 52 ML50 language codes and <mask> after the pieces; fairseq's dictionary has its 4
specials, then dict.txt, then the same codes and <mask>. Writing dict.txt in SentencePiece
order (pieces 3 .. n-1) therefore makes every embedding row mean the same token in both.
"""
import argparse
import logging
from pathlib import Path

from comsl_fairseq.cli.command import argument_parser, command


def build_parser() -> argparse.ArgumentParser:
    p = argument_parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hf-dir", type=Path, required=True, help="local Hugging Face mBART-50 folder")
    p.add_argument("--out", type=Path, required=True, help="output folder (model.pt, dict.txt, sentence.bpe.model)")
    return p


@command
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from comsl_fairseq.checkpoints.convert_hf_mbart50 import convert

    convert(args.hf_dir, args.out)
    return 0
