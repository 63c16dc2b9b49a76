#!/usr/bin/env python3
"""Build the bundled toy speech-translation corpus: spoken numbers -> English number words.

Numbers 0..N-1 are spelled out in each source language with num2words, spoken by espeak-ng
in several voice variants (voice, speed, pitch), stored as 16 kHz FLAC, and paired with
their English spelling as the translation. The split is by number, so no test number is
ever heard in training. Also writes a SentencePiece model and a dict.txt in the mBART-50
layout (our task appends the 52 language tags and <mask>) and the data config.yaml.

    python examples/toy/make_toy_corpus.py --out data/toy            # 9,000 utterances, ~2 min on 2 cores

Re-running with the same arguments reuses the clips already there. Deterministic for a
given seed (espeak-ng version aside, which is written to OUT/corpus_info.json).
"""
import argparse
import json
import logging
import random
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import yaml
from whisper.audio import SAMPLE_RATE

from comsl_fairseq.data.manifest import write_manifest

logger = logging.getLogger("make_toy_corpus")

# espeak-ng voice variants: (variant, words per minute, pitch 0-99); each utterance also
# gets a small seeded jitter of speed and pitch.
VARIANTS = [("m1", 150, 45), ("f2", 170, 70), ("m3", 130, 30), ("f4", 185, 60), ("m7", 160, 40)]
ESPEAK_VOICE = {"fr": "fr", "de": "de", "es": "es", "it": "it", "pt": "pt", "nl": "nl"}


def spell(number: int, lang: str) -> str:
    from num2words import num2words

    return num2words(number, lang=lang)


def trim_silence(wav: np.ndarray, keep_seconds: float, floor_db: float = -40.0) -> np.ndarray:
    """Cut leading and trailing silence (10 ms frames whose RMS is ``floor_db`` below the clip's
    loudest frame), keeping ``keep_seconds`` of it at each end. espeak-ng ends every utterance
    with ~0.37 s of silence (22 % of an average clip here), which costs compute and teaches nothing."""
    hop = SAMPLE_RATE // 100
    n = len(wav) // hop
    if n == 0:
        return wav
    rms = np.sqrt((wav[:n * hop].reshape(n, hop) ** 2).mean(axis=1))
    loud = np.flatnonzero(rms > rms.max() * 10 ** (floor_db / 20))
    if loud.size == 0:
        return wav
    keep = int(round(keep_seconds * SAMPLE_RATE))
    return wav[max(0, loud[0] * hop - keep):min(len(wav), (loud[-1] + 1) * hop + keep)]


def speak(job: tuple) -> tuple:
    """Synthesize one utterance to FLAC; returns (path, n_samples). Skips existing clips."""
    text, lang, variant, speed, pitch, keep_silence, out_path = job
    out_path = Path(out_path)
    if out_path.is_file():
        return str(out_path), sf.info(str(out_path)).frames
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        cmd = ["espeak-ng", "-v", f"{ESPEAK_VOICE[lang]}+{variant}", "-s", str(speed), "-p", str(pitch),
               "-w", tmp.name, text]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"espeak-ng failed on {text!r} ({lang}+{variant}): {proc.stderr.strip()}")
        wav, sr = sf.read(tmp.name, dtype="float32")
    if wav.ndim > 1:
        wav = wav.mean(axis=1)
    if sr != SAMPLE_RATE:
        wav = soxr.resample(wav, sr, SAMPLE_RATE).astype(np.float32)
    wav = np.clip(wav, -1.0, 1.0)
    if keep_silence >= 0:
        wav = trim_silence(wav, keep_silence)
    tmp_path = out_path.with_suffix(".tmp.flac")
    sf.write(str(tmp_path), wav, SAMPLE_RATE)
    tmp_path.rename(out_path)  # complete files only, so re-runs can trust what exists
    return str(out_path), int(wav.size)


def drop_stale_clips(out: Path, keep_silence: float) -> None:
    """Clips are reused across runs only if they were cut the same way (a corpus written before
    --keep-silence existed kept espeak-ng's silence)."""
    info_path = out / "corpus_info.json"
    if not info_path.is_file():
        return
    before = json.loads(info_path.read_text(encoding="utf-8")).get("keep_silence", -1)
    if before != keep_silence:
        stale = list((out / "clips").glob("*.flac"))
        logger.info("clips in %s were made with keep_silence %s, now %s: synthesizing all %d again",
                    out, before, keep_silence, len(stale))
        for path in stale:
            path.unlink()
        info_path.unlink()


