#!/usr/bin/env python3
"""Prepare CoVoST 2 (X->En or En->X) for comsl_fairseq from Common Voice clips and the CoVoST 2 TSVs.

    python examples/covost2/prep_covost2.py --cv-root CV --covost-tsv-root TSV --out-root OUT \\
        --mbart-dir MBART50 [--direction x-en|en-x] [--langs fr,de,...]

X->En (the default): reads CV/{lang}/clips/*.mp3 with CV/{lang}/validated.tsv (Common Voice
columns; the transcript is its `sentence`) and TSV/covost_v2.{lang}_en.tsv (columns `path
translation split`, split in train, train_covost, dev, test), and writes
OUT/{train,dev,test}_{lang}_en.tsv (train includes train_covost).
En->X (--direction en-x, --langs the target languages, default all 15): the English clips
CV/en/clips/*.mp3 with CV/en/validated.tsv and TSV/covost_v2.en_{lang}.tsv, written as
OUT/{train,dev,test}_en_{lang}.tsv; each English clip is decoded once for all pairs. Both
directions can share one OUT (one config.yaml; the manifests' names differ), which is what a
model trained on both directions reads.

Every mp3 is decoded once to 16 kHz mono FLAC (OUT/clips/{source lang}/), every clip checked;
OUT/config.yaml is written. Every dropped row (missing, unreadable or empty clip, empty
transcript or translation, over --max-seconds, malformed TSV line) is named with its reason in
OUT/dropped.tsv (En->X: OUT/dropped_en_x.tsv) and counted in OUT/prep_summary.json
(prep_summary_en_x.json). Re-running skips clips already decoded. The decoder (soundfile /
libsndfile) and resampler (soxr) versions are written to the summary.
"""
import argparse
import csv
import json
import logging
import re
import sys
import unicodedata
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import yaml
from tqdm import tqdm

from comsl_fairseq.data.audio import SAMPLE_RATE, AudioError, read_audio
from comsl_fairseq.data.manifest import write_manifest
from comsl_fairseq.vocab.languages import COVOST_EN_X_LANGS, COVOST_X_EN_LANGS, mbart_tag

logger = logging.getLogger("prep_covost2")

COVOST_X_EN = list(COVOST_X_EN_LANGS)
COVOST_EN_X = list(COVOST_EN_X_LANGS)
# --direction -> (the languages --langs chooses from, the suffix of the report files)
DIRECTIONS = {"x-en": (COVOST_X_EN, ""), "en-x": (COVOST_EN_X, "_en_x")}
SPLITS = {"train": "train", "train_covost": "train", "dev": "dev", "test": "test"}
_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")


def clean_text(text: str) -> str:
    """NFC, zero-width characters removed, every Unicode space run (NBSP, thin and narrow
    spaces, ideographic space, tabs) turned into one ASCII space, ends stripped."""
    text = _ZERO_WIDTH.sub("", unicodedata.normalize("NFC", text))
    return " ".join(text.split())


def read_tsv(path: Path, required: list, dropped: list, lang: str) -> list:
    """Rows of a TSV as dicts. Lines are split on tabs with quotes kept as text; a line with
    the wrong field count is re-read as quoted CSV (a quoted field may hold tabs); a line
    that still does not fit is dropped with its reason."""
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    header = lines[0].rstrip("\r").split("\t")
    missing = [c for c in required if c not in header]
    if missing:
        raise SystemExit(f"error: {path} lacks column(s) {missing}; header: {header}")
    rows = []
    for line_no, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            fields = next(csv.reader([line], delimiter="\t", quotechar='"'))
        if len(fields) != len(header):
            dropped.append((lang, "-", f"{path.name}:{line_no}", "malformed TSV line"))
            continue
        rows.append(dict(zip(header, fields, strict=True)))
    return rows


