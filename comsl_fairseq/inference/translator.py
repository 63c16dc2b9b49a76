"""The Python API: load a model once, translate (or transcribe) files and arrays.

    from comsl_fairseq import SpeechTranslator
    t = SpeechTranslator.from_pretrained("exported_model/", device="cpu")
    print(t.translate("clip.wav", src_lang="fr").text)

Decoding is fairseq's own: the model and task come from
``checkpoint_utils.load_model_ensemble_and_task`` and every batch goes through the task's
``build_generator`` (a ``SequenceGenerator`` that forces the language tag as prefix and
strips tags from the output) and ``inference_step`` -- the path ``fairseq-generate`` takes,
so hypotheses are the same. Recordings longer than the model's window (30 s) are streamed
and cut into speech segments by :mod:`comsl_fairseq.inference.segment` and returned as timed
segments. Every input is first checked for speech (an input without any is refused rather than
decoded into invented text), and the languages asked for are checked against those the model
was trained on (:mod:`comsl_fairseq.inference.languages`).
"""
import json
import logging
import time
from argparse import Namespace
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from comsl_fairseq.data.audio import SAMPLE_RATE, AudioError, AudioSource
from comsl_fairseq.data.config import DataConfigNotFound
from comsl_fairseq.inference.languages import LanguageCheck, training_pairs
from comsl_fairseq.inference.segment import SegmenterConfig, array_blocks, cut_spans, map_speech
from comsl_fairseq.vocab.languages import mbart_tag, tag_symbol

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.pt"  # names inside an exported model folder (see export.py)
DATA_CONFIG_FILE = "config.yaml"
INFO_FILE = "model_info.json"
TASKS = ("st", "asr")
SEGMENT_MODES = ("auto", "always", "never")
DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}  # precision names of every tool
POOL_SAMPLES = 10 * 60 * SAMPLE_RATE  # pieces decoded together (sorted by length): at most 10 min of audio
POOL_BATCHES = 8  # ... or this many batches
# On the CPU, at most this much audio in one batch, counted as the encoder sees it: B x the
# longest piece, padding included (eight pieces padded to 16 s cost as much as 131 s of audio).
# Clips of a few seconds still go several at a time. On a GPU batch_size alone decides.
CPU_BATCH_SAMPLES = 30 * SAMPLE_RATE
# The CPU's pool holds what a few such batches need: every pooled piece is resident until its
# batch is decoded, and sorting a larger pool gains nothing when batches are this small.
CPU_POOL_SAMPLES = 4 * CPU_BATCH_SAMPLES
# A segment this long whose text has fewer characters per second than this is flagged: speech
# runs at 10-20 characters per second, so a few words for many seconds means text was lost.
FLAG_MIN_SECONDS = 4.0
FLAG_CHARS_PER_SECOND = 2.0
_NO_SAMPLES = np.zeros(0, np.float32)


@dataclass
class Hypothesis:
    """One beam-search result: detokenized text, its SentencePiece pieces (language tag and
    ``</s>`` removed) and fairseq's length-normalised log-probability (natural log)."""

    text: str
    tokens: list
    score: float


@dataclass
class Segment:
    """A stretch of the input, in seconds from its start, with its n-best hypotheses."""

    start: float
    end: float
    hypotheses: list
    flag: str = ""  # why its text looks incomplete (see implausibly_short), or ""

    @property
    def text(self) -> str:
        return self.hypotheses[0].text

    @property
    def tokens(self) -> list:
        return self.hypotheses[0].tokens

    @property
    def score(self) -> float:
        return self.hypotheses[0].score


@dataclass
class Translation:
    """The result for one input: ``text`` (segments joined by spaces), the timed
    ``segments`` (one for a clip decoded whole), audio length, the time spent finding
    speech segments and its share of beam search (seconds), and how many segments were cut
    from speech without a pause."""

    source: str
    text: str
    segments: list
    audio_seconds: float
    decode_seconds: float = 0.0
    segment_seconds: float = 0.0
    forced_cuts: int = 0

    @property
    def tokens(self) -> list:
        return [t for s in self.segments for t in s.tokens]

    @property
    def score(self) -> float:
        """Mean segment score (0.0 when no speech was found)."""
        return float(np.mean([s.score for s in self.segments])) if self.segments else 0.0

    def __str__(self) -> str:
        return self.text


