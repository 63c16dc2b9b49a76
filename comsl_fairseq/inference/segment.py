"""Split a long recording into speech segments that fit Whisper's window.

Voice-activity detection is Silero VAD (``silero-vad`` on PyPI, MIT): a small neural
detector whose weights ship inside the package (``silero_vad/data/silero_vad.jit``), so
nothing is downloaded at run time; it needs only torch, which we already have, and it is
maintained (6.x, 2026). We chose it over WebRTC's GMM detector (``webrtcvad``), which gives
only per-frame decisions, is easily triggered by noise and leaves the merging and
splitting to the caller, and over energy thresholds (``auditok``), whose absolute
threshold depends on the recording level.

A recording is segmented in two streamed passes, so that memory does not grow with its
length but by 8 bytes per 32 ms (0.9 MB an hour): the first feeds Silero block by block and
keeps only one speech probability and one loudness value per 32 ms window, float32 in compact
arrays (Silero's own hysteresis turns the probabilities into speech regions); the second
reads the recording again and cuts the regions out. Speech that runs longer than the window
without a pause Silero would end a region at is cut at its quietest 32 ms within the second
half of the window, and such cuts are counted.
"""
import logging
import threading
from array import array
from dataclasses import dataclass, field

import numpy as np
import torch

from comsl_fairseq.data.audio import SAMPLE_RATE

logger = logging.getLogger(__name__)

WINDOW = 512  # samples per Silero decision at 16 kHz (32 ms)
_VAD_LOCK = threading.Lock()
_VAD_MODEL = None


@dataclass
class SegmenterConfig:
    """Silero VAD settings (times in seconds unless named otherwise)."""

    max_seconds: float = 30.0  # no segment longer than this (Whisper's window)
    threshold: float = 0.5  # speech probability above which a 32 ms window counts as speech
    min_speech_ms: int = 250  # shorter speech bursts are dropped
    min_silence_ms: int = 300  # pauses shorter than this do not end a segment
    pad_ms: int = 100  # context kept on each side of a segment


@dataclass
class SpeechMap:
    """What the first pass found: speech regions as sample ranges, in order, none longer than
    the window, and how many of them were cut from longer speech without a pause."""

    spans: list = field(default_factory=list)
    forced_cuts: int = 0
    samples: int = 0  # length of the recording at 16 kHz


def _vad_model():
    """The packaged Silero VAD model, loaded once. silero_vad sets torch's thread count
    to 1 when imported; the caller's setting is restored."""
    global _VAD_MODEL
    if _VAD_MODEL is None:
        n_threads = torch.get_num_threads()
        try:
            from silero_vad import load_silero_vad
        except ImportError as e:
            raise ImportError("recordings are checked for speech with Silero VAD: pip install silero-vad "
                              "(see requirements.txt)") from e
        finally:
            torch.set_num_threads(n_threads)
        _VAD_MODEL = load_silero_vad()
    return _VAD_MODEL


def map_speech(blocks, cfg: SegmenterConfig = SegmenterConfig()) -> SpeechMap:
    """First pass over an iterable of 16 kHz mono float32 blocks: the speech regions."""
    from silero_vad import get_speech_timestamps_from_probs

    track, carry, total = WindowTrack(), np.zeros(0, np.float32), 0
    n_threads = torch.get_num_threads()
    with _VAD_LOCK, torch.inference_mode():  # the model carries state from window to window
        model = _vad_model()
        model.reset_states()
        torch.set_num_threads(1)  # one 512-sample window per call: more threads only add overhead
        try:
            for block in blocks:
                total += block.size
                x = np.concatenate([carry, block]) if carry.size else block
                n = x.size // WINDOW
                carry = x[n * WINDOW:]
                track.add(model, x[: n * WINDOW].reshape(n, WINDOW))  # n x 512
            if carry.size:  # the last partial window, zero-padded as Silero pads it
                track.add(model, np.pad(carry, (0, WINDOW - carry.size))[None])
        finally:
            torch.set_num_threads(n_threads)
    stamps = get_speech_timestamps_from_probs(  # iterating the array gives the same Python floats as .item()
        track.probs, sampling_rate=SAMPLE_RATE, threshold=cfg.threshold, min_speech_duration_ms=cfg.min_speech_ms,
        min_silence_duration_ms=cfg.min_silence_ms, speech_pad_ms=cfg.pad_ms, audio_length_samples=total)
    result = SpeechMap(samples=total)
    max_samples = int(cfg.max_seconds * SAMPLE_RATE)
    loudness = np.frombuffer(track.loudness, np.float32)  # a view, no copy
    for s in stamps:
        cuts = cut_at_quietest(int(s["start"]), int(s["end"]), max_samples, loudness)
        result.forced_cuts += len(cuts) - 1
        result.spans += cuts
    logger.debug("%d speech segment(s) (%d cut without a pause) in %.1f s of audio (%.2f MB of window state)",
                 len(result.spans), result.forced_cuts, total / SAMPLE_RATE, track.nbytes / 1e6)
    return result


