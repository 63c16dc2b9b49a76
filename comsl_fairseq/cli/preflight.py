"""Before a multi-day job: check that the inputs fit, time a few real training steps, estimate.

    comsl-preflight [--world-size N] [--steps 3] DATA [the row's fairseq-train flags]
    PREFLIGHT=1 bash examples/covost2/ablations/row7_cml.sh     # the same, with the recipe's exact flags
    comsl-preflight --random-weights --arch whisper_mbart_composite_medium --batch-size 8

With data, in order (each check prints ``[ok]`` or ``[FAIL]`` with what to change):
  DDP backend against freezing, visible devices against the world size, the data config and
  dictionary, every manifest (rows kept / skipped and why), the checkpoints against ``--arch``
  and the dictionary (strict loading), a random sample of clips decoded; then a few real
  training steps through fairseq's Trainer with the row's flags on this machine, and
  estimates: updates per epoch for the world size, hours per epoch and for the run, peak
  memory per device, disk for the checkpoints the run keeps.

``--random-weights`` builds the real shapes of ``--arch`` (published Whisper / mBART-50 sizes,
no checkpoint files), prints parameter counts and the static memory of training (weights,
gradients, Adam state), and with ``--steps`` > 0 times training steps at ``--batch-size``
utterances of ``--seconds`` each and reports the measured peak memory; ``--max-memory-gb``
gives the largest batch that fits each budget. Other fairseq-train flags (e.g.
``--output-layer full``) apply to the random-weights model too.
The estimates leave out validation and gradient communication between processes.
"""
import argparse
import logging

from comsl_fairseq.cli.command import argument_parser, command


def build_parser() -> argparse.ArgumentParser:
    p = argument_parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                        epilog="Other arguments: DATA and the fairseq-train flags of the run to check.")
    p.add_argument("--random-weights", action="store_true", help="the arch's real shapes without checkpoint files")
    p.add_argument("--arch", default=None, help="model architecture (with data: passed on to fairseq)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="utterances per step (random weights: default 8; with data: passed on to fairseq)")
    p.add_argument("--world-size", type=int, default=None,
                   help="processes the run will use (default: visible GPUs, 1 on CPU); sizes updates per epoch")
    p.add_argument("--steps", type=int, default=3, help="timed training steps (0: checks / counts only)")
    p.add_argument("--warmup-steps", type=int, default=1, help="untimed steps first")
    p.add_argument("--sample-clips", type=int, default=16, help="training clips decoded as a check")
    p.add_argument("--seconds", type=float, default=5.5, help="random weights: clip length (CoVoST 2 mean ~5.5 s)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="random weights: default cuda if present")
    p.add_argument("--bf16", action="store_true", help="random weights: bf16 autocast (the recipe's GPU setting)")
    p.add_argument("--max-memory-gb", type=float, nargs="+", default=None, metavar="GB",
                   help="random weights: the largest batch of --seconds clips that fits each budget, from the "
                        "peak memory of forward + backward at --batch-size and twice it (e.g. 24 40 80)")
    return p


@command
def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    args, rest = build_parser().parse_known_args(argv)
    from comsl_fairseq.benchmark.preflight import run

    return run(args, rest)