def split_numbers(n: int, n_dev: int, n_test: int, seed: int) -> dict:
    numbers = list(range(n))
    random.Random(seed).shuffle(numbers)
    return {"test": sorted(numbers[:n_test]), "dev": sorted(numbers[n_test:n_test + n_dev]),
            "train": sorted(numbers[n_test + n_dev:])}


def espeak_version() -> str:
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is not installed: run `apt-get install espeak-ng` (Debian/Ubuntu) "
                 "or `brew install espeak-ng` (macOS), then re-run.")
    return subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder (clips/, manifests, config.yaml)")
    p.add_argument("--langs", default="fr,de,es", help="source languages (num2words + espeak-ng codes)")
    p.add_argument("--numbers", type=int, default=1000, help="use the numbers 0..N-1")
    p.add_argument("--variants", type=int, default=3, help=f"voice variants per number (max {len(VARIANTS)})")
    p.add_argument("--dev-numbers", type=int, default=30, help="numbers held out for validation")
    p.add_argument("--test-numbers", type=int, default=100, help="numbers held out for testing")
    p.add_argument("--dev-variants", type=int, default=1, help="voice variants per dev number")
    p.add_argument("--vocab-size", type=int, default=160, help="SentencePiece vocabulary size")
    p.add_argument("--seed", type=int, default=1, help="seed of the split and of the voice jitter")
    p.add_argument("--keep-silence", type=float, default=0.1,
                   help="seconds of leading/trailing silence kept per clip (-1: keep espeak-ng's as it is)")
    p.add_argument("--workers", type=int, default=2, help="parallel espeak-ng processes")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(message)s")

    langs = [lang.strip() for lang in args.langs.split(",") if lang.strip()]
    unknown = [lang for lang in langs if lang not in ESPEAK_VOICE]
    if unknown:
        p.error(f"unsupported language(s) {unknown}; choose from {sorted(ESPEAK_VOICE)}")
    if not 1 <= args.variants <= len(VARIANTS):
        p.error(f"--variants must be 1..{len(VARIANTS)}")
    if args.dev_numbers + args.test_numbers >= args.numbers:
        p.error("--dev-numbers + --test-numbers must leave numbers for training")
    version = espeak_version()
    out = args.out.resolve()
    clips = out / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    drop_stale_clips(out, args.keep_silence)

    splits = split_numbers(args.numbers, args.dev_numbers, args.test_numbers, args.seed)
    rng = random.Random(args.seed)
    rows = {s: [] for s in splits}
    jobs = []
    for split, numbers in splits.items():
        n_variants = args.dev_variants if split == "dev" else args.variants
        for number in numbers:
            translation = spell(number, "en")
            for lang in langs:
                text = spell(number, lang)
                for v in range(n_variants):
                    variant, speed, pitch = VARIANTS[v]
                    speed += rng.randint(-15, 15)
                    pitch += rng.randint(-10, 10)
                    uid = f"{lang}_{number:04d}_v{v}"
                    jobs.append((text, lang, variant, speed, pitch, args.keep_silence, str(clips / f"{uid}.flac")))
                    rows[split].append([uid, f"{uid}.flac", None, text, translation, lang, "en", f"espeak_{variant}"])
    logger.info("synthesizing %d utterances (%s) with %s", len(jobs), ",".join(langs), version)
    lengths = {}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for i, (path, n) in enumerate(pool.map(speak, jobs, chunksize=16), start=1):
            lengths[Path(path).name] = n
            if i % 500 == 0 or i == len(jobs):
                logger.info("%d / %d clips", i, len(jobs))
    for split, split_rows in rows.items():
        for row in split_rows:
            row[2] = str(lengths[row[1]])
        write_manifest(out / f"{split}.tsv", split_rows)
        seconds = sum(int(r[2]) for r in split_rows) / SAMPLE_RATE
        logger.info("%s: %d utterances, %.1f minutes", split, len(split_rows), seconds / 60)

    train_texts = [r[3] for r in rows["train"]] + [r[4] for r in rows["train"]]
    from comsl_fairseq.vocab.vocabulary import train_sentencepiece

    train_sentencepiece(train_texts, out, args.vocab_size)
    config = {"vocab_filename": "dict.txt",
              "bpe_tokenizer": {"bpe": "sentencepiece", "sentencepiece_model": "sentence.bpe.model"},
              "audio_root": "clips"}
    (out / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    info = {"espeak_ng": version, "langs": langs, "numbers": args.numbers, "variants": args.variants,
            "keep_silence": args.keep_silence,
            "seed": args.seed, "splits": {s: len(r) for s, r in rows.items()},
            "test_numbers": splits["test"]}
    (out / "corpus_info.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    logger.info("corpus ready in %s", out)


if __name__ == "__main__":
    main()
