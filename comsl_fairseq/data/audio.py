"""Audio reading without torchaudio: soundfile for decoding, soxr for resampling.

fairseq's own ``get_waveform`` imports ``torchaudio.sox_effects``, which current
torchaudio no longer has, so we read audio ourselves. A manifest ``audio`` field is
either a path (relative to ``audio_root``) or a fairseq ``file.zip:offset:length``
entry pointing at an uncompressed member inside a zip archive.
"""
import io
import logging
import re
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from whisper.audio import SAMPLE_RATE  # Whisper's input rate (16 kHz); every clip is brought to it

logger = logging.getLogger(__name__)

_ZIP_ENTRY = re.compile(r"^(?P<path>.+\.zip):(?P<offset>\d+):(?P<length>\d+)$")


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file, ``reason`` is a
    short stable category for counting."""

    def __init__(self, message: str, reason: str = "unusable audio"):
        super().__init__(message)
        self.reason = reason


def resolve_audio_path(field: str, audio_root: Path) -> tuple:
    """Split a manifest ``audio`` field into (path, offset, length); offset is None for
    a plain file. Relative paths are taken relative to ``audio_root``."""
    m = _ZIP_ENTRY.match(field)
    path, offset, length = (m["path"], int(m["offset"]), int(m["length"])) if m else (field, None, None)
    p = Path(path)
    if not p.is_absolute():
        p = audio_root / p
    return p, offset, length


def read_audio(field: str, audio_root: Path) -> tuple:
    """Read one clip as float32 mono at 16 kHz.

    Returns (waveform, notes): ``notes`` lists conversions made (downmix, resampling)
    so that callers can count them. Raises :class:`AudioError` naming the file.
    """
    path, offset, length = resolve_audio_path(field, audio_root)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}", "audio file missing")
    try:
        if offset is None:
            data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        else:
            with open(path, "rb") as f:
                f.seek(offset)
                blob = f.read(length)
            if len(blob) != length:
                raise AudioError(f"{field}: zip entry truncated ({len(blob)} of {length} bytes)", "unreadable audio")
            data, sr = sf.read(io.BytesIO(blob), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"cannot decode audio {path}: {e}", "unreadable audio") from None
    notes = []
    if data.shape[1] > 1:
        notes.append(f"downmixed {data.shape[1]} channels")
        data = data.mean(axis=1, keepdims=True)
    wav = data[:, 0]
    if sr != SAMPLE_RATE:
        notes.append(f"resampled {sr} Hz -> {SAMPLE_RATE} Hz")
        wav = soxr.resample(wav, sr, SAMPLE_RATE).astype(np.float32)
    if wav.size == 0:
        raise AudioError(f"audio {path} is empty (0 samples)", "empty audio")
    if not np.isfinite(wav).all():
        raise AudioError(f"audio {path} has NaN or infinite samples", "non-finite audio samples")
    return np.ascontiguousarray(wav), notes
