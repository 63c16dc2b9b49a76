"""What ``comsl-translate`` reads: audio files, folders of them, and manifest TSVs.

A folder is searched recursively; every file in it is either an input or named with the reason
it is not (a format we cannot read, not audio, a broken link). A ``.tsv`` is a fairseq speech
manifest: its ``audio`` column is resolved against the ``audio_root`` of a ``config.yaml``
beside it (or the manifest's own folder), ``zip:offset:length`` entries included, and its
``src_lang`` / ``tgt_lang`` columns, when present, override the command-line languages row by
row. A row that cannot be used is named by file and line with its reason; the others are read.

Output files are named after file names and manifest ids made safe (:func:`safe_stem`): no
path separators, no leading dots, no control characters -- an id never chooses where a file
is written. Names that collide get a numbered suffix (:func:`assign_outputs`).
"""
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from comsl_fairseq.data.manifest import decoded_lines
from comsl_fairseq.vocab.languages import mbart_tag

# What libsndfile (soundfile) decodes, by file name.
AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".aifc", ".au", ".caf",
                  ".w64", ".rf64"}
# Audio and video containers it does not decode: named with a way out.
FOREIGN_SUFFIXES = {".m4a", ".aac", ".mp4", ".wma", ".webm", ".mkv", ".mov", ".amr", ".3gp", ".ac3", ".m4b"}
MAX_STEM_BYTES = 200  # file names are limited to 255 bytes; room for a suffix and an extension
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')


@dataclass
class Item:
    """One recording to translate: how to read it (``AudioSource(field, root)``), what to
    call it, its output file stem, and its languages (None: the command line's)."""

    name: str
    field: str
    root: Path
    output_stem: str
    src_lang: str | None = None
    tgt_lang: str | None = None
    uid: str | None = None  # the manifest id


@dataclass
class Problem:
    """An input, or part of one, that is skipped: its name, why, and a short category."""

    name: str
    reason: str
    category: str


def safe_stem(raw: str) -> str | None:
    """A file name stem from an id or a relative path: separators, control characters and
    characters Windows refuses become ``_``; leading and trailing dots and spaces are dropped
    (no ``..``, no hidden files); at most MAX_STEM_BYTES of UTF-8. None when nothing is left."""
    stem = _UNSAFE.sub("_", raw).strip(". ")
    while len(stem.encode("utf-8")) > MAX_STEM_BYTES:
        stem = stem[:-1]
    stem = stem.rstrip(". ")
    return stem if stem.strip("_") else None


def assign_outputs(items: list) -> dict:
    """{item index: output stem}, unique ignoring case (the item's stem, or with ``-2``, ``-3``,
    ... when an earlier item has it)."""
    used, out = set(), {}
    for i, item in enumerate(items):
        stem, n = item.output_stem, 2
        while stem.casefold() in used:
            stem, n = f"{item.output_stem}-{n}", n + 1
        used.add(stem.casefold())
        out[i] = stem
    return out


def collect(inputs) -> tuple:
    """(items, problems) over command-line inputs: files, folders and manifests."""
    items, problems = [], []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            folder_items(path, items, problems)
        elif path.is_file() and path.suffix.lower() == ".tsv":
            manifest_items(path, items, problems)
        elif path.is_file():
            stem = safe_stem(path.stem)
            if stem is None:
                problems.append(Problem(str(raw), f"no safe output name can be made of {path.stem!r}", "unsafe name"))
            else:
                items.append(Item(str(path), str(path.resolve()), Path("/"), stem))
        elif path.is_symlink():
            problems.append(Problem(str(raw), f"broken link (to {os.readlink(path)})", "broken link"))
        else:
            problems.append(Problem(str(raw), "no such file or folder", "input not found"))
    return items, problems


