"""Audio reading without torchaudio: soundfile for decoding, soxr for resampling.

fairseq's own ``get_waveform`` imports ``torchaudio.sox_effects``, which current
torchaudio no longer has, so we read audio ourselves. A manifest ``audio`` field is
either a path (relative to ``audio_root``) or a fairseq ``file.zip:offset:length``
entry pointing at an uncompressed member inside a zip archive.

Training clips are read whole (:func:`read_audio`). A user's recording can be hours long, so
:class:`AudioSource` also reads it block by block: down-mixed and resampled as it streams,
memory bounded by the block length, not the file's.
"""
import io
import logging
import re
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from whisper.audio import SAMPLE_RATE  # Whisper's input rate (16 kHz); every clip is brought to it

BLOCK_SECONDS = 30.0  # streamed reading: seconds of 16 kHz audio per block handed on
READ_SECONDS = 2.0  # ... decoded and resampled this many seconds of the file at a time

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


MIN_SAMPLE_RATE = 1000  # Hz: a header claiming less is damaged (it would make seconds of hours)


def _no_audio_file(path: Path) -> "AudioError":
    """The error for a ``path`` that is not a regular file, saying what it is instead."""
    if path.is_dir():
        return AudioError(f"{path} is a folder, not an audio file", "not an audio file")
    if path.exists():
        return AudioError(f"{path} is not a regular file (a device, pipe or socket)", "not an audio file")
    return AudioError(f"audio file not found: {path}", "audio file missing")


def _check_rate(path: Path, rate: int) -> None:
    if rate < MIN_SAMPLE_RATE:
        raise AudioError(f"audio {path} claims a sample rate of {rate} Hz in its header (damaged header?)",
                         "unreadable audio")


def read_audio(field: str, audio_root: Path) -> tuple:
    """Read one clip as float32 mono at 16 kHz.

    Returns (waveform, notes): ``notes`` lists conversions made (downmix, resampling)
    so that callers can count them. Raises :class:`AudioError` naming the file.
    """
    path, offset, length = resolve_audio_path(field, audio_root)
    if not path.is_file():
        raise _no_audio_file(path)
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
    _check_rate(path, sr)
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


class AudioSource:
    """A recording opened lazily: its length from the file header (nothing decoded), then the
    16 kHz mono samples whole (:meth:`read`, as :func:`read_audio`) or in blocks (:meth:`blocks`).
    ``field`` and ``audio_root`` as in :func:`read_audio`. Raises :class:`AudioError`."""

    def __init__(self, field: str, audio_root: Path = Path("/")):
        self.field, self.audio_root = field, Path(audio_root)
        self.path, self.offset, self.length = resolve_audio_path(field, self.audio_root)
        self._header = None

    @property
    def frames(self) -> int:
        return self.header()[0]

    @property
    def native_rate(self) -> int:
        return self.header()[1]

    def header(self) -> tuple:
        """(frames, sample rate, channels), read once from the file header."""
        if self._header is None:
            with self._open() as f:
                self._header = f.frames, f.samplerate, f.channels
            _check_rate(self.path, self._header[1])
        return self._header

    def _open(self) -> sf.SoundFile:
        if not self.path.is_file():
            raise _no_audio_file(self.path)
        try:
            if self.offset is None:
                return sf.SoundFile(str(self.path))
            with open(self.path, "rb") as f:  # a zip member (an uncompressed clip): read whole
                f.seek(self.offset)
                blob = f.read(self.length)
            if len(blob) != self.length:
                raise AudioError(f"{self.field}: zip entry truncated ({len(blob)} of {self.length} bytes)",
                                 "unreadable audio")
            return sf.SoundFile(io.BytesIO(blob))
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            raise AudioError(f"cannot decode audio {self.path}: {e}", "unreadable audio") from None

    @property
    def seconds(self) -> float:
        return self.frames / self.native_rate

    def read(self) -> np.ndarray:
        """The whole recording, exactly as :func:`read_audio` returns it."""
        return read_audio(self.field, self.audio_root)[0]

    def blocks(self, seconds: float = BLOCK_SECONDS):
        """16 kHz mono float32 blocks of about ``seconds`` each, in order (streamed resampling:
        the samples equal a one-shot resampling up to the filter's rounding). The file is
        decoded, down-mixed and resampled :data:`READ_SECONDS` at a time, so only that much of
        the native-rate audio is held at once (30 s of 48 kHz stereo as float32 is 11.5 MB)."""
        if self.frames == 0:
            raise AudioError(f"audio {self.path} is empty (0 samples)", "empty audio")
        step = max(1, int(seconds * self.native_rate))
        read = min(step, max(1, int(READ_SECONDS * self.native_rate)))
        resampler = (soxr.ResampleStream(self.native_rate, SAMPLE_RATE, 1, dtype="float32")
                     if self.native_rate != SAMPLE_RATE else None)
        with self._open() as f:
            frames = np.empty((read, f.channels), np.float32)  # reused by every read
            mono = np.empty(read, np.float32)
            last = False
            while not last:
                parts, todo = [], step
                while todo and not last:
                    want = min(read, todo)
                    try:
                        data = f.read(want, dtype="float32", always_2d=True, out=frames[:want])  # frames x channels
                    except (sf.LibsndfileError, RuntimeError) as e:
                        raise AudioError(f"cannot decode audio {self.path} after {f.tell() / self.native_rate:.1f} s: "
                                         f"{e}", "unreadable audio") from None
                    n, todo = data.shape[0], todo - data.shape[0]
                    last = n < want
                    down = np.mean(data, axis=1, out=mono[:n]) if data.shape[1] > 1 else data[:, 0]
                    if not np.isfinite(down).all():
                        raise AudioError(f"audio {self.path} has NaN or infinite samples", "non-finite audio samples")
                    # soxr's stream gives the same samples whatever the chunking; without it, a copy
                    # (the read buffers are reused).
                    parts.append(resampler.resample_chunk(down, last=last) if resampler is not None
                                 else down.copy())
                block = np.concatenate(parts) if len(parts) > 1 else parts[0]
                if block.size:
                    yield np.ascontiguousarray(block, dtype=np.float32)
