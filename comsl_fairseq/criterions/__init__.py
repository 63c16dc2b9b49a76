"""Criterions; importing registers them with fairseq.

``--user-dir`` does not import this folder by itself, so the package ``__init__`` does.
"""
from comsl_fairseq.criterions import comsl_multitask  # noqa: F401