@dataclass
class _Piece:
    """One stretch of one input, as decoded in a batch."""

    item: int
    start: int  # samples
    end: int
    wav: np.ndarray = field(repr=False)
    src_idx: int  # source tag (encoder input)
    prefix_idx: int  # forced first output token: the target tag (st) or the source tag (asr)
    hypotheses: list = field(default_factory=list)
    seconds: float = 0.0  # its share of decoding time


@dataclass
class _Plan:
    """One input on its way through decoding."""

    name: str
    seconds: float
    vad_seconds: float
    pieces: object = field(repr=False)  # iterator of (start, end, samples), streamed
    forced_cuts: int = 0
    pieces_listed: list = field(default_factory=list)
    complete: bool = False  # every piece listed


def implausibly_short(segment: Segment) -> str:
    """A note when a segment's text is far too short for its length (e.g. a few words for
    half a minute of speech: the decoder stopped early or skipped), else ""."""
    seconds = segment.end - segment.start
    chars = len("".join(segment.text.split()))
    if seconds >= FLAG_MIN_SECONDS and chars < FLAG_CHARS_PER_SECOND * seconds:
        return f"text implausibly short: {chars} characters for {seconds:.1f} s of speech"
    return ""


@contextmanager
def _without_onednn():
    """torch.backends.mkldnn disabled, and only that (its ``flags`` context also resets the
    other oneDNN settings, with a warning about GPUs on every call)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def length_batches(pieces: list, batch_size: int, max_padded_samples: int | None = None) -> list:
    """Pieces in batches, longest first: at most ``batch_size`` each and, when
    ``max_padded_samples`` is given, at most that many samples once padded to the batch's
    longest piece (B x longest: what the encoder runs over). A piece longer than the cap goes
    alone."""
    batches = [[]]
    for p in sorted(pieces, key=lambda p: -p.wav.size):
        batch = batches[-1]
        full = len(batch) == batch_size or (
            max_padded_samples is not None and batch and (len(batch) + 1) * batch[0].wav.size > max_padded_samples)
        if full:
            batches.append([])
        batches[-1].append(p)
    return [b for b in batches if b]


def recorded_pairs(folder: Path) -> dict | None:
    """The training language pairs an exported folder records (model_info.json), or None where
    it records none (a folder exported before they were recorded). A damaged file is an error:
    read as "no languages recorded", it would switch the language check off."""
    info = folder / INFO_FILE
    if not info.is_file():
        return None
    try:
        recorded = json.loads(info.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{info} is damaged ({e}); copy the model folder again or export it again "
                         "with comsl-export") from None
    try:
        return recorded["training_data"]["pairs"] or None
    except (KeyError, TypeError):
        return None


def resolve_device(device) -> torch.device:
    """``device`` (None: cuda when available, else cpu) as a torch.device that this machine has;
    errors say what to pass instead."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device name; use cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: this machine's torch sees no CUDA GPU; use cpu (--cpu)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    return resolved


