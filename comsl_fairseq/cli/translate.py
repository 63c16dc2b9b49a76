"""``comsl-translate``: translate (or transcribe) audio files, folders and manifests.

    comsl-translate --path MODEL INPUTS... --src-lang fr [--task st|asr] [--format txt|jsonl|srt|vtt]

MODEL is an exported model folder (``comsl-export``) or a training checkpoint.
Without ``--out`` results go to standard output (txt: ``name<TAB>text`` per input;
jsonl: one object per segment; srt/vtt: one input only); with it, one file per input.
A file, folder entry or manifest row that cannot be used (unreadable, no speech, a language
the model was not trained on, ...) is named on standard error with its reason and skipped;
the exit status is non-zero only when nothing was translated (130 after Ctrl-C, which keeps
the files already written). The closing lines count what was skipped and why, and give
start-up time (imports, model load), decoding time, real-time factor and throughput.
"""
import argparse
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

from comsl_fairseq.cli.command import argument_parser, command, output_arg, positive_int
from comsl_fairseq.inference.inputs import Problem
from comsl_fairseq.inference.subtitles import FORMATS, WRITERS, timestamp
from comsl_fairseq.inference.translator import DTYPES

logger = logging.getLogger(__name__)

SOURCES_FILE = "sources.tsv"  # in --out: output file, source, manifest id
MIN_SEGMENT_SECONDS = 1.0  # the shortest --max-segment-seconds


def tsv_field(text: str) -> str:
    """``text`` as one sources.tsv field: backslash, tab, newline and carriage return written as
    ``\\\\``, ``\\t``, ``\\n``, ``\\r`` (file names may hold any of them), so every row keeps its 3 fields."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def build_parser() -> argparse.ArgumentParser:
    p = argument_parser(prog="comsl-translate", description=__doc__.split("\n\n")[0])
    p.add_argument("--path", required=True, help="exported model folder, or a training checkpoint (.pt)")
    p.add_argument("inputs", nargs="+", help="audio files, folders (searched recursively) or manifest .tsv files")
    p.add_argument("--src-lang", help="source language (CoVoST or mBART-50 code, e.g. fr); manifests with a "
                                      "src_lang column may omit it")
    p.add_argument("--tgt-lang", default="en", help="target language for --task st (default: en)")
    p.add_argument("--task", choices=("st", "asr"), default="st", help="st: translate; asr: transcribe")
    p.add_argument("--format", choices=FORMATS, default="txt", help="output format (default: txt)")
    p.add_argument("--out", type=output_arg, help="write OUT/<name>.<format> per input, each file whole when it is "
                                            "done; OUT/sources.tsv maps them to their inputs (names are made "
                                            "safe: no folders, no '..')")
    p.add_argument("--segment", choices=("auto", "always", "never"), default="auto",
                   help="auto: cut only recordings longer than the model's window into speech segments; "
                        "always: segment every input (finer subtitles); never: refuse long recordings")
    p.add_argument("--max-segment-seconds", type=float, help="longest segment (default: the model's window)")
    p.add_argument("--beam", type=positive_int, default=5, help="beam size (default: 5)")
    p.add_argument("--max-len-b", type=positive_int, default=200, help="maximum output length in tokens")
    p.add_argument("--batch-size", type=positive_int, default=8, help="clips or segments decoded together")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--cpu", action="store_true", help="same as --device cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32",
                   help="autocast precision (fp16 needs CUDA)")
    p.add_argument("--data", help="for a training checkpoint: its data folder, if it moved since training")
    p.add_argument("--allow-unseen-language", action="store_true",
                   help="translate from or into languages the model was not trained on (refused by default; "
                        "then warned once)")
    p.add_argument("--keep-no-speech", action="store_true",
                   help="decode inputs in which voice-activity detection finds no speech (skipped as 'no "
                        "speech' by default: a model decodes silence or noise into invented text)")
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

    MAX_FLAG_LINES = 10  # flagged segments named on standard error; the rest are counted

    def __init__(self, args, n_items: int, stems: dict | None = None):
        self.args, self.n_items, self.stems = args, n_items, stems or {}
        self.failed = Counter()
        self.done = self.segments = self.forced_cuts = self.flagged = 0
        self.audio_seconds = self.decode_seconds = self.segment_seconds = 0.0
        self.written = []  # (output file name, source name, manifest id) in the order written
        self.interrupted = False

    def fail(self, name: str, reason: str, category: str, bar=None) -> None:
        self.failed[category] += 1
        (bar.write if bar is not None else print)(f"skipped {name}: {reason}", file=sys.stderr)

    def emit(self, index: int, item, result, bar=None) -> None:
        self.segments += len(result.segments)
        self.audio_seconds += result.audio_seconds
        self.decode_seconds += result.decode_seconds
        self.segment_seconds += result.segment_seconds
        self.forced_cuts += result.forced_cuts
        for seg in result.segments:
            if seg.flag:
                self.flagged += 1
                if self.flagged <= self.MAX_FLAG_LINES:
                    (bar.write if bar is not None else print)(
                        f"warning: {item.name} {timestamp(seg.start, '.')}-{timestamp(seg.end, '.')}: {seg.flag}",
                        file=sys.stderr)
        fmt = self.args.format
        extra = {"task": self.args.task, "src_lang": item.src_lang or self.args.src_lang}
        if item.uid is not None:
            extra["id"] = item.uid
        text = WRITERS[fmt](item.name, result.segments, **(extra if fmt == "jsonl" else {}))
        if self.args.out is None:
            sys.stdout.write(f"{item.name}\t{result.text}\n" if fmt == "txt" else text)
            sys.stdout.flush()
        else:
            name = f"{self.stems[index]}.{fmt}"
            write_atomic(self.args.out / name, text)
            self.written.append((name, item.name, item.uid or ""))
        self.done += 1

    def write_sources(self) -> None:
        """OUT/sources.tsv: which input each output file holds (ids can differ from file names)."""
        if self.args.out is None or not self.written:
            return
        path = self.args.out / SOURCES_FILE
        rows = {}
        if path.is_file():  # an earlier run into the same folder: its rows stay unless overwritten
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
                rows[line.split("\t", 1)[0]] = line
        rows.update((out, "\t".join(map(tsv_field, (out, src, uid)))) for out, src, uid in self.written)
        write_atomic(path, "output\tsource\tid\n" + "".join(f"{r}\n" for r in rows.values()))

    def summary(self, imports: float | None, load: float, device) -> None:
        failed = sum(self.failed.values())
        reasons = ", ".join(f"{n} {why}" for why, n in self.failed.most_common())
        lines = [f"translated {self.done} of {self.n_items} input(s)"
                 + (f"; {failed} skipped ({reasons})" if failed else "")
                 + f"; {self.segments} segment(s), {self.audio_seconds:.1f} s of audio"]
        if self.interrupted:
            lines.insert(0, f"interrupted: the {self.done} translation(s) finished are kept"
                            + (f" in {self.args.out}" if self.args.out is not None else ""))
        if self.forced_cuts:
            lines.append(f"{self.forced_cuts} segment(s) cut inside speech without a pause (at its quietest "
                         "point): check their edges")
        if self.flagged:
            lines.append(f"{self.flagged} segment(s) flagged: text implausibly short for their length (words may be "
                         "missing; jsonl output marks them in 'flag')")
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


def write_atomic(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a temporary file beside it, then a rename)."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def fix_mmap_threshold() -> None:
    """glibc raises its mmap threshold after the first large block is freed; from then on audio
    blocks and batch tensors come from the heap, which fragments, and the resident size creeps
    up with the recording's length. A fixed threshold (128 KiB, glibc's initial one) keeps them
    mapped, so what is freed goes back to the system. No-op outside glibc."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


