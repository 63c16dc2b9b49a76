"""Is a manifest's ``n_frames`` the clip's real length?

``n_frames`` must count samples at 16 kHz (fairseq's raw-audio convention): batching and
``--max-tokens`` use it before any clip is read. Other tools write other units -- fairseq's
own S2T manifests count 10 ms fbank frames (100 per second), others count samples at the
clip's own rate -- and then every row is dropped as too short, or a 30 s clip declared as
1 s lands in a batch sized for 1 s. Here the real length is compared with ``n_frames`` when
the clip is read, and the mismatch is described in the units the user may have used.
"""
from pathlib import Path

import soundfile as sf
from whisper.audio import HOP_LENGTH

from comsl_fairseq.data.audio import SAMPLE_RATE, resolve_audio_path

# A clip shorter than one hop has no log-mel frame at all; Whisper's front end cannot
# read it (it would crash with min_audio_seconds: 0), whatever min_audio_seconds says.
MIN_CLIP_SAMPLES = HOP_LENGTH

# A read clip may differ from n_frames by resampling rounding and mp3 decoder padding;
# more than this (and more than 10 %) means n_frames is not the clip's length.
TOLERANCE_SAMPLES = 800  # 50 ms
TOLERANCE_RATIO = 0.10
COMMON_RATES = (8000, 11025, 22050, 24000, 32000, 44100, 48000)
FBANK_FRAMES_PER_SECOND = 100

UNITS_HINT = ("n_frames must count audio samples at 16 kHz (fairseq's raw-audio convention), "
              "not 10 ms fbank frames (fairseq's S2T feature manifests) nor samples at the clip's "
              "own sample rate; rewrite the column from the clips (e.g. soundfile.info(path).frames "
              "* 16000 // samplerate)")


def likely_units(n_frames: int, n_samples: int) -> str:
    """What ``n_frames`` seems to count, given the clip's real length in 16 kHz samples."""
    if n_frames <= 0:
        return "n_frames is not positive"
    ratio = n_samples / n_frames
    if abs(ratio / (SAMPLE_RATE / FBANK_FRAMES_PER_SECOND) - 1) < 0.05:
        return "n_frames looks like 10 ms fbank frames"
    for rate in COMMON_RATES:
        if abs(ratio / (SAMPLE_RATE / rate) - 1) < 0.02:
            return f"n_frames looks like samples counted at {rate} Hz"
    return "n_frames does not match the clip"


def length_mismatch(n_frames: int, n_samples: int) -> str | None:
    """None when ``n_frames`` fits the ``n_samples`` read (16 kHz), else a description."""
    if abs(n_samples - n_frames) <= max(TOLERANCE_SAMPLES, TOLERANCE_RATIO * n_frames):
        return None
    return (f"manifest n_frames={n_frames} ({n_frames / SAMPLE_RATE:.2f} s) but the clip holds {n_samples} "
            f"samples at 16 kHz ({n_samples / SAMPLE_RATE:.2f} s); {likely_units(n_frames, n_samples)}")


def header_samples(field: str, audio_root: Path) -> int | None:
    """A plain audio file's length in 16 kHz samples from its header (no decoding), or None
    when it cannot be told cheaply (zip entries, unreadable headers)."""
    path, offset, _ = resolve_audio_path(field, audio_root)
    if offset is not None:
        return None
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return None
    return info.frames * SAMPLE_RATE // info.samplerate if info.samplerate else None