def decode_clip(job: tuple) -> tuple:
    """mp3 -> 16 kHz mono FLAC, once. Returns (name, n_samples or None, reason)."""
    src, dst, max_samples = job
    src, dst = Path(src), Path(dst)
    if dst.is_file():
        try:
            n = sf.info(str(dst)).frames
            return src.name, n, ("over the length limit" if n > max_samples else "")
        except (sf.LibsndfileError, RuntimeError):
            dst.unlink()  # a broken leftover of an interrupted run: decode again
    if not src.is_file():
        return src.name, None, "clip missing"
    if src.stat().st_size == 0:
        return src.name, None, "empty file"
    try:  # the plugin's own reader: soundfile, mono, soxr to 16 kHz, finite samples
        wav, _ = read_audio(str(src), src.parent)
    except AudioError as e:
        reason = {"empty audio": "no samples", "non-finite audio samples": "non-finite samples"}.get(e.reason)
        return src.name, None, reason or f"unreadable ({str(e).split(': ', 1)[-1].splitlines()[0][:80]})"
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".part.flac")
    sf.write(str(tmp), np.clip(wav, -1, 1), SAMPLE_RATE)
    tmp.rename(dst)
    return src.name, int(wav.size), ("over the length limit" if wav.size > max_samples else "")


def pair_label(src: str, tgt: str) -> str:
    """How a pair is named in manifests and reports: ``fr_en`` (X->En), ``en_de`` (En->X)."""
    return f"{src}_{tgt}"


def read_pair(src: str, tgt: str, args, dropped: list) -> list:
    """The usable rows of CoVoST 2's ``covost_v2.{src}_{tgt}.tsv``, transcripts from Common Voice
    ``{src}/validated.tsv``: (split, clip path, transcript, translation, speaker); every other row
    is named in ``dropped``."""
    label = pair_label(src, tgt) if tgt != "en" else src
    cv_dir = args.cv_root / src
    covost_tsv = args.covost_tsv_root / f"covost_v2.{src}_{tgt}.tsv"
    for p in (cv_dir / "validated.tsv", covost_tsv):
        if not p.is_file():
            raise SystemExit(f"error: {p} not found")
    transcripts = {r["path"]: r["sentence"] for r in read_tsv(cv_dir / "validated.tsv", ["path", "sentence"],
                                                               dropped, label)}
    rows = []
    for r in read_tsv(covost_tsv, ["path", "translation", "split"], dropped, label):
        split = SPLITS.get(r["split"])
        if split is None:
            dropped.append((label, r["split"], r["path"], f"unknown split {r['split']!r}"))
            continue
        src_text = clean_text(transcripts.get(r["path"], r.get("sentence", "")))
        tgt_text = clean_text(r["translation"])
        if not src_text:
            dropped.append((label, split, r["path"], "empty transcript" if r["path"] in transcripts
                            else "not in validated.tsv (no transcript)"))
            continue
        if not tgt_text:
            dropped.append((label, split, r["path"], "empty translation"))
            continue
        rows.append((split, r["path"], src_text, tgt_text, r.get("client_id", "")))
    return rows


def decode_source(src: str, paths, args) -> dict:
    """Decode each clip of ``src`` once (clips shared by several pairs, as the English clips of
    all 15 En->X pairs, are decoded once): {clip name: (n_samples or None, reason)}."""
    cv_dir = args.cv_root / src
    max_samples = int(args.max_seconds * SAMPLE_RATE)
    jobs = [(str(cv_dir / "clips" / path), str(args.out_root / "clips" / src / (Path(path).stem + ".flac")),
             max_samples) for path in sorted(set(paths))]
    decoded = {}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for name, n, reason in tqdm(pool.map(decode_clip, jobs, chunksize=32), total=len(jobs),
                                    desc=f"{src} clips", unit="clip", disable=args.no_progress):
            decoded[name] = (n, reason)
    return decoded


def write_pair(src: str, tgt: str, rows: list, decoded: dict, args, dropped: list, counts: Counter) -> dict:
    """OUT/{split}_{src}_{tgt}.tsv for train, dev and test; rows whose clip failed are dropped."""
    label = pair_label(src, tgt) if tgt != "en" else src
    # ids stay unique when pairs are trained together: the English clips recur in all En->X pairs
    uid_prefix = src if tgt == "en" else pair_label(src, tgt)
    manifests = defaultdict(list)
    for split, path, src_text, tgt_text, speaker in rows:
        n, reason = decoded[Path(path).name]
        if reason:
            dropped.append((label, split, path, reason))
            continue
        stem = Path(path).stem
        manifests[split].append([f"{uid_prefix}_{stem}", f"{src}/{stem}.flac", str(n), src_text, tgt_text, src, tgt,
                                 speaker])
    written = {}
    for split in ("train", "dev", "test"):
        name = f"{split}_{pair_label(src, tgt)}"
        write_manifest(args.out_root / f"{name}.tsv", manifests[split])
        written[name] = len(manifests[split])
        counts[f"{label}/{split}"] = len(manifests[split])
    return written


