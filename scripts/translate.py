#!/usr/bin/env python3
"""Translate audio files with a trained checkpoint: a thin wrapper over `comsl-translate`.

    python scripts/translate.py --path exp/demo/checkpoint_best.pt --src-lang fr clip.wav

`--path CKPT` is the model argument of `comsl-translate` (which also takes an exported
model folder); every other option is passed through (see `comsl-translate --help`).
"""
import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    model = []
    for i, arg in enumerate(argv):
        if arg == "--path" and i + 1 < len(argv):
            model = [argv[i + 1]]
            del argv[i:i + 2]
            break
        if arg.startswith("--path="):
            model = [arg.split("=", 1)[1]]
            del argv[i]
            break
    from comsl_fairseq.cli.translate import main as translate_main

    return translate_main(model + argv)


if __name__ == "__main__":
    sys.exit(main())
