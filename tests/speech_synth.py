"""Synthetic long recordings of known sentences (espeak-ng) with silences between them.

Where each sentence was placed is measured from its own waveform (first and last sample
above -60 dBFS), so tests can check segment timestamps against it.
"""
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from tests.builders import sentences

SAMPLE_RATE = 16000


def speak(text: str, voice: str = "fr") -> np.ndarray:
    """espeak-ng speech of ``text`` as float32 at 16 kHz."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is required for the long-recording tests: apt-get install espeak-ng "
                    "(make install does it)")
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(["espeak-ng", "-v", voice, "-w", tmp.name, text], check=True, capture_output=True)
        wav, sr = sf.read(tmp.name, dtype="float32")
    return soxr.resample(wav, sr, SAMPLE_RATE).astype(np.float32) if sr != SAMPLE_RATE else wav


def long_recording(path: Path, n: int, seed: int = 0, gap=(1.0, 3.0), lang: str = "fr") -> tuple:
    """Write ``n`` sentences separated by ``gap`` seconds of silence (plus a little noise) to
    ``path``; returns (path, [(start_s, end_s) of each sentence's sound])."""
    rng = np.random.default_rng(seed)
    parts, placed, pos = [], [], 0
    for text in sentences(lang, n, random.Random(seed)):
        silence = np.zeros(int(rng.uniform(*gap) * SAMPLE_RATE), np.float32)
        wav = speak(text, lang)
        loud = np.flatnonzero(np.abs(wav) > 1e-3)
        placed.append(((pos + silence.size + loud[0]) / SAMPLE_RATE, (pos + silence.size + loud[-1]) / SAMPLE_RATE))
        parts += [silence, wav]
        pos += silence.size + wav.size
    parts.append(np.zeros(SAMPLE_RATE, np.float32))
    audio = np.concatenate(parts)
    audio += (1e-4 * rng.standard_normal(audio.size)).astype(np.float32)
    sf.write(path, audio, SAMPLE_RATE)
    return path, placed
