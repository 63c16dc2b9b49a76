"""Optimizers; importing registers them with fairseq (the package ``__init__`` does)."""
from comsl_fairseq.optim import adam_grouped  # noqa: F401
