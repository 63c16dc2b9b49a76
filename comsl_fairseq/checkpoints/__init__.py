"""Checkpoint files: pretrained Whisper/mBART loading, crash-safe saving, averaging, the unpickling allowlist."""