def folder_items(folder: Path, items: list, problems: list) -> None:
    """Every file under ``folder`` (links to folders are not followed), sorted: an item, or a problem."""
    found, before = 0, len(problems)
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames) + sorted(d for d in dirnames if (Path(dirpath) / d).is_symlink()):
            p = Path(dirpath) / name
            rel = p.relative_to(folder)
            suffix = p.suffix.lower()
            if p.is_symlink() and not p.exists():
                problems.append(Problem(str(p), f"broken link (to {os.readlink(p)})", "broken link"))
            elif p.is_dir():
                problems.append(Problem(str(p), "link to a folder, not followed", "not audio"))
            elif suffix in AUDIO_SUFFIXES:
                stem = safe_stem(str(rel.with_suffix("")).replace(os.sep, "_"))
                if stem is None:
                    problems.append(Problem(str(p), "no safe output name can be made of its name", "unsafe name"))
                    continue
                items.append(Item(str(p), str(p.resolve()), Path("/"), stem))
                found += 1
            elif suffix in FOREIGN_SUFFIXES:
                problems.append(Problem(str(p), f"{suffix} is not a format we can decode; convert it, e.g. "
                                                f"ffmpeg -i {p.name} {p.stem}.flac", "unsupported format"))
            else:
                problems.append(Problem(str(p), f"not an audio file (we read {' '.join(sorted(AUDIO_SUFFIXES))})",
                                        "not audio"))
    if not found and len(problems) == before:
        problems.append(Problem(str(folder), "folder is empty", "no audio"))


class _RowSkips:
    """A SkipLog look-alike that turns skipped lines into problems."""

    def __init__(self, problems: list):
        self.problems = problems

    def skip(self, row_id: str, reason: str, detail: str = "") -> None:
        self.problems.append(Problem(row_id, f"{reason} ({detail})" if detail else reason, reason))


def manifest_items(path: Path, items: list, problems: list) -> None:
    """Items of a manifest TSV (columns ``id`` and ``audio`` required); each unusable row is a
    problem named ``PATH:LINE``."""
    try:
        root = _audio_root(path)
        lines = decoded_lines(path, _RowSkips(problems))
        header = next(lines, (1, None))[1]
    except (OSError, ValueError, yaml.YAMLError) as e:
        problems.append(Problem(str(path), f"cannot read manifest: {e}", "unreadable manifest"))
        return
    if header is None:
        problems.append(Problem(str(path), "manifest is empty (no header line)", "unreadable manifest"))
        return
    header = header.split("\t")
    if not {"id", "audio"} <= set(header):
        problems.append(Problem(str(path), f"a manifest needs the columns id and audio; its header is {header}",
                                "unreadable manifest"))
        return
    rows, known_problems = 0, len(problems)
    for line_no, line in lines:
        if not line.strip():
            continue
        rows += 1
        where = f"{path}:{line_no}"
        fields = line.split("\t")
        if len(fields) != len(header):
            problems.append(Problem(where, f"{len(fields)} field(s), the header has {len(header)}", "malformed row"))
            continue
        row = dict(zip(header, fields, strict=True))
        uid, audio = row["id"].strip(), row["audio"].strip()
        if not uid or not audio:
            problems.append(Problem(where, f"empty {'id' if not uid else 'audio'} field", "malformed row"))
            continue
        langs = [row.get(c) or None for c in ("src_lang", "tgt_lang")]
        try:
            for code in filter(None, langs):
                mbart_tag(code)
        except KeyError as e:
            problems.append(Problem(f"{where} (id {uid})", str(e.args[0]).split(";")[0], "unknown language code"))
            continue
        stem = safe_stem(uid)
        if stem is None:
            problems.append(Problem(f"{where} (id {uid!r})", "no safe output name can be made of this id",
                                    "unsafe name"))
            continue
        items.append(Item(f"{path}:{uid}", audio, root, stem, *langs, uid=uid))
    if rows == 0 and len(problems) == known_problems:  # (rows that are not text were named already)
        problems.append(Problem(str(path), "manifest has a header but no rows", "no audio"))


def _audio_root(path: Path) -> Path:
    config = path.parent / "config.yaml"
    if config.is_file():
        raw = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        if isinstance(raw, dict) and isinstance(raw.get("audio_root"), str):
            return (path.parent / Path(raw["audio_root"]).expanduser()).resolve()
    return path.parent
