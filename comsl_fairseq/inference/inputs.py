"""What ``comsl-translate`` reads: audio files, folders of them, and manifest TSVs.

A folder is searched recursively for audio files. A ``.tsv`` is a manifest: its
``audio`` column is resolved against the ``audio_root`` of a ``config.yaml`` beside it (or
the manifest's own folder), ``zip:offset:length`` entries included, and its ``src_lang`` /
``tgt_lang`` columns, when present, override the command-line languages row by row.
Inputs that cannot be listed are returned as problems, never raised.
"""
from dataclasses import dataclass
from pathlib import Path

import yaml

from comsl_fairseq.data.manifest import read_table

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus"}


@dataclass
class Item:
    """One recording to translate: how to read it (``read_audio(field, root)``), what to
    call it, and its languages (None: the command line's)."""

    name: str
    field: str
    root: Path
    output_stem: str
    src_lang: str | None = None
    tgt_lang: str | None = None


def collect(inputs) -> tuple:
    """(items, problems): ``problems`` are (input, reason) pairs for inputs that are
    missing, empty folders or unreadable manifests."""
    items, problems = [], []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                problems.append((raw, "folder holds no audio files (" + " ".join(sorted(AUDIO_SUFFIXES)) + ")"))
            items += [Item(str(p), str(p.resolve()), Path("/"), str(p.relative_to(path).with_suffix("")))
                      for p in found]
        elif path.is_file() and path.suffix.lower() == ".tsv":
            try:
                items += manifest_items(path)
            except (OSError, ValueError, KeyError, UnicodeDecodeError) as e:
                problems.append((raw, f"cannot read manifest: {e}"))
        elif path.is_file():
            items.append(Item(str(path), str(path.resolve()), Path("/"), path.stem))
        else:
            problems.append((raw, "no such file or folder"))
    return items, problems


def manifest_items(path: Path) -> list:
    """Items of a manifest TSV (columns ``id`` and ``audio`` required)."""
    root = path.parent
    config = path.parent / "config.yaml"
    if config.is_file():
        raw = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        if isinstance(raw, dict) and isinstance(raw.get("audio_root"), str):
            root = (path.parent / Path(raw["audio_root"]).expanduser()).resolve()
    _, rows = read_table(path)
    if rows and not {"id", "audio"} <= set(rows[0]):
        raise ValueError(f"{path} needs the columns id and audio, has {sorted(rows[0])}")
    return [Item(f"{path}:{r['id']}", r["audio"], root, r["id"], r.get("src_lang") or None,
                 r.get("tgt_lang") or None) for r in rows]
