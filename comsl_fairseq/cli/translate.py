"""``comsl-translate``: translate (or transcribe) audio files, folders and manifests.

    comsl-translate --path MODEL INPUTS... --src-lang fr [--task st|asr] [--format txt|jsonl|srt|vtt]

MODEL is an exported model folder (``comsl-export``) or a training checkpoint.
Without ``--out`` results go to standard output (txt: ``name<TAB>text`` per input;
jsonl: one object per segment; srt/vtt: one input only); with it, one file per input.
A file that cannot be read or decoded is reported on standard error with its reason and
skipped; the exit status is non-zero only when nothing was translated. The closing lines
give start-up time (imports, model load), decoding time, real-time factor and throughput.
"""
import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path

from comsl_fairseq.inference.subtitles import FORMATS, WRITERS
from comsl_fairseq.inference.translator import DTYPES

logger = logging.getLogger(__name__)

CHUNK_BATCHES = 8  # files read and decoded together, in batches: length sorting needs a pool
CHUNK_SAMPLES = 20 * 60 * 16_000  # ... but no more than 20 minutes of audio in memory


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="comsl-translate", description=__doc__.split("\n\n")[0])
    p.add_argument("--path", required=True, help="exported model folder, or a training checkpoint (.pt)")
    p.add_argument("inputs", nargs="+", help="audio files, folders (searched recursively) or manifest .tsv files")
    p.add_argument("--src-lang", help="source language (CoVoST or mBART-50 code, e.g. fr); manifests with a "
                                      "src_lang column may omit it")
    p.add_argument("--tgt-lang", default="en", help="target language for --task st (default: en)")
    p.add_argument("--task", choices=("st", "asr"), default="st", help="st: translate; asr: transcribe")
    p.add_argument("--format", choices=FORMATS, default="txt", help="output format (default: txt)")
    p.add_argument("--out", type=Path, help="write OUT/<name>.<format> per input")
    p.add_argument("--segment", choices=("auto", "always", "never"), default="auto",
                   help="auto: cut only recordings longer than the model's window into speech segments; "
                        "always: segment every input (finer subtitles); never: refuse long recordings")
    p.add_argument("--max-segment-seconds", type=float, help="longest segment (default: the model's window)")
    p.add_argument("--beam", type=int, default=5, help="beam size (default: 5)")
    p.add_argument("--max-len-b", type=int, default=200, help="maximum output length in tokens")
    p.add_argument("--batch-size", type=int, default=8, help="clips or segments decoded together")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--cpu", action="store_true", help="same as --device cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32",
                   help="autocast precision (fp16 needs CUDA)")
    p.add_argument("--data", help="for a training checkpoint: its data folder, if it moved since training")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def process_age() -> float | None:
    """Seconds since this process started (Linux), to show the import cost; else None."""
    try:
        import os

        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class Run:
    """Counts, outputs and the closing summary of one command."""

    def __init__(self, args, n_items: int):
        self.args, self.n_items = args, n_items
        self.failed = Counter()
        self.done = self.segments = 0
        self.audio_seconds = self.decode_seconds = self.segment_seconds = 0.0
        self.used_stems = set()

    def fail(self, name: str, reason: str, category: str, bar=None) -> None:
        self.failed[category] += 1
        (bar.write if bar is not None else print)(f"skipped {name}: {reason}", file=sys.stderr)

    def emit(self, item, result) -> None:
        self.done += 1
        self.segments += len(result.segments)
        self.audio_seconds += result.audio_seconds
        self.decode_seconds += result.decode_seconds
        self.segment_seconds += result.segment_seconds
        fmt = self.args.format
        extra = {"task": self.args.task, "src_lang": item.src_lang or self.args.src_lang}
        if self.args.out is None:
            if fmt == "txt":
                sys.stdout.write(f"{item.name}\t{result.text}\n")
            else:
                sys.stdout.write(WRITERS[fmt](item.name, result.segments, **(extra if fmt == "jsonl" else {})))
            sys.stdout.flush()
            return
        stem = item.output_stem
        n = 2
        while stem in self.used_stems:
            stem, n = f"{item.output_stem}-{n}", n + 1
        self.used_stems.add(stem)
        path = self.args.out / f"{stem}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(WRITERS[fmt](item.name, result.segments, **(extra if fmt == "jsonl" else {})),
                        encoding="utf-8")

    def summary(self, imports: float | None, load: float, device) -> None:
        failed = sum(self.failed.values())
        reasons = ", ".join(f"{n} {why}" for why, n in self.failed.most_common())
        lines = [f"translated {self.done} of {self.n_items} input(s)"
                 + (f"; {failed} skipped ({reasons})" if failed else "")
                 + f"; {self.segments} segment(s), {self.audio_seconds:.1f} s of audio"]
        startup = f"model load {load:.2f} s" + (f", imports {imports:.2f} s" if imports is not None else "")
        lines.append(f"start-up: {startup}")
        work = self.decode_seconds + self.segment_seconds
        if self.audio_seconds > 0 and work > 0:
            vad = f"segmentation {self.segment_seconds:.2f} s + " if self.segment_seconds else ""
            lines.append(f"real-time factor: {work / self.audio_seconds:.3f} ({vad}decoding "
                         f"{self.decode_seconds:.2f} s for {self.audio_seconds:.1f} s of audio, "
                         f"model load and file reading excluded, {device}); "
                         f"throughput {self.segments / work:.2f} utterances/s, "
                         f"{self.audio_seconds / work:.1f} s of audio per second")
        print("\n".join(lines), file=sys.stderr)


