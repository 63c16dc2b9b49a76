"""Fill a training run's Whisper feature cache ahead of its frozen epochs.

    comsl-cache-features DATA [the run's fairseq-train flags, with --whisper-feature-cache DIR]
    CACHE_FEATURES=1 bash examples/covost2/ablations/row7_cml.sh     # the recipe's exact flags
    comsl-cache-features --num-shards 8 --shard-id $RANK DATA ...   # 8 processes (or GPUs), one share each

Each training clip's Whisper output is stored under the key training looks up (the clip, the
Whisper weights, the input-length settings); clips already cached are skipped. Only the speech
path is built: the run's mBART checkpoint is not read and need not exist yet.
"""
import argparse
import logging

from comsl_fairseq.cli.command import argument_parser, command


def build_parser() -> argparse.ArgumentParser:
    p = argument_parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                                epilog="Other arguments: DATA and the fairseq-train flags of the run.")
    p.add_argument("--num-shards", type=int, default=1, help="processes sharing the work (every N-th clip each)")
    p.add_argument("--shard-id", type=int, default=0, help="this process' share, 0 .. N-1")
    p.add_argument("--fill-batch-size", type=int, default=16, help="clips per Whisper forward")
    return p


@command
def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        force=True)
    args, rest = build_parser().parse_known_args(argv)
    if not rest:
        raise ValueError("give DATA and the run's fairseq-train flags (see --help)")
    from comsl_fairseq.benchmark.feature_cache_fill import fill

    counts = fill(rest, num_shards=args.num_shards, shard_id=args.shard_id, batch_size=args.fill_batch_size)
    print(f"Whisper feature cache {counts['folder']}: {counts['written']} entries computed and written "
          f"({counts['stale']} of them replacing stale ones), {counts['present']} already there, {counts['seconds']} s"
          + (" -- stopped before the end (SIGTERM)" if counts["stopped"] else ""))
    return 143 if counts["stopped"] else 0
