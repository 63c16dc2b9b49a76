#!/usr/bin/env python3
"""Translate audio files with a trained comsl_fairseq checkpoint (beam search, tags stripped).

    python scripts/translate.py --path exp/demo/checkpoint_best.pt --src-lang fr clip.wav
    python scripts/translate.py --path CKPT --src-lang de --tgt-lang en folder_of_clips/

wav / flac / mp3 at any sample rate (down-mixed and resampled to 16 kHz). Prints one line
per file (path, then the translation) and the real-time factor (decoding time / audio time).
The data folder saved in the checkpoint provides the dictionary and SentencePiece model;
pass --data if it has moved.
"""
import argparse
import logging
import sys
import time
from argparse import Namespace
from pathlib import Path

import torch

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg"}


def collect(inputs) -> list:
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"error: {path} does not exist")
    if not files:
        raise SystemExit("error: no audio files found")
    return files


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="audio files or folders")
    p.add_argument("--path", required=True, help="checkpoint (.pt) written by fairseq-train")
    p.add_argument("--src-lang", required=True, help="source language code (CoVoST or mBART-50 form, e.g. fr)")
    p.add_argument("--tgt-lang", default="en", help="target language code (default: en)")
    p.add_argument("--data", help="data folder with config.yaml, if it moved since training")
    p.add_argument("--beam", type=int, default=5, help="beam size (default: 5)")
    p.add_argument("--max-len-b", type=int, default=200, help="maximum output length in tokens")
    p.add_argument("--batch-size", type=int, default=8, help="clips decoded together")
    p.add_argument("--cpu", action="store_true", help="decode on the CPU even if a GPU is present")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from fairseq import checkpoint_utils

    import comsl_fairseq  # noqa: F401  (registers the task and model, allowlists checkpoint classes)
    from comsl_fairseq.data.audio import SAMPLE_RATE, AudioError, read_audio
    from comsl_fairseq.data.languages import mbart_tag, tag_symbol

    try:
        src_tag, tgt_tag = mbart_tag(args.src_lang), mbart_tag(args.tgt_lang)
    except KeyError as e:
        raise SystemExit(f"error: {e.args[0]}") from None
    overrides = {"data": str(Path(args.data).resolve())} if args.data else None
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([args.path], arg_overrides=overrides)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    model = models[0].to(device).eval()
    d = task.target_dictionary
    generator = task.build_generator([model], Namespace(beam=args.beam, max_len_b=args.max_len_b, prefix_size=1))
    files = collect(args.inputs)

    audio_seconds = decode_seconds = 0.0
    for start in range(0, len(files), args.batch_size):
        chunk = files[start:start + args.batch_size]
        clips = []
        for f in chunk:
            try:
                clips.append(torch.from_numpy(read_audio(str(f.resolve()), Path("/"))[0]))
            except AudioError as e:
                raise SystemExit(f"error: {e}") from None
        lengths = torch.tensor([c.numel() for c in clips])
        audio = torch.zeros(len(clips), int(lengths.max()))
        for i, c in enumerate(clips):
            audio[i, : c.numel()] = c
        n = len(clips)
        sample = {"net_input": {"src_tokens": audio.to(device), "src_lengths": lengths.to(device),
                                "src_lang_tags": torch.full((n,), d.index(tag_symbol(src_tag)), device=device)}}
        prefix = torch.full((n, 1), d.index(tag_symbol(tgt_tag)), device=device)
        t0 = time.perf_counter()
        with torch.no_grad():
            hyps = task.inference_step(generator, [model], sample, prefix_tokens=prefix)
        decode_seconds += time.perf_counter() - t0
        audio_seconds += float(lengths.sum()) / SAMPLE_RATE
        for f, h in zip(chunk, hyps, strict=True):
            print(f"{f}\t{task.decode_tokens(h[0]['tokens'])}")
    print(f"real-time factor: {decode_seconds / audio_seconds:.3f} ({decode_seconds:.2f} s for "
          f"{audio_seconds:.1f} s of audio, {len(files)} file(s), {device})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