class WindowTrack:
    """What the first pass keeps of each 512-sample window: Silero's speech probability and the
    RMS level, float32 each, in growing arrays (8 bytes a window; a list of Python floats would
    take 32 bytes per value and leave the heap fragmented when freed)."""

    def __init__(self):
        self.probs, self.loudness = array("f"), array("f")

    @property
    def nbytes(self) -> int:
        return (len(self.probs) + len(self.loudness)) * self.probs.itemsize

    def add(self, model, frames: np.ndarray) -> None:
        """Score ``frames`` (N x 512, float32) with the VAD ``model``, one window at a time in order."""
        if not frames.size:
            return
        self.loudness.frombytes(np.sqrt(np.mean(np.square(frames, dtype=np.float32), axis=1)).astype(np.float32)
                                .tobytes())
        for row in torch.from_numpy(np.ascontiguousarray(frames)):
            self.probs.append(model(row, SAMPLE_RATE).item())  # a float32 value: stored exactly


def cut_at_quietest(start: int, end: int, max_len: int, loudness: np.ndarray) -> list:
    """[start, end) as pieces no longer than ``max_len``: while too long, cut at the quietest
    window (lowest RMS in ``loudness``, one value per 512 samples) in the second half of the
    first ``max_len`` samples."""
    pieces = []
    while end - start > max_len:
        lo, hi = (start + max_len // 2) // WINDOW, (start + max_len) // WINDOW  # window indices
        window = lo + int(np.argmin(loudness[lo:hi])) if hi > lo and hi <= loudness.size else hi
        cut = min(max(window * WINDOW + WINDOW // 2, start + 1), start + max_len)
        pieces.append((start, cut))
        start = cut
    return pieces + [(start, end)]


def cut_spans(blocks, spans: list):
    """Second pass: ``(start, end, samples)`` of each span (sorted, not overlapping), cut from
    an iterable of 16 kHz blocks while it streams; only the audio of unfinished spans is kept."""
    buffer, offset, k = np.zeros(0, np.float32), 0, 0  # buffer holds samples [offset, offset + size)
    for block in blocks:
        if k == len(spans):
            return
        buffer = np.concatenate([buffer, block]) if buffer.size else block
        while k < len(spans) and spans[k][1] <= offset + buffer.size:
            s, e = spans[k]
            yield s, e, np.array(buffer[s - offset:e - offset])  # a copy: the buffer is dropped
            k += 1
        keep_from = spans[k][0] if k < len(spans) else offset + buffer.size
        drop = min(max(0, keep_from - offset), buffer.size)
        buffer, offset = buffer[drop:], offset + drop
    if k < len(spans):  # spans reaching past the end (a stream shorter than its header said)
        for s, e in spans[k:]:
            if s < offset + buffer.size:
                yield s, min(e, offset + buffer.size), np.array(buffer[max(0, s - offset):e - offset])


def speech_segments(wav: np.ndarray, cfg: SegmenterConfig = SegmenterConfig()) -> list:
    """Speech regions of a 16 kHz mono waveform as ``[(start_sample, end_sample), ...]``
    in order, none longer than ``cfg.max_seconds``. An all-silent recording gives []."""
    return map_speech(array_blocks(wav), cfg).spans


def array_blocks(wav: np.ndarray, seconds: float = 30.0):
    """A waveform in memory as blocks (views), for the streamed passes."""
    step = int(seconds * SAMPLE_RATE)
    for i in range(0, wav.size, step):
        yield wav[i:i + step]
