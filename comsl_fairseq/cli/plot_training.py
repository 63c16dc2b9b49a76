"""Training curves from fairseq-train logs, several runs overlaid, without a server.

Training curves without a server: per-term losses (training every --log-interval updates,
validation per epoch), validation BLEU, learning rate and gradient norm, several runs overlaid.

    comsl-plot-training LOG_OR_DIR... --out curves.png [--labels row6,row7] [--acc]

Each LOG_OR_DIR is a fairseq-train log written with ``--log-format json`` or ``simple`` (e.g.
``fairseq-train ... 2>&1 | tee SAVE_DIR/train.log``), a save dir holding ``train.log``, or a
``--tensorboard-logdir`` folder. Prints the path of the figure.
"""
import argparse
import logging
import sys
from pathlib import Path

from comsl_fairseq.cli.command import argument_parser, command, output_arg, output_file


def build_parser() -> argparse.ArgumentParser:
    p = argument_parser(description=__doc__.split("\n\n")[0])
    p.add_argument("logs", type=Path, nargs="+", help="fairseq-train logs, save dirs or TensorBoard folders")
    p.add_argument("--out", type=output_arg, required=True,
                   help="figure to write (.png, .pdf, .svg; no suffix: .png; a folder: FOLDER/training.png)")
    p.add_argument("--labels", help="comma-separated run names (default: each log's folder name)")
    p.add_argument("--acc", action="store_true", help="also draw each term's token accuracy")
    return p


@command
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from comsl_fairseq.evaluation.logs import read_run
    from comsl_fairseq.evaluation.plot import label_of, plot

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    labels = args.labels.split(",") if args.labels else [label_of(x) for x in args.logs]
    if len(labels) != len(args.logs):
        print(f"error: {len(labels)} labels for {len(args.logs)} logs", file=sys.stderr)
        return 2
    runs = {}
    for label, log in zip(labels, args.logs, strict=True):
        records = read_run(log)
        if not records:
            print(f"error: {log}: no training records (fairseq-train log with --log-format json or simple?)",
                  file=sys.stderr)
            return 2
        while label in runs:
            label += "'"
        runs[label] = records
    out = output_file(args.out, "training.png")
    if not out.suffix:  # matplotlib would add .png itself, and the printed name would be wrong
        out = out.with_name(out.name + ".png")
    out = plot(runs, out, args.acc)
    print(out)
    return 0

