"""Modality-gap report of one model: ST vs MT vs cascade BLEU per language, and an HTML page.

Modality-gap report of one model: per language, BLEU of speech translation (ST), of MT on the
gold transcripts, and of the cascade ASR -> MT through the same model, with the gaps MT - ST and
cascade - ST and their 95 % paired-bootstrap intervals; plus an HTML page of every utterance
(audio player, transcript, ASR / MT / cascade / ST outputs, sentence scores, sortable by gap).

    comsl-modality-gap --path CKPT --data DATA --subsets test_fr_en,test_de_en --out DIR \
        [--beam 5] [--batch-size 16] [--generate-args="--cpu --max-len-b 200"]

Decodes with fairseq-generate (``--decode-task st``, ``asr``, ``mt``), writes the ASR hypotheses
as the transcripts of a copy of each manifest (DIR/cascade_data/) and decodes that with
``--decode-task mt``. Writes DIR/modality_gap.{md,json,html}. Decoding already done in DIR is
reused (``--force`` decodes again). An utterance whose ASR output is empty gets an empty cascade
translation (counted and logged: the manifest reader refuses empty transcripts).

Also draws DIR/similarity.png, linked from the page: for one utterance (--similarity-utterance
SUBSET:INDEX, default the first of the first subset) the cosine similarity of every speech-only
encoder state with every transcript text-encoder state, for this model and, side by side, for
each --similarity-with checkpoint (e.g. the ST-only row 1 against the full model).
"""
import argparse
import logging
from pathlib import Path

from comsl_fairseq.cli.command import argument_parser, command


def build_parser() -> argparse.ArgumentParser:
    p = argument_parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--path", type=Path, required=True, help="trained comsl_fairseq checkpoint")
    p.add_argument("--data", type=Path, required=True, help="folder with SUBSET.tsv manifests and config.yaml")
    p.add_argument("--subsets", required=True, help="comma-separated test subsets, e.g. test_fr_en,test_de_en")
    p.add_argument("--out", type=Path, required=True, help="output folder (decodes, report, HTML page)")
    p.add_argument("--config-yaml", default="config.yaml", help="data config name inside --data")
    p.add_argument("--beam", type=int, default=5, help="beam size of every decode")
    p.add_argument("--batch-size", type=int, default=16, help="sentences per decoding batch")
    p.add_argument("--generate-args", default="",
                   help="more fairseq-generate flags, written with = (--generate-args='--cpu')")
    p.add_argument("--samples", type=int, default=1000, help="bootstrap resamples for the gap intervals")
    p.add_argument("--force", action="store_true", help="decode again even where DIR holds decodes")
    p.add_argument("--similarity-utterance", default=None,
                   help="SUBSET:INDEX of the utterance of the similarity figure (default: first of the first subset)")
    p.add_argument("--similarity-with", action="append", default=[], metavar="LABEL=CKPT",
                   help="another model drawn beside this one in the similarity figure (repeatable), e.g. "
                        "'row 1 (ST only)=exp/ablation/row1_st_only/checkpoint_last.pt'")
    p.add_argument("--label", default=None, help="this model's name in the similarity figure (default: --path)")
    return p


@command
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("sacrebleu").setLevel(logging.WARNING)
    from comsl_fairseq.inference.modality_gap import run

    print(run(args))
    print(f"page: {args.out / 'modality_gap.html'}")
    return 0
