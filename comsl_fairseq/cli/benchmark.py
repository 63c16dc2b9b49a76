"""Training and decoding throughput of ComSL: our pass structure vs the original's.

    comsl-benchmark --arch tiny                       # CPU
    comsl-benchmark --arch medium --device cuda --bf16 --batch-size 32

One run, one model shape (random weights, the arch's real shapes), the same synthetic
utterances for every configuration:

- ours:        batches of similar length (length-bucketed), padded to the longest clip and
               masked; the full objective's 3 encoder and 6 decoder passes; the recipe's
               optimizer (adam_grouped) and the default speed/memory switches;
- ours, switches off / + one switch only: the same with the switches (the criterion's lean and
               fused output layers, adam_grouped's foreach update, the model's one embedding
               gradient per step and oneDNN CPU products) all off, and each alone: a row per switch;
- ours + trimmed vocabulary: ours with the data config's trim_vocab (--trim-pieces pieces kept);
- paper-style: every clip cut or padded to 11 s, no bucketing, the original's unused
               seventh decoder pass (translation from the text part of the concatenation),
               the full output layer, a dense embedding gradient per use, and torch's AdamW.

With --frozen-whisper every row trains with Whisper frozen, as the recipes' first epochs do:
paper-style runs frozen Whisper's forward at every step, as the original does, and ours reads
the Whisper feature cache (one more switch row, and a row for the epoch that fills the cache).

On CPU each configuration trains in its own process, so that its peak RSS is its own.

Clip lengths follow a CoVoST 2-like distribution (log-normal, mean about 5 s, 1-15 s).
Prints a table (utterances/s, audio-seconds/s, peak memory, and MFU on a GPU), the same
ratios for the trimmed row (``trimmed_*_vs_fixed11``) and, last, ``memory_vs_fixed11`` and
``speedup_vs_fixed11: X`` (ours over paper-style) for training at equal batch size.
``--smoke`` runs in seconds.
"""
import argparse

from comsl_fairseq.cli.command import argument_parser, command
from comsl_fairseq.models.whisper_mbart_composite import ARCH_DIMS


def build_parser() -> argparse.ArgumentParser:
    p = argument_parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sizes = [name.rsplit("_", 1)[-1] for name in ARCH_DIMS]  # tiny, medium, large
    p.add_argument("--arch", choices=sizes, default="tiny", help="model shapes (whisper_mbart_composite_ARCH)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run")
    p.add_argument("--batch-size", type=int, default=8, help="utterances per training step, both configs")
    p.add_argument("--steps", type=int, default=8, help="timed training steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--decode-batches", type=int, default=2, help="batches decoded with beam 5")
    p.add_argument("--decode-len", type=int, default=20, help="hypothesis length in tokens (same for both)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (cuda)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="device peak (bf16) for MFU, e.g. 790 on H200")
    p.add_argument("--stack-decoder-passes", action="store_true",
                   help="ours with the decoder passes stacked into one call per decoder input")
    p.add_argument("--skip-optimizer", action="store_true",
                   help="time forward + backward only: the optimizer's state (8 B per parameter, the same in "
                        "every configuration) stays out of the peak, for machines too small to hold it")
    p.add_argument("--configs", nargs="+", default=None, metavar="NAME",
                   help="run only these rows (names as printed; 'ours' always runs), e.g. "
                        "'paper-style (11 s, 7 passes)' 'ours, switches off'")
    p.add_argument("--trim-pieces", type=int, default=None,
                   help="pieces kept in the 'ours + trimmed vocabulary' row (plus specials and the 54 tags); "
                        "default 2000 for tiny (of 8,000 rows), 40000 for medium/large (of 250,054: an estimate "
                        "for CoVoST 2 X->En; comsl-trim-vocab prints a corpus's own count); 0: no such row")
    p.add_argument("--frozen-whisper", action="store_true",
                   help="time the recipes' frozen-Whisper epochs (rows 5-8 freeze it for 5 of 15): Whisper\n"
                        "frozen in every row; paper-style runs its forward at every step, ours reads the\n"
                        "Whisper feature cache, filled before the timed steps, with a row for the epoch that\n"
                        "fills it; training only (decoding does not change), ratios named frozen_*")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile-ops", type=int, default=0, metavar="N",
                   help="also print each configuration's N operators with the most self time over the timed\n"
                        "steps (torch.profiler; its overhead is in that run's step times)")
    p.add_argument("--smoke", action="store_true", help="seconds-long run (tests): 1 step, short clips")
    return p


@command
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.trim_pieces is None:
        args.trim_pieces = 2000 if args.arch == "tiny" else 40_000
    if args.trim_pieces < 0:
        raise ValueError(f"--trim-pieces must be >= 0, got {args.trim_pieces}")
    from comsl_fairseq.benchmark.synthetic import run

    return run(args)
