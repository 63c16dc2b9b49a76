"""A disk cache of frozen Whisper encoder outputs, one entry per clip.

While Whisper is frozen its output for a clip never changes, so it is computed once and
read back in later epochs (and by later runs over the same clips). An entry is found by a
hash of three things and stores all three in full, checked on every read:

- the clip: a hash of its 16 kHz samples (float32 bytes) and its length;
- the Whisper weights: a hash of the encoder's state dict as loaded (names, dtypes, shapes,
  values), so another checkpoint -- or Whisper weights changed by training -- never reads
  the entries of this one;
- the input-length settings (--whisper-pad-seconds, --whisper-trailing-silence, mel bins)
  and :data:`FORMAT`, the version of the feature computation.

An entry whose stored key differs from the expected one, or that cannot be read, is stale:
it is never used; the features are computed again and the entry rewritten. Entries are
written to a temporary file and renamed, so concurrent processes (data-parallel ranks)
never read a half-written file. The stored features are float32, exactly what the
uncached forward returned for that clip (its valid frames).
"""
import hashlib
import logging
import os
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

FORMAT = 1  # bump when the feature computation (log-mel, masking, encoder) changes


def weights_fingerprint(module: torch.nn.Module) -> str:
    """Hash of a module's state dict: names, dtypes, shapes and values."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def clip_key(audio: torch.Tensor) -> str:
    """Hash of one clip's samples (1-D, valid samples only) and its length."""
    samples = audio.detach().float().cpu().contiguous()
    h = hashlib.blake2b(samples.numpy().tobytes(), digest_size=16)
    return f"{h.hexdigest()}-{samples.numel()}"


class WhisperFeatureCache:
    """Entries under ``folder``; ``settings`` are the input-length options of the model."""

    def __init__(self, folder, settings: dict):
        self.folder = Path(folder)
        self.settings = {**{k: settings[k] for k in sorted(settings)}, "format": FORMAT}
        self.hits = self.misses = self.stale = self.written = 0

    def key(self, clip: str, fingerprint: str) -> dict:
        return {"clip": clip, "whisper": fingerprint, "settings": self.settings}

    def path(self, key: dict) -> Path:
        name = hashlib.blake2b(repr(sorted(key.items())).encode(), digest_size=20).hexdigest()
        return self.folder / name[:2] / f"{name}.pt"

    def get(self, key: dict):
        """The stored features (T x C float32) of ``key``, or None (absent or stale)."""
        path = self.path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            entry = torch.load(path, map_location="cpu")
            ok = isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("h"), torch.Tensor)
        except Exception as e:  # a truncated or foreign file
            logger.warning("unreadable Whisper feature cache entry %s (%s: %s): computing it again", path,
                           type(e).__name__, e)
            ok = False
        if not ok:
            self.stale += 1
            logger.warning("stale Whisper feature cache entry %s (its key is not this clip, Whisper and "
                           "settings): not used, computed again", path)
            return None
        self.hits += 1
        return entry["h"]

    def put(self, key: dict, h: torch.Tensor) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            torch.save({"key": key, "h": h.detach().float().cpu().clone()}, tmp)
            os.replace(tmp, path)
            self.written += 1
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def stats(self) -> str:
        return f"{self.hits} hits, {self.misses} misses, {self.stale} stale entries rebuilt"


def cached_features(cache: WhisperFeatureCache, fingerprint: str, compute, audio: torch.Tensor,
                    audio_lengths: torch.Tensor) -> tuple:
    """Whisper features of a padded batch through ``cache``: the clips without a valid entry
    go through ``compute(audio, lengths) -> (h B' x T x C, lengths B')`` as one sub-batch and
    are stored. Returns (h B x T x C, zero after each clip's frames, lengths B)."""
    keys = [cache.key(clip_key(audio[b, : int(n)]), fingerprint) for b, n in enumerate(audio_lengths.tolist())]
    found = [cache.get(k) for k in keys]
    todo = [b for b, h in enumerate(found) if h is None]
    if todo:
        idx = torch.tensor(todo, device=audio.device)
        sub_lengths = audio_lengths[idx]
        h, h_lengths = compute(audio[idx, : int(sub_lengths.max())], sub_lengths)
        for j, b in enumerate(todo):
            found[b] = h[j, : int(h_lengths[j])].detach().float().cpu()
            cache.put(keys[b], found[b])
    lengths = torch.tensor([f.size(0) for f in found], device=audio.device)
    out = torch.nn.utils.rnn.pad_sequence(found, batch_first=True).to(audio.device)
    return out, lengths
