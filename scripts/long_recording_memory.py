"""Peak memory and wall time of ``comsl-translate`` on a long recording it builds itself.

A developer tool for the long-recording memory figures in the README: it writes a WAV of
``--hours`` of espeak-ng speech (numbers spoken with pauses of 0.3-2 s, every ten minutes a
70 s run without any pause and 20 s of near-silence), at ``--sample-rate`` with ``--channels``
channels, block by block (the file is never held whole), then runs
``comsl-translate --format srt`` on it in a child process with one thread and prints the
child's peak resident memory (getrusage), its wall time and the number of cues:

    python scripts/long_recording_memory.py --path MODEL --work DIR [--hours 2] [--sample-rate 48000]

Everything it writes stays in ``--work`` (the WAV, OUT/ with the subtitles, the child's log).
"""
import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


def spoken(text: str, voice: str, rate: int) -> np.ndarray:
    """espeak-ng speech of ``text`` as float32 mono at ``rate`` Hz."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(["espeak-ng", "-v", voice, "-w", tmp.name, text], check=True, capture_output=True)
        wav, sr = sf.read(tmp.name, dtype="float32")
    return soxr.resample(wav, sr, rate).astype(np.float32) if sr != rate else wav


def write_recording(path: Path, hours: float, rate: int, channels: int, voice: str, seed: int) -> float:
    """Write the recording to ``path``; returns its duration in seconds."""
    rng = np.random.default_rng(seed)
    pool = [spoken(str(n), voice, rate) for n in rng.integers(0, 1_000_000, 60)]
    total = int(hours * 3600 * rate)
    written = 0
    gain = np.array([1.0, 0.8, 0.9, 0.7][:channels], np.float32)

    def put(f, mono):
        nonlocal written
        mono = mono[: total - written]
        noisy = mono + (3e-4 * rng.standard_normal(mono.size)).astype(np.float32)
        f.write(np.outer(noisy, gain) if channels > 1 else noisy)
        written += mono.size

    with sf.SoundFile(path, "w", samplerate=rate, channels=channels, subtype="PCM_16", format="WAV") as f:
        next_run = 0
        while written < total:
            if written >= next_run:  # 70 s without a pause, then 20 s of near-silence
                run = []
                while sum(p.size for p in run) < 70 * rate:
                    run.append(pool[rng.integers(len(pool))])
                put(f, np.concatenate(run)[: 70 * rate])
                put(f, np.zeros(20 * rate, np.float32))
                next_run = written + 600 * rate
                continue
            put(f, np.zeros(int(rng.uniform(0.3, 2.0) * rate), np.float32))
            put(f, pool[rng.integers(len(pool))])
    return written / rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", required=True, help="model folder or training checkpoint (comsl-translate --path)")
    p.add_argument("--work", type=Path, required=True, help="folder for the recording, the subtitles and the log")
    p.add_argument("--hours", type=float, default=2.0)
    p.add_argument("--sample-rate", type=int, default=48000)
    p.add_argument("--channels", type=int, default=2, choices=(1, 2, 3, 4))
    p.add_argument("--voice", default="fr", help="espeak-ng voice, also the --src-lang given to the model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-len-b", type=int, default=20)
    args = p.parse_args()
    if shutil.which("espeak-ng") is None:
        sys.exit("error: espeak-ng is needed to build the recording (make install installs it)")
    args.work.mkdir(parents=True, exist_ok=True)
    wav = args.work / f"long_{args.hours:g}h_{args.sample_rate}_{args.channels}ch.wav"
    if not wav.exists():
        t0 = time.perf_counter()
        seconds = write_recording(wav.with_suffix(".part"), args.hours, args.sample_rate, args.channels,
                                  args.voice, args.seed)
        wav.with_suffix(".part").rename(wav)
        print(f"wrote {wav.name}: {seconds / 3600:.2f} h, {wav.stat().st_size / 1e9:.2f} GB "
              f"in {time.perf_counter() - t0:.0f} s")
    out = args.work / "OUT"
    shutil.rmtree(out, ignore_errors=True)
    translate = Path(sys.executable).parent / "comsl-translate"
    cmd = [str(translate), "--path", args.path, str(wav), "--src-lang", args.voice, "--format", "srt",
           "--out", str(out), "--no-progress", "--max-len-b", str(args.max_len_b), "--cpu"]
    log = args.work / "translate.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        status = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    wall = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kB on Linux: the largest child
    if status != 0:
        sys.exit(f"error: comsl-translate exited {status}; see {log}")
    srt = out / f"{wav.stem}.srt"
    cues = sum(1 for line in srt.read_text().splitlines() if "-->" in line)
    print(f"comsl-translate on {wav.name}: peak RSS {peak_kb:,} kB, wall {wall // 60:.0f} min {wall % 60:.0f} s, "
          f"{cues} cues ({srt}); its summary: {log.read_text().strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
