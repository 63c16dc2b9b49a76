#!/usr/bin/env python3
"""Follow a fairseq-train JSON log on stdin: copy it to a file, print one progress line per
logged interval (update n/N, losses, speed, elapsed time, ETA) and every validation result.

    fairseq-train ... --log-format json 2>&1 | python examples/toy/train_progress.py --total 1500 --log train.log

fairseq's warnings and errors and any traceback are printed as they are, so a failing run shows
why; library notices (hydra, Python warnings inside torch) stay in the log file only. The exit
status is 0; the pipeline's status (``set -o pipefail``) is fairseq's.
"""
import argparse
import json
import sys
import time
from pathlib import Path

# Terms printed when present, in this order (the rest stays in the log file).
SHOWN = ("loss", "st_loss", "asr_loss", "mt_loss", "ctc_loss", "cml_loss")
# Log lines printed as they are (besides warnings and errors).
NOTES = ("training schedule (measured)", "feature cache", "done training in")


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _record(line: str):
    """The JSON object of a fairseq log line (``... | train_inner | {...}``), or None."""
    start = line.find("{")
    if start < 0 or not line.rstrip().endswith("}"):
        return None
    try:
        return json.loads(line[start:])
    except json.JSONDecodeError:
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--total", type=int, required=True, help="the run's --max-update (0: not known in advance)")
    p.add_argument("--log", required=True, help="file that receives the whole log")
    args = p.parse_args(argv)
    start = time.monotonic()
    in_traceback = False
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    with open(args.log, "w", encoding="utf-8") as log:
        for line in sys.stdin:
            log.write(line)
            log.flush()
            rec = _record(line)
            if rec is None:
                # fairseq's own warnings and errors, and any traceback from its first line on;
                # library chatter (hydra notices, Python warnings) stays in the log file
                in_traceback = in_traceback or line.startswith("Traceback")
                shown = any(f"| {level} |" in line for level in ("WARNING", "ERROR", "CRITICAL"))
                shown = shown or any(note in line for note in NOTES)
                if in_traceback or shown:
                    print(line, end="", flush=True)
                continue
            elapsed = time.monotonic() - start
            if "| train_inner |" in line and "num_updates" in rec:
                done = int(rec["num_updates"])
                terms = " ".join(f"{k} {float(rec[k]):.3f}" for k in SHOWN if k in rec)
                if args.total > 0:
                    eta = elapsed / done * (args.total - done) if done else 0.0
                    where = f"{done:>5}/{args.total} ({100 * done / args.total:3.0f} %)"
                    when = f"elapsed {_clock(elapsed)} | ETA {_clock(eta)}"
                else:
                    where, when = f"{done:>5}", f"elapsed {_clock(elapsed)}"
                print(f"update {where} | {terms} | {float(rec.get('ups', 0)):.2f} upd/s | {when}", flush=True)
            else:
                # validation: fairseq logs it under the subset's name, keys prefixed with it
                subset = line[:line.find("{")].rstrip(" |").rsplit("| ", 1)[-1].strip()
                if subset not in ("train", "train_inner") and f"{subset}_loss" in rec:
                    terms = " ".join(f"{k} {float(rec[f'{subset}_{k}']):.3f}" for k in SHOWN
                                     if f"{subset}_{k}" in rec)
                    print(f"  {subset} after epoch {rec.get('epoch', '?')}: {terms}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
