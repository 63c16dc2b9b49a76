#!/usr/bin/env python3
"""Follow a fairseq-train JSON log on stdin: progress lines, a copy of the log, validation results.

Follow a fairseq-train JSON log on stdin: copy it to a file, print one progress line per
logged interval (update n/N, losses, speed, elapsed time, ETA) and every validation result.

    fairseq-train ... --log-format json 2>&1 | python examples/toy/train_progress.py --total 1500 --log train.log

fairseq's warnings and errors and any traceback are printed as they are, so a failing run shows
why; library notices (hydra, Python warnings inside torch) stay in the log file only. The exit
status is 0; the pipeline's status (``set -o pipefail``) is fairseq's.
"""
import argparse
import sys
import time

from comsl_fairseq.evaluation.logs import read_log_line

# Terms printed when present, in this order (the rest stays in the log file).
SHOWN = ("loss", "st_loss", "asr_loss", "mt_loss", "ctc_loss", "cml_loss")


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}:{seconds % 60:02d}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--total", type=int, required=True, help="the run's --max-update")
    p.add_argument("--log", required=True, help="file that receives the whole log")
    args = p.parse_args(argv)
    start = time.monotonic()
    in_traceback = False
    with open(args.log, "w", encoding="utf-8") as log:
        for line in sys.stdin:
            log.write(line)
            log.flush()
            rec = read_log_line(line)
            if rec is None:
                # fairseq's own warnings and errors, and any traceback from its first line on;
                # library chatter (hydra notices, Python warnings) stays in the log file
                in_traceback = in_traceback or line.startswith("Traceback")
                if in_traceback or any(f"| {level} |" in line for level in ("WARNING", "ERROR", "CRITICAL")):
                    print(line, end="", flush=True)
                continue
            elapsed = time.monotonic() - start
            values = rec.values
            if rec.tag == "train_inner":
                done = rec.update
                eta = elapsed / done * (args.total - done) if done else 0.0
                terms = " ".join(f"{k} {values[k]:.3f}" for k in SHOWN if k in values)
                print(f"update {done:>5}/{args.total} ({100 * done / args.total:3.0f} %) | {terms} | "
                      f"{values.get('ups', 0):.2f} upd/s | elapsed {_clock(elapsed)} | ETA {_clock(eta)}",
                      flush=True)
            elif rec.tag != "train" and "loss" in values:
                # validation: fairseq logs it under the subset's name
                terms = " ".join(f"{k} {values[k]:.3f}" for k in SHOWN if k in values)
                epoch = int(values["epoch"]) if "epoch" in values else "?"
                print(f"  {rec.tag} after epoch {epoch}: {terms}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