def main(argv=None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    imports = process_age()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.WARNING)  # fairseq's import may have set INFO
    from comsl_fairseq.data.audio import AudioError, read_audio
    from comsl_fairseq.inference.inputs import collect
    from comsl_fairseq.vocab.languages import mbart_tag

    items, problems = collect(args.inputs)
    if args.format in ("srt", "vtt") and args.out is None and len(items) > 1:
        raise SystemExit(f"error: --format {args.format} with {len(items)} inputs needs --out")
    for code in {args.src_lang, args.tgt_lang} | {i.src_lang for i in items} | {i.tgt_lang for i in items}:
        if code is not None:
            try:
                mbart_tag(code)
            except KeyError as e:
                raise SystemExit(f"error: {e.args[0]}") from None
    if any((i.src_lang or args.src_lang) is None for i in items):
        raise SystemExit("error: --src-lang is required (only manifests with a src_lang column may omit it)")

    translator = load_translator(args)
    run = Run(args, len(items) + len(problems))
    for name, reason in problems:
        run.fail(name, reason, "input not found or not readable")
    from tqdm import tqdm

    with tqdm(total=len(items), unit="file", disable=True if args.no_progress else None, file=sys.stderr) as bar:
        chunk, waves = [], []
        for n, item in enumerate(items, start=1):
            try:
                waves.append(read_audio(item.field, item.root)[0])
                chunk.append(item)
            except AudioError as e:
                run.fail(item.name, str(e), e.reason, bar)
                bar.update(1)
            # Decode several batches' worth at once (sorted by length inside), bounded in memory.
            if n == len(items) or len(chunk) >= CHUNK_BATCHES * args.batch_size or \
                    sum(w.size for w in waves) >= CHUNK_SAMPLES:
                translate_chunk(translator, args, run, chunk, waves, bar)
                chunk, waves = [], []
    run.summary(imports, translator.load_seconds, translator.device)
    return 0 if run.done else 1


def load_translator(args):
    from comsl_fairseq.inference.segment import SegmenterConfig
    from comsl_fairseq.inference.translator import SpeechTranslator

    device = "cpu" if args.cpu else args.device
    try:
        t = SpeechTranslator.from_pretrained(args.path, device=device, dtype=args.dtype, data=args.data,
                                             beam=args.beam, max_len_b=args.max_len_b, batch_size=args.batch_size)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if args.max_segment_seconds is not None:
        if not 0 < args.max_segment_seconds <= t.max_seconds:
            raise SystemExit(f"error: --max-segment-seconds must be in (0, {t.max_seconds:g}]")
        t.segmenter = SegmenterConfig(max_seconds=args.max_segment_seconds)
    return t


def translate_chunk(translator, args, run: Run, chunk: list, waves: list, bar) -> None:
    """Decode the readable items of a chunk together (languages may differ row by row)."""
    if not chunk:
        return
    try:
        results = translator.translate_batch(
            waves, [i.src_lang or args.src_lang for i in chunk], [i.tgt_lang or args.tgt_lang for i in chunk],
            task=args.task, segment=args.segment, names=[i.name for i in chunk], skip_errors=True)
        errors = dict(translator.errors)
    except RuntimeError as e:  # a decoding failure: retry one by one to find the culprit
        if len(chunk) > 1:
            for item, wav in zip(chunk, waves, strict=True):
                translate_chunk(translator, args, run, [item], [wav], bar)
            return
        results, errors = [None], {0: e}
    for k, (item, result) in enumerate(zip(chunk, results, strict=True)):
        if result is None:
            err = errors[k]
            run.fail(item.name, str(err), getattr(err, "reason", "decoding error"), bar)
        else:
            run.emit(item, result)
        bar.update(1)
