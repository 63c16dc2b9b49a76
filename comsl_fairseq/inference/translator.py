"""The Python API: load a model once, translate (or transcribe) files and arrays.

    from comsl_fairseq import SpeechTranslator
    t = SpeechTranslator.from_pretrained("exported_model/", device="cpu")
    print(t.translate("clip.wav", src_lang="fr").text)

Decoding is fairseq's own: the model and task come from
``checkpoint_utils.load_model_ensemble_and_task`` and every batch goes through the task's
``build_generator`` (a ``SequenceGenerator`` that forces the language tag as prefix and
strips tags from the output) and ``inference_step`` -- the path ``fairseq-generate`` takes,
so hypotheses are the same. Recordings longer than the model's window (30 s) are cut into
speech segments by :mod:`comsl_fairseq.inference.segment` and returned as timed segments.
"""
import logging
import time
from argparse import Namespace
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from comsl_fairseq.data.audio import SAMPLE_RATE, AudioError, read_audio
from comsl_fairseq.data.languages import mbart_tag, tag_symbol
from comsl_fairseq.inference.segment import SegmenterConfig, speech_segments

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.pt"  # names inside an exported model folder (see export.py)
DATA_CONFIG_FILE = "config.yaml"
TASKS = ("st", "asr")
SEGMENT_MODES = ("auto", "always", "never")
DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


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
    speech segments (0 for a clip decoded whole) and its share of beam search (seconds)."""

    source: str
    text: str
    segments: list
    audio_seconds: float
    decode_seconds: float = 0.0
    segment_seconds: float = 0.0

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


class SpeechTranslator:
    """A loaded ComSL model with its dictionary, SentencePiece model and beam search.

    Build it with :meth:`from_pretrained`. ``translate`` takes one input, ``translate_batch``
    several; an input is a path (wav/flac/mp3/ogg, any rate, down-mixed and resampled) or a
    16 kHz mono float array (numpy or torch). ``task="st"`` translates into ``tgt_lang``;
    ``task="asr"`` transcribes in ``src_lang`` (the same model, the source tag forced).
    """

    def __init__(self, model, task, cfg, device: torch.device, dtype: str = "fp32", beam: int = 5,
                 nbest: int = 1, max_len_b: int = 200, batch_size: int = 8,
                 segmenter: SegmenterConfig | None = None, load_seconds: float = 0.0, source: str = ""):
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
        self._generators = {}
        self.errors = {}  # input index -> AudioError of the last translate_batch(skip_errors=True)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path, device=None, dtype: str = "fp32", data=None, **kwargs) -> "SpeechTranslator":
        """Load an exported model folder (``scripts/export_model.py``) or a training checkpoint.

        ``device``: "cpu", "cuda", "cuda:1", ...; default CUDA when available. ``dtype``:
        "fp32", or "fp16" / "bf16" autocast (weights stay fp32). ``data``: for a training
        checkpoint only, its data folder if it moved since training. Other keyword arguments
        (beam, nbest, max_len_b, batch_size, segmenter) go to the constructor.
        """
        from fairseq import checkpoint_utils

        path = Path(path)
        t0 = time.perf_counter()
        if path.is_dir():
            ckpt = path / WEIGHTS_FILE
            for need in (ckpt, path / DATA_CONFIG_FILE):
                if not need.is_file():
                    raise FileNotFoundError(f"{path} is not an exported model folder: {need.name} is missing "
                                            "(write one with scripts/export_model.py CKPT OUT/)")
            if data is not None:
                raise ValueError("data= applies to training checkpoints; an exported folder carries its files")
            overrides = {"data": str(path.resolve()), "config_yaml": DATA_CONFIG_FILE}
        elif path.is_file():
            ckpt = path
            overrides = {"data": str(Path(data).resolve())} if data is not None else {}
        else:
            raise FileNotFoundError(f"model {path} not found (an exported folder or a checkpoint .pt)")
        # Decoding needs neither validation BLEU nor the text-only MT setting of a training run, nor
        # its Whisper feature cache (new audio would only add entries to it).
        overrides.update(eval_bleu=False, text_only=False, decode_task="st", whisper_feature_cache=None)
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(ckpt)], arg_overrides=overrides)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        model = models[0].to(device).eval()
        load_seconds = time.perf_counter() - t0
        logger.info("loaded %s in %.2f s (%s, %s)", path, load_seconds, device, dtype)
        return cls(model, task, cfg, device, dtype=dtype, load_seconds=load_seconds, source=str(path), **kwargs)

    # --------------------------------------------------------------- languages
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
    def load_audio(self, item, sample_rate: int = SAMPLE_RATE) -> tuple:
        """(name, 16 kHz mono float32 waveform) of a path or an array. Raises AudioError."""
        if isinstance(item, (str, Path)):
            return str(item), read_audio(str(Path(item).resolve()), Path("/"))[0]
        wav = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
        if wav.ndim != 1:
            raise AudioError(f"an audio array must be 1-D (mono samples), got shape {wav.shape}", "bad array")
        wav = wav.astype(np.float32)
        if sample_rate != SAMPLE_RATE:
            import soxr

            wav = soxr.resample(wav, sample_rate, SAMPLE_RATE).astype(np.float32)
        if wav.size == 0 or not np.isfinite(wav).all():
            raise AudioError("an audio array is empty or has NaN/infinite samples", "bad array")
        return "<array>", np.ascontiguousarray(wav)

    def plan(self, name: str, wav: np.ndarray, segment: str = "auto") -> list:
        """([(start, end)] sample ranges to decode, seconds spent on voice-activity detection):
        the whole clip when it fits the window (``auto``), speech segments otherwise or with
        ``always``."""
        if segment not in SEGMENT_MODES:
            raise ValueError(f"segment must be one of {SEGMENT_MODES}, got {segment!r}")
        seconds = wav.size / SAMPLE_RATE
        if segment == "always" or (segment == "auto" and seconds > self.max_seconds):
            t0 = time.perf_counter()
            spans = speech_segments(wav, self.segmenter)
            return spans, time.perf_counter() - t0
        if seconds > self.max_seconds:
            raise AudioError(f"{name}: {seconds:.1f} s is longer than the model's {self.max_seconds:g} s "
                             "window; segment it (segment='auto')", "audio too long")
        if seconds < self.min_seconds:
            raise AudioError(f"{name}: {seconds:.3f} s is shorter than {self.min_seconds:g} s", "audio too short")
        return [(0, wav.size)], 0.0

    # ---------------------------------------------------------------- decoding
    def translate(self, audio, src_lang: str, tgt_lang: str = "en", task: str = "st", **kwargs) -> Translation:
        """Translate (``task="st"``) or transcribe (``"asr"``) one input; see translate_batch."""
        return self.translate_batch([audio], src_lang, tgt_lang, task, **kwargs)[0]

    def translate_batch(self, inputs, src_lang, tgt_lang="en", task: str = "st",
                        segment: str = "auto", beam: int | None = None, nbest: int | None = None,
                        sample_rate: int = SAMPLE_RATE, names=None, skip_errors: bool = False) -> list:
        """One :class:`Translation` per input, in order. ``src_lang`` / ``tgt_lang``: one code
        for all inputs or a list with one per input (a batch may mix languages, as in
        fairseq-generate). Clips (and segments of long recordings) are decoded
        ``batch_size`` at a time, longest first. An unusable input
        raises AudioError naming it before anything is decoded; with ``skip_errors`` its
        result is None and the reason is in ``self.errors[i]`` instead."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        n = len(inputs)
        srcs = [src_lang] * n if isinstance(src_lang, str) else list(src_lang)
        tgts = [tgt_lang] * n if isinstance(tgt_lang, str) else list(tgt_lang)
        if len(srcs) != n or len(tgts) != n:
            raise ValueError(f"{n} inputs but {len(srcs)} source and {len(tgts)} target languages")
        src_ids = [self.tag_index(c) for c in srcs]
        prefix_ids = src_ids if task == "asr" else [self.tag_index(c) for c in tgts]
        self.errors = {}
        prepared, pieces = {}, []
        for i, item in enumerate(inputs):
            try:
                name, wav = self.load_audio(item, sample_rate)
                name = names[i] if names is not None else name
                spans, vad_seconds = self.plan(name, wav, segment)
            except AudioError as e:
                if not skip_errors:
                    raise
                self.errors[i] = e
                continue
            prepared[i] = (name, wav.size / SAMPLE_RATE, vad_seconds)
            pieces += [_Piece(i, s, e, wav[s:e], src_ids[i], prefix_ids[i]) for s, e in spans]
        nbest = nbest or self.nbest
        if not 1 <= nbest <= (beam or self.beam):
            raise ValueError(f"need 1 <= nbest <= beam, got nbest={nbest}, beam={beam or self.beam}")
        spent = self._decode(pieces, self.generator(beam), nbest)
        results = [None] * len(inputs)
        for i, (name, seconds, vad_seconds) in prepared.items():
            own = [p for p in pieces if p.item == i]
            segments = [Segment(p.start / SAMPLE_RATE, p.end / SAMPLE_RATE, p.hypotheses) for p in own]
            text = " ".join(s.text for s in segments if s.text)
            results[i] = Translation(name, text, segments, seconds, sum(spent[id(p)] for p in own), vad_seconds)
        return results

    def _decode(self, pieces: list, generator, nbest: int) -> dict:
        """Fill each piece's hypotheses; returns {id(piece): its share of decoding seconds}."""
        spent = {}
        order = sorted(pieces, key=lambda p: -p.wav.size)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            t0 = time.perf_counter()
            out = self._generate(batch, generator)
            elapsed = time.perf_counter() - t0
            total = sum(p.wav.size for p in batch)
            for p, hyps in zip(batch, out, strict=True):
                p.hypotheses = [self._hypothesis(h) for h in hyps[:nbest]]
                spent[id(p)] = elapsed * p.wav.size / total
        return spent

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
        with torch.no_grad(), autocast:
            return self.task.inference_step(generator, [self.model], sample, prefix_tokens=prefix)

    def _hypothesis(self, hypo: dict) -> Hypothesis:
        pieces = self.dictionary.string(hypo["tokens"].int().cpu(), extra_symbols_to_ignore=self.task.tag_ids)
        return Hypothesis(self.task.decode_tokens(hypo["tokens"]), pieces.split(), float(hypo["score"]))