class SpeechTranslator:
    """A loaded ComSL model with its dictionary, SentencePiece model and beam search.

    Build it with :meth:`from_pretrained`. ``translate`` takes one input, ``translate_batch``
    several; an input is a path (wav/flac/mp3/ogg, any rate, down-mixed and resampled) or a
    16 kHz mono float array (numpy or torch). ``task="st"`` translates into ``tgt_lang``;
    ``task="asr"`` transcribes in ``src_lang`` (the same model, the source tag forced).
    """

    def __init__(self, model, task, cfg, device: torch.device, dtype: str = "fp32", beam: int = 5,
                 nbest: int = 1, max_len_b: int = 200, batch_size: int = 8,
                 segmenter: SegmenterConfig | None = None, load_seconds: float = 0.0, source: str = "",
                 language_pairs: dict | None = None, allow_unseen_language: bool = False,
                 require_speech: bool = True):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if dtype == "fp16" and device.type != "cuda":
            raise ValueError("dtype fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
        if not 1 <= nbest <= beam:
            raise ValueError(f"need 1 <= nbest <= beam, got nbest={nbest}, beam={beam}")
        self.model, self.task, self.cfg = model, task, cfg
        self.device, self.dtype = device, dtype
        self.beam, self.nbest, self.max_len_b, self.batch_size = beam, nbest, max_len_b, batch_size
        self.load_seconds = load_seconds
        self.source = source
        self.dictionary = task.target_dictionary
        # Longest clip decoded whole: the data config's limit and the encoder's window (a model
        # trained with fixed padding, e.g. the paper's 11 s, would cut longer clips).
        window = model.encoder.max_positions() / SAMPLE_RATE
        if getattr(model.encoder, "pad_seconds", 0) > 0:
            window = min(window, model.encoder.pad_seconds)
        self.max_seconds = min(float(task.data_cfg.max_audio_seconds), window)
        self.min_seconds = float(task.data_cfg.min_audio_seconds)
        self.segmenter = segmenter or SegmenterConfig(max_seconds=self.max_seconds)
        if self.segmenter.max_seconds > self.max_seconds:
            raise ValueError(f"segments of {self.segmenter.max_seconds} s exceed the model's "
                             f"{self.max_seconds:g} s window")
        self.require_speech = require_speech
        self.languages = LanguageCheck(language_pairs, allow_unseen_language, f"model {source or 'in memory'}")
        self._generators = {}
        self.errors = {}  # input index -> AudioError of the last translate_batch(skip_errors=True)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path, device=None, dtype: str = "fp32", data=None, **kwargs) -> "SpeechTranslator":
        """Load an exported model folder (``comsl-export``) or a training checkpoint.

        ``device``: "cpu", "cuda", "cuda:1", ...; default CUDA when available. ``dtype``:
        "fp32", or "fp16" / "bf16" autocast (weights stay fp32). ``data``: for a training
        checkpoint only, its data folder if it moved since training. Other keyword arguments
        (beam, nbest, max_len_b, batch_size, segmenter, allow_unseen_language, require_speech) go
        to the constructor. The language pairs the model was trained on come from the folder's
        model_info.json, or from a checkpoint's training manifests.
        """
        from fairseq import checkpoint_utils

        path = Path(path)
        t0 = time.perf_counter()
        if path.is_dir():
            ckpt = path / WEIGHTS_FILE
            for need in (ckpt, path / DATA_CONFIG_FILE):
                if not need.is_file():
                    raise FileNotFoundError(f"{path} is not an exported model folder: {need.name} is missing "
                                            "(write one with comsl-export --path CKPT --out OUT/)")
            if data is not None:
                raise ValueError("data= applies to training checkpoints; an exported folder carries its files")
            overrides = {"data": str(path.resolve()), "config_yaml": DATA_CONFIG_FILE}
            pairs = recorded_pairs(path) or {}
        elif path.is_file():
            ckpt = path
            overrides = {"data": str(Path(data).resolve())} if data is not None else {}
            pairs = None
        else:
            raise FileNotFoundError(f"model {path} not found (an exported folder or a checkpoint .pt)")
        # Decoding needs neither validation BLEU nor the text-only MT setting of a training run, nor
        # its Whisper feature cache (new audio would only add entries to it).
        overrides.update(eval_bleu=False, text_only=False, decode_task="st", whisper_feature_cache=None)
        try:
            models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(ckpt)], arg_overrides=overrides)
        except (KeyError, TypeError, AttributeError) as e:  # fairseq looks up entries a foreign file lacks
            raise ValueError(f"{ckpt} is not a comsl_fairseq checkpoint written by fairseq-train "
                             f"({type(e).__name__}: {e})") from None
        except DataConfigNotFound as e:  # a training checkpoint whose data folder moved or is elsewhere
            raise DataConfigNotFound(
                f"{ckpt} was trained with the data config {e.path}, which is not there; pass --data (data= in "
                "Python) with the training data folder (it holds config.yaml, dict.txt and sentence.bpe.model), "
                "or use a folder written by comsl-export", e.path) from None
        if pairs is None:
            pairs = training_pairs(cfg, data)
        device = resolve_device(device)
        model = models[0].to(device).eval()
        load_seconds = time.perf_counter() - t0
        logger.info("loaded %s in %.2f s (%s, %s)", path, load_seconds, device, dtype)
        return cls(model, task, cfg, device, dtype=dtype, load_seconds=load_seconds, source=str(path),
                   language_pairs=pairs, **kwargs)

    # --------------------------------------------------------------- languages
    def check_languages(self, src_lang: str, tgt_lang: str | None) -> None:
        """Raise UnseenLanguageError for a pair the model was not trained on (``tgt_lang`` None:
        transcription); see :class:`~comsl_fairseq.inference.languages.LanguageCheck`."""
        self.languages.check(src_lang, tgt_lang)

    def tag_index(self, code: str) -> int:
        """Dictionary index of a language code's tag (``fr``, ``zh-CN``, ``fr_XX``)."""
        try:
            return self.dictionary.index(tag_symbol(mbart_tag(code)))
        except KeyError as e:
            raise ValueError(e.args[0]) from None

    def generator(self, beam: int | None = None):
        """The task's SequenceGenerator (tag forced as prefix, tags stripped), cached. It
        returns ``beam`` hypotheses per input, best first; callers keep the n best."""
        beam = beam or self.beam
        if beam not in self._generators:
            args = Namespace(beam=beam, max_len_b=self.max_len_b, prefix_size=1)
            self._generators[beam] = self.task.build_generator([self.model], args)
        return self._generators[beam]

    # -------------------------------------------------------------------- audio
    def open_audio(self, item, sample_rate: int = SAMPLE_RATE) -> tuple:
        """(name, source) of an input: a path or :class:`AudioSource` (read lazily, streamed when
        long) or a 16 kHz mono array in memory (numpy or torch; float in [-1, 1], or integer PCM
        such as int16, scaled by its full range). Raises AudioError."""
        if isinstance(item, AudioSource):
            return item.field, item
        if isinstance(item, (str, Path)):
            return str(item), AudioSource(str(Path(item).resolve()))
        wav = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
        if wav.ndim != 1:
            raise AudioError(f"an audio array must be 1-D (mono samples), got shape {wav.shape}", "bad array")
        if np.issubdtype(wav.dtype, np.integer):  # PCM samples (int16 from a WAV): scaled to [-1, 1)
            bits = np.iinfo(wav.dtype).bits
            offset = 2 ** (bits - 1) if np.issubdtype(wav.dtype, np.unsignedinteger) else 0
            wav = (wav.astype(np.float64) - offset) / 2 ** (bits - 1)
        elif not np.issubdtype(wav.dtype, np.floating):
            raise AudioError(f"an audio array must hold float or integer PCM samples, not {wav.dtype}", "bad array")
        wav = wav.astype(np.float32)
        if sample_rate != SAMPLE_RATE:
            import soxr

            wav = soxr.resample(wav, sample_rate, SAMPLE_RATE).astype(np.float32)
        if wav.size == 0 or not np.isfinite(wav).all():
            raise AudioError("an audio array is empty or has NaN/infinite samples", "bad array")
        return "<array>", np.ascontiguousarray(wav)

    def load_audio(self, item, sample_rate: int = SAMPLE_RATE) -> tuple:
        """(name, 16 kHz mono float32 waveform) of a path or an array, read whole. Raises AudioError."""
        name, source = self.open_audio(item, sample_rate)
        return name, source.read() if isinstance(source, AudioSource) else source

    def plan(self, name: str, source, segment: str = "auto") -> "_Plan":
        """What to decode of one input: the whole clip when it fits the window (``auto``),
        speech segments otherwise or with ``always``. Voice-activity detection runs on every
        input unless ``require_speech`` is off: one without speech raises AudioError
        ("no speech") instead of being decoded into invented text."""
        if segment not in SEGMENT_MODES:
            raise ValueError(f"segment must be one of {SEGMENT_MODES}, got {segment!r}")
        in_memory = not isinstance(source, AudioSource)
        seconds = source.size / SAMPLE_RATE if in_memory else source.seconds
        blocks = (lambda: array_blocks(source)) if in_memory else source.blocks
        if segment == "never" and seconds > self.max_seconds:
            raise AudioError(f"{name}: {seconds:.1f} s is longer than the model's {self.max_seconds:g} s "
                             "window; segment it (segment='auto')", "audio too long")
        whole = segment == "never" or (segment == "auto" and seconds <= self.max_seconds)
        if whole:
            wav = source if in_memory else source.read()
            if wav.size / SAMPLE_RATE < self.min_seconds:
                raise AudioError(f"{name}: {wav.size / SAMPLE_RATE:.3f} s is shorter than {self.min_seconds:g} s",
                                 "audio too short")
            blocks = lambda: array_blocks(wav)  # noqa: E731
        t0 = time.perf_counter()
        speech = map_speech(blocks(), self.segmenter) if (self.require_speech or not whole) else None
        vad_seconds = time.perf_counter() - t0 if speech is not None else 0.0
        if speech is not None and not speech.spans and self.require_speech:
            raise AudioError(f"{name}: no speech found by voice-activity detection in {seconds:.1f} s; nothing "
                             "to translate (require_speech=False / --keep-no-speech decodes it anyway)", "no speech")
        if whole:
            pieces = iter([(0, wav.size, wav)])
        else:
            pieces = cut_spans(blocks(), speech.spans)
        return _Plan(name, seconds, vad_seconds, pieces, speech.forced_cuts if speech is not None and not whole else 0)

    # ---------------------------------------------------------------- decoding
    def translate(self, audio, src_lang: str, tgt_lang: str = "en", task: str = "st", **kwargs) -> Translation:
        """Translate (``task="st"``) or transcribe (``"asr"``) one input; see translate_batch."""
        return self.translate_batch([audio], src_lang, tgt_lang, task, **kwargs)[0]

    def translate_batch(self, inputs, src_lang, tgt_lang="en", task: str = "st", skip_errors: bool = False,
                        **kwargs) -> list:
        """One :class:`Translation` per input, in order (see :meth:`iter_translate`). An
        unusable input raises AudioError naming it; with ``skip_errors`` its result is None
        and the reason is in ``self.errors[i]`` instead."""
        results, self.errors = [None] * len(inputs), {}
        for i, result in self.iter_translate(inputs, src_lang, tgt_lang, task, **kwargs):
            if isinstance(result, Exception):
                if not skip_errors:
                    raise result
                self.errors[i] = result
            else:
                results[i] = result
        return results

    def iter_translate(self, inputs, src_lang, tgt_lang="en", task: str = "st", segment: str = "auto",
                       beam: int | None = None, nbest: int | None = None, sample_rate: int = SAMPLE_RATE,
                       names=None):
        """Yield ``(index, Translation)`` for each input as soon as it is decoded, or ``(index,
        AudioError)`` for one that cannot be used. ``src_lang`` / ``tgt_lang``: one code for all
        inputs or a list with one per input (a batch may mix languages, as in fairseq-generate).
        Clips and segments of long recordings are pooled (bounded in memory; long recordings are
        streamed) and decoded ``batch_size`` at a time, longest first."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        n = len(inputs)
        srcs = [src_lang] * n if isinstance(src_lang, str) else list(src_lang)
        tgts = [tgt_lang] * n if isinstance(tgt_lang, str) else list(tgt_lang)
        if len(srcs) != n or len(tgts) != n:
            raise ValueError(f"{n} inputs but {len(srcs)} source and {len(tgts)} target languages")
        for src, tgt in sorted(set(zip(srcs, tgts, strict=True))):
            self.check_languages(src, tgt if task == "st" else None)
        nbest = nbest or self.nbest
        if not 1 <= nbest <= (beam or self.beam):
            raise ValueError(f"need 1 <= nbest <= beam, got nbest={nbest}, beam={beam or self.beam}")
        generator = self.generator(beam)
        plans, pool = {}, []
        pool_samples = CPU_POOL_SAMPLES if self.device.type == "cpu" else POOL_SAMPLES
        for i, item in enumerate(inputs):
            src_idx = self.tag_index(srcs[i])
            prefix_idx = src_idx if task == "asr" else self.tag_index(tgts[i])
            try:
                name, source = self.open_audio(item, sample_rate)
                plans[i] = plan = self.plan(names[i] if names is not None else name, source, segment)
                for start, end, wav in plan.pieces:
                    pool.append(_Piece(i, start, end, wav, src_idx, prefix_idx))
                    plan.pieces_listed.append(pool[-1])
                    if sum(p.wav.size for p in pool) >= pool_samples or len(pool) >= POOL_BATCHES * self.batch_size:
                        yield from self._flush(pool, plans, generator, nbest)
                        if i not in plans:  # its pieces failed to decode (already reported)
                            break
            except AudioError as e:
                plans.pop(i, None)
                pool[:] = [p for p in pool if p.item != i]
                yield i, e
                continue
            if i in plans:
                plan.complete = True
                yield from self._finished(plans)
        yield from self._flush(pool, plans, generator, nbest)

    def _flush(self, pool: list, plans: dict, generator, nbest: int):
        """Decode the pooled pieces in the batches of :func:`length_batches`; after each batch,
        yield the inputs it finished (so that an interruption loses at most one batch). A batch
        that fails is retried piece by piece; an input whose piece still fails is yielded with
        an AudioError ("decoding error")."""
        cap = CPU_BATCH_SAMPLES if self.device.type == "cpu" else None
        batches = length_batches(pool, self.batch_size, cap)
        pool.clear()
        for batch in batches:
            batch = [p for p in batch if p.item in plans]
            if not batch:
                continue
            try:
                self._decode_batch(batch, generator, nbest)
            except RuntimeError:
                for p in batch:
                    try:
                        self._decode_batch([p], generator, nbest)
                    except RuntimeError as e:
                        if plans.pop(p.item, None) is not None:
                            yield p.item, AudioError(f"decoding failed: {e}", "decoding error")
            yield from self._finished(plans)

    def _finished(self, plans: dict):
        for i in [i for i, p in plans.items() if p.complete and all(x.hypotheses for x in p.pieces_listed)]:
            plan = plans.pop(i)
            segments = [Segment(p.start / SAMPLE_RATE, p.end / SAMPLE_RATE, p.hypotheses) for p in plan.pieces_listed]
            for seg in segments:
                seg.flag = implausibly_short(seg)
            text = " ".join(s.text for s in segments if s.text)
            yield i, Translation(plan.name, text, segments, plan.seconds, sum(p.seconds for p in plan.pieces_listed),
                                 plan.vad_seconds, plan.forced_cuts)

    def _decode_batch(self, batch: list, generator, nbest: int) -> None:
        t0 = time.perf_counter()
        out = self._generate(batch, generator)
        elapsed = time.perf_counter() - t0
        total = sum(p.wav.size for p in batch)
        for p, hyps in zip(batch, out, strict=True):
            p.hypotheses = [self._hypothesis(h) for h in hyps[:nbest]]
            p.seconds = elapsed * p.wav.size / total
            p.wav = _NO_SAMPLES  # decoded: its samples are freed (a view such as wav[:0] would keep them)

    def _generate(self, batch: list, generator) -> list:
        """Beam search on a batch of pieces, exactly as fairseq-generate runs it: the
        zero-padded B x S waveform, lengths and source tags as net_input, the tag as prefix."""
        waves = [p.wav for p in batch]
        lengths = torch.tensor([w.size for w in waves])
        audio = torch.zeros(len(waves), int(lengths.max()))  # B x S
        for i, w in enumerate(waves):
            audio[i, : w.size] = torch.from_numpy(w)
        dev = self.device
        sample = {"net_input": {"src_tokens": audio.to(dev), "src_lengths": lengths.to(dev),
                                "src_lang_tags": torch.tensor([p.src_idx for p in batch], device=dev)}}
        prefix = torch.tensor([[p.prefix_idx] for p in batch], device=dev)  # B x 1
        autocast = (torch.autocast(dev.type, dtype=DTYPES[self.dtype]) if DTYPES[self.dtype] is not None
                    else nullcontext())
        # On the CPU, oneDNN compiles and caches a convolution kernel for every new input shape;
        # segments of a long recording nearly all differ in length, so its cache (up to 1024
        # kernels, ~0.25 MB each) grew with the recording. torch's own convolution has no such cache.
        with torch.no_grad(), autocast, _without_onednn() if dev.type == "cpu" else nullcontext():
            return self.task.inference_step(generator, [self.model], sample, prefix_tokens=prefix)

    def _hypothesis(self, hypo: dict) -> Hypothesis:
        pieces = self.dictionary.string(hypo["tokens"].int().cpu(), extra_symbols_to_ignore=self.task.tag_ids)
        return Hypothesis(self.task.decode_tokens(hypo["tokens"]), pieces.split(), float(hypo["score"]))