# Shared libraries loaded by an import but never run while translating: numba's LLVM (openai-whisper
# imports numba for word timestamps, which decoding does not use). Loading it runs its static
# constructors, which page in most of its code (about 95 MB on Linux).
IDLE_LIBRARIES = ("libllvmlite",)


def release_idle_library_pages(names=IDLE_LIBRARIES) -> int:
    """Drop the resident pages of the read-only mappings of the shared libraries ``names``
    (madvise MADV_DONTNEED) and return how many bytes were resident. Only mappings holding no
    private copy of a page (smaps ``Anonymous: 0`` and ``Swap: 0``) are touched: their pages are the file's own
    and come back from it, unchanged, if the library ever runs again. No-op outside Linux."""
    import ctypes
    import mmap

    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None:
        return 0
    try:
        # paths are bytes to the kernel: any that are not UTF-8 are kept as surrogates
        with open("/proc/self/smaps", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
        madvise = ctypes.CDLL(None).madvise
    except (OSError, AttributeError, TypeError, ValueError):
        return 0
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    maps, current = [], None
    for line in lines:
        fields = line.split(maxsplit=5)  # the path (6th field) may hold spaces
        if fields and "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header line
            current = {"range": fields[0], "perms": fields[1], "path": fields[5] if len(fields) > 5 else ""}
            maps.append(current)
        elif current is not None and len(fields) >= 2 and fields[0] in ("Rss:", "Anonymous:", "Swap:"):
            current[fields[0]] = int(fields[1].split()[0]) * 1024
    released = 0
    for m in maps:
        # no private page in memory (Anonymous) or swapped out (Swap): a relocated page would be lost
        if (any(n in Path(m["path"]).name for n in names) and "w" not in m["perms"]
                and m.get("Anonymous:", 1) == 0 and m.get("Swap:", 1) == 0 and m.get("Rss:", 0) > 0):
            start, end = (int(x, 16) for x in m["range"].split("-"))
            if madvise(start, end - start, advice) == 0:
                released += m["Rss:"]
    return released


@command
def main(argv=None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    fix_mmap_threshold()
    release_idle_library_pages()  # the imports are done (this module's): see IDLE_LIBRARIES
    imports = process_age()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.WARNING)  # fairseq's import may have set INFO
    from comsl_fairseq.inference.inputs import assign_outputs, collect
    from comsl_fairseq.inference.languages import UnseenLanguageError
    from comsl_fairseq.vocab.languages import mbart_tag

    for code in (args.src_lang, args.tgt_lang):
        if code is not None:
            try:
                mbart_tag(code)
            except KeyError as e:
                raise ValueError(e.args[0]) from None
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file; --out names the folder that receives one file per input")
    items, problems = collect(args.inputs)
    if args.format in ("srt", "vtt") and args.out is None and len(items) > 1:
        raise ValueError(f"--format {args.format} with {len(items)} inputs needs --out")
    if any((i.src_lang or args.src_lang) is None for i in items):
        raise ValueError("--src-lang is required (only manifests with a src_lang column may omit it)")

    translator = load_translator(args)
    tgt = None if args.task == "asr" else args.tgt_lang
    if args.src_lang is not None:
        translator.check_languages(args.src_lang, tgt)  # refused: one line (see cli.command)
    usable = []
    for item in items:  # row languages of manifests: an untrained pair skips the row, not the run
        try:
            translator.check_languages(item.src_lang or args.src_lang, None if tgt is None else item.tgt_lang or tgt)
            usable.append(item)
        except UnseenLanguageError as e:
            problems.append(Problem(item.name, str(e), "language not trained"))
    items = usable
    run = Run(args, len(items) + len(problems), assign_outputs(items))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    for p in problems:
        run.fail(p.name, p.reason, p.category)
    decode_all(translator, args, items, run)
    run.summary(imports, translator.load_seconds, translator.device)
    if run.interrupted:
        return 130
    return 0 if run.done else 1



def decode_all(translator, args, items: list, run: Run) -> None:
    """Translate ``items``, writing or printing each as it finishes; Ctrl-C keeps what is done."""
    from tqdm import tqdm

    from comsl_fairseq.data.audio import AudioSource

    bar = tqdm(total=len(items), unit="file", disable=True if args.no_progress else None, file=sys.stderr)
    finished, waiting, next_k = set(), {}, 0
    try:
        results = translator.iter_translate(
            [AudioSource(i.field, i.root) for i in items], [i.src_lang or args.src_lang for i in items],
            [i.tgt_lang or args.tgt_lang for i in items], task=args.task, segment=args.segment,
            names=[i.name for i in items])
        # Inputs finish out of order (decoding is sorted by length): files are written at once,
        # standard output keeps the input order.
        for k, result in results:
            finished.add(k)
            if isinstance(result, Exception):
                run.fail(items[k].name, str(result), getattr(result, "reason", "decoding error"), bar)
            elif args.out is not None:
                run.emit(k, items[k], result, bar)
            else:
                waiting[k] = result
            while next_k in finished:
                if next_k in waiting:
                    run.emit(next_k, items[next_k], waiting.pop(next_k), bar)
                next_k += 1
            bar.update(1)
    except KeyboardInterrupt:
        run.interrupted = True
        for k in sorted(waiting):  # finished, held back only for the order
            run.emit(k, items[k], waiting[k], bar)
    finally:
        bar.close()
        run.write_sources()


def load_translator(args):
    from comsl_fairseq.inference.segment import SegmenterConfig
    from comsl_fairseq.inference.translator import SpeechTranslator

    device = "cpu" if args.cpu else args.device
    t = SpeechTranslator.from_pretrained(args.path, device=device, dtype=args.dtype, data=args.data,
                                         beam=args.beam, max_len_b=args.max_len_b, batch_size=args.batch_size,
                                         allow_unseen_language=args.allow_unseen_language,
                                         require_speech=not args.keep_no_speech)
    if args.max_segment_seconds is not None:
        if not MIN_SEGMENT_SECONDS <= args.max_segment_seconds <= t.max_seconds:
            raise ValueError(f"--max-segment-seconds must be in [{MIN_SEGMENT_SECONDS:g}, {t.max_seconds:g}] "
                             "(shorter pieces hold a fraction of a word, which a model decodes into invented text)")
        t.segmenter = SegmenterConfig(max_seconds=args.max_segment_seconds)
    return t
