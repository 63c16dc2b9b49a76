#!/usr/bin/env python3
"""Build the bundled toy speech-translation corpus: spoken numbers -> English number words.

Numbers 0..N-1 are spelled out in each source language with num2words, spoken by espeak-ng
in several voice variants (voice, speed, pitch), stored as 16 kHz FLAC, and paired with
their English spelling as the translation. The split is by number, so no test number is
ever heard in training. Also writes a SentencePiece model and a dict.txt in the mBART-50
layout (our task appends the 52 language tags and <mask>) and the data config.yaml.

    python examples/toy/make_toy_corpus.py --out data/toy            # 9,000 utterances, ~2 min on 2 cores

Manifests: train, dev, test (held-out numbers, the training voices) and two more test sets
of the same held-out numbers: unseen_voices (espeak-ng voice variants that no training or
dev clip uses, --unseen-voices) and noise_{SNR}db (the test clips with seeded white, pink or
brown noise added at --noise-snr dB signal-to-noise ratio). Nothing is augmented in training.
With --train-numbers K only K of the training numbers are spoken (evenly spread); train_mt
lists the transcript -> translation pairs of every training number (text only, for the MT
stage: its audio column is "-").

With --en-x-targets fr,de,es the corpus also holds the other direction: English speech (the
same numbers spoken by espeak-ng's English voice, with the same voice variants) into those
languages' number words, as train_en_x, dev_en_x, test_en_x, unseen_voices_en_x,
noise_{SNR}db_en_x and train_mt_en_x. Each English test clip is decoded into every target
(one row per target, the clip shared); each training clip has one target, the targets taking
turns over the voices of a number. The X->En manifests and the SentencePiece model do not
change with it (the number words of every language are already in the latter).

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
import zlib
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
# Variants of the unseen_voices test set (never in VARIANTS): (variant, words per minute, pitch).
UNSEEN_VOICES = {"f1": (165, 65), "m5": (145, 35), "f3": (175, 75), "m6": (155, 40), "f5": (160, 60),
                 "m2": (140, 50)}
RECIPE = 2  # version of the way clips are made; clips of another version are synthesized again
ESPEAK_VOICE = {"fr": "fr", "de": "de", "es": "es", "it": "it", "pt": "pt", "nl": "nl", "en": "en"}


def spell(number: int, lang: str) -> str:
    from num2words import num2words

    return num2words(number, lang=lang)


def vocabulary_texts(languages: str, n: int) -> list:
    """The number words 0..n-1 of ``languages`` (comma-separated, or 'all': every language
    num2words has, regional variants aside) for a multilingual SentencePiece model; a language
    num2words cannot spell is skipped with a warning."""
    import num2words

    names = [x.strip() for x in languages.split(",") if x.strip()]
    if names == ["all"]:
        names = sorted(c for c in num2words.CONVERTER_CLASSES if "_" not in c)
    unknown = [lang for lang in names if lang not in num2words.CONVERTER_CLASSES]
    if unknown:
        raise SystemExit(f"--vocab-languages: num2words has no language {unknown[0]!r}")
    texts = []
    for lang in names:
        try:
            texts += [spell(number, lang) for number in range(n)]
        except Exception as err:  # num2words raises anything from NotImplementedError to TypeError
            logger.warning("--vocab-languages: num2words cannot spell %s (%s): skipped", lang, err)
    return texts


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


def add_noise(job: tuple) -> tuple:
    """Write ``clean`` + seeded noise at ``snr_db`` (colour: white, pink or brown, seeded) to
    ``out_path``; returns (path, n_samples). Skips existing clips."""
    clean_path, snr_db, seed, out_path = job
    out_path = Path(out_path)
    if out_path.is_file():
        return str(out_path), sf.info(str(out_path)).frames
    wav, _ = sf.read(clean_path, dtype="float32")
    rng = np.random.default_rng(seed)
    colour = ("white", "pink", "brown")[int(rng.integers(3))]
    spectrum = np.fft.rfft(rng.standard_normal(wav.size))
    f = np.arange(1, spectrum.size + 1, dtype=np.float64)
    spectrum *= {"white": 1.0, "pink": f ** -0.5, "brown": 1.0 / f}[colour]
    noise = np.fft.irfft(spectrum, n=wav.size)
    signal_power = float(np.mean(wav.astype(np.float64) ** 2))
    noise *= np.sqrt(signal_power / (10 ** (snr_db / 10)) / max(float(np.mean(noise ** 2)), 1e-20))
    noisy = np.clip(wav + noise, -1.0, 1.0).astype(np.float32)
    tmp_path = out_path.with_suffix(".tmp.flac")
    sf.write(str(tmp_path), noisy, SAMPLE_RATE)
    tmp_path.rename(out_path)
    return str(out_path), int(noisy.size)


def drop_stale_clips(out: Path, keep_silence: float) -> None:
    """Clips are reused across runs only if they were made the same way (cut with the same
    --keep-silence, by the same recipe version)."""
    info_path = out / "corpus_info.json"
    if not info_path.is_file():
        return
    info = json.loads(info_path.read_text(encoding="utf-8"))
    before = (info.get("keep_silence", -1), info.get("recipe", 1))
    if before != (keep_silence, RECIPE):
        stale = list((out / "clips").glob("*.flac"))
        logger.info("clips in %s were made with (keep_silence, recipe) %s, now %s: synthesizing all %d again",
                    out, before, (keep_silence, RECIPE), len(stale))
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
    p.add_argument("--test-variants", type=int, default=None, help="voice variants per test number "
                   "(default: --variants); also the clips per number of unseen_voices")
    p.add_argument("--train-numbers", type=int, default=0,
                   help="spoken training numbers, evenly spread over the training split (0 = all); "
                        "train_mt has every training number as text")
    p.add_argument("--train-variants-per-number", type=int, default=None,
                   help="voice variants per training number and language, taking turns over the --variants "
                        "(default: all --variants)")
    p.add_argument("--unseen-voices", default="f1,m5,f3,m6",
                   help=f"espeak-ng variants of the unseen_voices set (from {','.join(UNSEEN_VOICES)})")
    p.add_argument("--noise-snr", type=float, default=10.0, help="signal-to-noise ratio of the noisy test set, dB")
    p.add_argument("--vocab-size", type=int, default=160, help="SentencePiece vocabulary size")
    p.add_argument("--vocab-languages", default="",
                   help="also train the SentencePiece model on the number words 0..--vocab-numbers-1 of these "
                        "num2words languages ('all': every one it has), so that the dictionary, like "
                        "mBART-50's, is multilingual and the corpus uses a small part of it (default: none)")
    p.add_argument("--vocab-numbers", type=int, default=10000, help="numbers spelled for --vocab-languages")
    p.add_argument("--seed", type=int, default=1, help="seed of the split and of the voice jitter")
    p.add_argument("--keep-silence", type=float, default=0.1,
                   help="seconds of leading/trailing silence kept per clip (-1: keep espeak-ng's as it is)")
    p.add_argument("--workers", type=int, default=2, help="parallel espeak-ng processes")
    p.add_argument("--en-x-targets", default="",
                   help="also English speech into these languages' number words (e.g. fr,de,es): the *_en_x "
                        "manifests (default: none, X->En only)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(message)s")

    langs = [lang.strip() for lang in args.langs.split(",") if lang.strip()]
    unknown = [lang for lang in langs if lang not in ESPEAK_VOICE or lang == "en"]
    if unknown:
        p.error(f"unsupported language(s) {unknown}; choose from {sorted(set(ESPEAK_VOICE) - {'en'})}")
    en_x = [lang.strip() for lang in args.en_x_targets.split(",") if lang.strip()]
    bad = [lang for lang in en_x if lang not in ESPEAK_VOICE or lang == "en"]
    if bad:
        p.error(f"--en-x-targets: unsupported language(s) {bad}; choose from {sorted(set(ESPEAK_VOICE) - {'en'})}")
    if not 1 <= args.variants <= len(VARIANTS):
        p.error(f"--variants must be 1..{len(VARIANTS)}")
    if args.dev_numbers + args.test_numbers >= args.numbers:
        p.error("--dev-numbers + --test-numbers must leave numbers for training")
    test_variants = args.variants if args.test_variants is None else args.test_variants
    per_number = args.variants if args.train_variants_per_number is None else args.train_variants_per_number
    if not 1 <= per_number <= args.variants:
        p.error("--train-variants-per-number must be 1..--variants")
    if not 1 <= test_variants <= len(VARIANTS):
        p.error(f"--test-variants must be 1..{len(VARIANTS)}")
    unseen = [v.strip() for v in args.unseen_voices.split(",") if v.strip()]
    bad = [v for v in unseen if v not in UNSEEN_VOICES]
    if not unseen or bad:
        p.error(f"--unseen-voices: choose from {','.join(UNSEEN_VOICES)} (got {args.unseen_voices!r})")
    version = espeak_version()
    out = args.out.resolve()
    clips = out / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    drop_stale_clips(out, args.keep_silence)

    splits = split_numbers(args.numbers, args.dev_numbers, args.test_numbers, args.seed)
    spoken = dict(splits)
    if args.train_numbers:
        train = splits["train"]
        k = min(args.train_numbers, len(train))
        spoken["train"] = [train[int(i * len(train) / k)] for i in range(k)]
    rows = {s: [] for s in splits}
    rows["unseen_voices"] = []
    jobs = []

    def synth(lang, text, uid, variant, speed, pitch):
        rng = random.Random(f"{args.seed}-{uid}")  # per-clip jitter: a clip does not depend on the others
        speed += rng.randint(-15, 15)
        pitch += rng.randint(-10, 10)
        jobs.append((text, lang, variant, speed, pitch, args.keep_silence, str(clips / f"{uid}.flac")))

    def add(split, number, lang, text, translation, uid, variant, speed, pitch):
        synth(lang, text, uid, variant, speed, pitch)
        rows[split].append([uid, f"{uid}.flac", None, text, translation, lang, "en", f"espeak_{variant}"])

    def add_en(split, number, targets, uid, variant, speed, pitch):
        """One English clip, one row per target language (the clip shared)."""
        text = spell(number, "en")
        synth("en", text, uid, variant, speed, pitch)
        en_rows[split] += [[f"{uid}_{tgt}", f"{uid}.flac", None, text, spell(number, tgt), "en", tgt,
                            f"espeak_{variant}"] for tgt in targets]

    n_variants = {"train": args.variants, "dev": args.dev_variants, "test": test_variants}
    for split, numbers in spoken.items():
        for number in numbers:
            translation = spell(number, "en")
            for lang in langs:
                text = spell(number, lang)
                if split == "train":  # the voices take turns over numbers and languages
                    voices = [(number + langs.index(lang) + k) % args.variants for k in range(per_number)]
                else:
                    voices = range(n_variants[split])
                for v in voices:
                    variant, speed, pitch = VARIANTS[v]
                    add(split, number, lang, text, translation, f"{lang}_{number:04d}_v{v}", variant, speed, pitch)
                if split == "test":
                    for k in range(test_variants):  # the unseen voices take turns over numbers and languages
                        variant = unseen[(number + k + langs.index(lang)) % len(unseen)]
                        add("unseen_voices", number, lang, text, translation, f"{lang}_{number:04d}_u{k}",
                            variant, *UNSEEN_VOICES[variant])
    en_rows = {s: [] for s in rows}
    for split, numbers in spoken.items():
        for number in numbers if en_x else ():
            if split == "train":  # the voices take turns over numbers, the targets over a number's voices
                for v in [(number + k) % args.variants for k in range(per_number)]:
                    add_en(split, number, [en_x[(number + v) % len(en_x)]], f"en_{number:04d}_v{v}", *VARIANTS[v])
                continue
            for v in range(n_variants[split]):
                add_en(split, number, en_x, f"en_{number:04d}_v{v}", *VARIANTS[v])
            if split == "test":
                for k in range(test_variants):
                    variant = unseen[(number + k) % len(unseen)]
                    add_en("unseen_voices", number, en_x, f"en_{number:04d}_u{k}", variant, *UNSEEN_VOICES[variant])
    logger.info("synthesizing %d utterances (%s) with %s", len(jobs), ",".join(langs + ["en"] * bool(en_x)),
                version)
    lengths = {}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for i, (path, n) in enumerate(pool.map(speak, jobs, chunksize=16), start=1):
            lengths[Path(path).name] = n
            if i % 500 == 0 or i == len(jobs):
                logger.info("%d / %d clips", i, len(jobs))
        noise_split = f"noise_{args.noise_snr:g}db"
        rows[noise_split] = []
        noise_jobs = []
        for row in rows["test"]:
            uid = f"{row[0]}_snr{args.noise_snr:g}"
            noise_jobs.append((str(clips / row[1]), args.noise_snr, zlib.crc32(f"{args.seed}-{uid}".encode()),
                               str(clips / f"{uid}.flac")))
            rows[noise_split].append([uid, f"{uid}.flac", None, *row[3:]])
        en_rows[noise_split] = []
        noisy_clips = set()
        for row in en_rows["test"]:  # each English test clip once, one row per target
            uid = f"{Path(row[1]).stem}_snr{args.noise_snr:g}"
            if uid not in noisy_clips:
                noisy_clips.add(uid)
                noise_jobs.append((str(clips / row[1]), args.noise_snr, zlib.crc32(f"{args.seed}-{uid}".encode()),
                                   str(clips / f"{uid}.flac")))
            en_rows[noise_split].append([f"{uid}_{row[6]}", f"{uid}.flac", None, *row[3:]])
        for path, n in pool.map(add_noise, noise_jobs, chunksize=16):
            lengths[Path(path).name] = n
    sets = [(split, split_rows) for split, split_rows in rows.items()]
    sets += [(f"{split}_en_x", split_rows) for split, split_rows in en_rows.items() if en_x]
    for split, split_rows in sets:
        for row in split_rows:
            row[2] = str(lengths[row[1]])
        write_manifest(out / f"{split}.tsv", split_rows)
        seconds = sum(int(r[2]) for r in split_rows) / SAMPLE_RATE
        logger.info("%s: %d utterances, %.1f minutes", split, len(split_rows), seconds / 60)
    # text only (the MT stage reads no audio): the audio column is "-"
    write_manifest(out / "train_mt.tsv", [[f"{lang}_{number:04d}_text", "-", "0", spell(number, lang),
                                           spell(number, "en"), lang, "en", "text"]
                                          for number in splits["train"] for lang in langs])
    if en_x:
        write_manifest(out / "train_mt_en_x.tsv", [[f"en_{number:04d}_{lang}_text", "-", "0", spell(number, "en"),
                                                    spell(number, lang), "en", lang, "text"]
                                                   for number in splits["train"] for lang in en_x])

    pairs = [(spell(n, lang), spell(n, "en")) for n in splits["train"] for lang in langs]
    train_texts = [src for src, _ in pairs] + [tgt for _, tgt in pairs]
    from comsl_fairseq.vocab.vocabulary import train_sentencepiece

    train_sentencepiece(train_texts + vocabulary_texts(args.vocab_languages, args.vocab_numbers), out,
                        args.vocab_size)
    config = {"vocab_filename": "dict.txt",
              "bpe_tokenizer": {"bpe": "sentencepiece", "sentencepiece_model": "sentence.bpe.model"},
              "audio_root": "clips"}
    (out / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    info = {"espeak_ng": version, "langs": langs, "numbers": args.numbers, "variants": args.variants,
            "keep_silence": args.keep_silence, "recipe": RECIPE, "test_variants": test_variants,
            "train_numbers": len(spoken["train"]), "train_variants_per_number": per_number,
            "unseen_voices": unseen, "noise_snr": args.noise_snr,
            "seed": args.seed, "splits": {s: len(r) for s, r in sets},
            "test_numbers": splits["test"]}
    if en_x:
        info["en_x_targets"] = en_x
    if args.vocab_languages:
        info["vocab_languages"] = args.vocab_languages
        info["vocab_numbers"] = args.vocab_numbers
    (out / "corpus_info.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    logger.info("corpus ready in %s", out)


if __name__ == "__main__":
    main()
