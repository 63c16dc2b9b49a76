"""Hugging Face ``transformers`` export of a trained ComSL model.

The ``*_comsl.py`` files here import only torch, numpy, sentencepiece and transformers:
they are copied into every exported folder, where ``trust_remote_code=True`` loads them.
:mod:`comsl_fairseq.hf.export` (which needs fairseq) writes such a folder.
"""
