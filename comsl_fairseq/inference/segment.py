"""Split a long recording into speech segments that fit Whisper's window.

Voice-activity detection is Silero VAD (``silero-vad`` on PyPI, MIT): a small neural
detector whose weights ship inside the package (``silero_vad/data/silero_vad.jit``), so
nothing is downloaded at run time; it needs only torch, which we already have, and it is
maintained (6.x, 2026). We chose it over WebRTC's GMM detector (``webrtcvad``), which gives
only per-frame decisions, is easily triggered by noise and leaves the merging and
splitting to the caller, and over energy thresholds (``auditok``), whose absolute
threshold depends on the recording level. Silero also splits speech longer than a limit
at its longest internal pause (``max_speech_duration_s``), which is exactly what a 30 s
window needs; a hard split below remains as a safety net.
"""
import logging
import threading
from dataclasses import dataclass

import numpy as np
import torch

from comsl_fairseq.data.audio import SAMPLE_RATE

logger = logging.getLogger(__name__)

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


def _vad_model():
    """The packaged Silero VAD model, loaded once. silero_vad sets torch's thread count
    to 1 when imported; the caller's setting is restored."""
    global _VAD_MODEL
    with _VAD_LOCK:
        if _VAD_MODEL is None:
            n_threads = torch.get_num_threads()
            try:
                from silero_vad import load_silero_vad
            except ImportError as e:
                raise ImportError("long recordings are segmented with Silero VAD: pip install silero-vad "
                                  "(see requirements.txt)") from e
            finally:
                torch.set_num_threads(n_threads)
            _VAD_MODEL = load_silero_vad()
        return _VAD_MODEL


def speech_segments(wav: np.ndarray, cfg: SegmenterConfig = SegmenterConfig()) -> list:
    """Speech regions of a 16 kHz mono waveform as ``[(start_sample, end_sample), ...]``
    in order, none longer than ``cfg.max_seconds``. An all-silent recording gives []."""
    from silero_vad import get_speech_timestamps

    model = _vad_model()
    max_samples = int(cfg.max_seconds * SAMPLE_RATE)
    with _VAD_LOCK, torch.inference_mode():
        stamps = get_speech_timestamps(
            torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)), model, threshold=cfg.threshold,
            sampling_rate=SAMPLE_RATE, min_speech_duration_ms=cfg.min_speech_ms,
            max_speech_duration_s=cfg.max_seconds, min_silence_duration_ms=cfg.min_silence_ms,
            speech_pad_ms=cfg.pad_ms)
    segments = []
    for s in stamps:
        segments += split_evenly(int(s["start"]), int(s["end"]), max_samples)
    logger.debug("%d speech segment(s) in %.1f s of audio", len(segments), wav.size / SAMPLE_RATE)
    return segments


def split_evenly(start: int, end: int, max_len: int) -> list:
    """[start, end) cut into the fewest equal pieces no longer than ``max_len``."""
    n = max(1, -(-(end - start) // max_len))
    bounds = [start + (end - start) * i // n for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))
