"""Average the weights of the last N checkpoints of a run (or of given checkpoint files).

    comsl-average-checkpoints --save-dir SAVE_DIR --last 5 --out SAVE_DIR/checkpoint_avg5.pt
    comsl-average-checkpoints --save-dir SAVE_DIR --last 5 --updates --out avg.pt
    comsl-average-checkpoints --inputs a.pt b.pt --out avg.pt

Epoch checkpoints (``checkpointE.pt``) must be kept by training with ``--keep-last-epochs N``;
update checkpoints (``checkpoint_E_U.pt``, ``--updates``) with ``--save-interval-updates`` and
``--keep-interval-updates N``. The result decodes with fairseq-generate like any checkpoint.
"""
import logging
from pathlib import Path

from comsl_fairseq.checkpoints.averaging import average_checkpoints, last_checkpoints
from comsl_fairseq.cli.command import argument_parser, command, output_arg, output_file


@command
def main(argv=None) -> int:
    p = argument_parser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--save-dir", type=Path, help="training folder holding the checkpoints")
    src.add_argument("--inputs", type=Path, nargs="+", help="checkpoint files to average")
    p.add_argument("--last", type=int, default=5, help="with --save-dir: how many of the newest checkpoints")
    p.add_argument("--updates", action="store_true", help="average update checkpoints instead of epoch ones")
    p.add_argument("--allow-fewer", action="store_true",
                   help="average the ones that exist when fewer than --last are there (logged) instead of failing")
    p.add_argument("--out", type=output_arg, required=True,
                   help="averaged checkpoint to write (in a folder: FOLDER/checkpoint_avg.pt)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    paths = args.inputs or last_checkpoints(args.save_dir, args.last, "update" if args.updates else "epoch",
                                            args.allow_fewer)
    out = average_checkpoints(paths, output_file(args.out, "checkpoint_avg.pt"))
    print(out)
    return 0