def prepare(pairs: list, args, dropped: list, counts: Counter) -> dict:
    """Read every pair, decode each source's clips once, write the manifests of every pair."""
    by_source = defaultdict(list)
    for src, tgt in pairs:
        by_source[src].append((tgt, read_pair(src, tgt, args, dropped)))
    written = {}
    for src, targets in by_source.items():
        decoded = decode_source(src, (path for _, rows in targets for _, path, *_ in rows), args)
        for tgt, rows in targets:
            written.update(write_pair(src, tgt, rows, decoded, args, dropped, counts))
    return written


def language_pairs(direction: str, langs: list) -> list:
    """(source, target) CoVoST codes: X->En pairs ``(lang, "en")``, En->X pairs ``("en", lang)``."""
    return [(lang, "en") if direction == "x-en" else ("en", lang) for lang in langs]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cv-root", type=Path, required=True, help="Common Voice root with {lang}/clips, validated.tsv")
    p.add_argument("--covost-tsv-root", type=Path, required=True,
                   help="folder with covost_v2.{lang}_en.tsv (X->En) or covost_v2.en_{lang}.tsv (En->X)")
    p.add_argument("--out-root", type=Path, required=True, help="output folder")
    p.add_argument("--mbart-dir", type=Path, required=True,
                   help="mBART-50 folder whose dict.txt and sentence.bpe.model config.yaml names")
    p.add_argument("--direction", choices=sorted(DIRECTIONS), default="x-en",
                   help="x-en: the 21 CoVoST 2 sources into English (default); en-x: English into the 15 targets")
    p.add_argument("--langs", help="the other side's languages: sources for x-en (default: all 21), targets "
                                   "for en-x (default: all 15)")
    p.add_argument("--max-seconds", type=float, default=30.0, help="drop longer clips (default 30, Whisper's window)")
    p.add_argument("--workers", type=int, default=4, help="parallel decoding processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(message)s")
    args.cv_root, args.covost_tsv_root = args.cv_root.resolve(), args.covost_tsv_root.resolve()
    args.out_root = args.out_root.resolve()
    known, suffix = DIRECTIONS[args.direction]
    langs = [x.strip() for x in (args.langs or ",".join(known)).split(",") if x.strip()]
    unknown = [x for x in langs if x not in known]
    if unknown:
        p.error(f"not CoVoST 2 {args.direction} languages: {unknown}; known: {','.join(known)}")
    for lang in langs:
        mbart_tag(lang)  # every language has a tag in our dictionary (cy, ca: the added ones)
    for name in ("dict.txt", "sentence.bpe.model"):
        if not (args.mbart_dir / name).is_file():
            p.error(f"--mbart-dir {args.mbart_dir} has no {name}")
    args.out_root.mkdir(parents=True, exist_ok=True)

    dropped, counts = [], Counter()
    manifests = prepare(language_pairs(args.direction, langs), args, dropped, counts)
    dropped_path = args.out_root / f"dropped{suffix}.tsv"
    with open(dropped_path, "w", encoding="utf-8") as f:
        f.write("lang\tsplit\tpath\treason\n")
        for row in dropped:
            f.write("\t".join(row) + "\n")
    reasons = Counter(r[3].split(" (")[0] for r in dropped)
    config = {"vocab_filename": str((args.mbart_dir / "dict.txt").resolve()),
              "bpe_tokenizer": {"bpe": "sentencepiece",
                                "sentencepiece_model": str((args.mbart_dir / "sentence.bpe.model").resolve())},
              "audio_root": "clips", "max_audio_seconds": args.max_seconds}
    (args.out_root / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    summary = {"direction": args.direction, "kept": dict(counts), "manifests": manifests, "dropped": len(dropped),
               "dropped_by_reason": reasons,
               "decoder": f"soundfile {sf.__version__} (libsndfile {sf.__libsndfile_version__})",
               "resampler": f"soxr {soxr.__version__}", "sample_rate": SAMPLE_RATE}
    (args.out_root / f"prep_summary{suffix}.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    logger.info("kept %d rows in %d manifests; dropped %d (%s); details in %s", sum(counts.values()),
                len(manifests), len(dropped), ", ".join(f"{n} {r}" for r, n in reasons.most_common()) or "none",
                dropped_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
