"""Using a trained model: self-contained model folders (:mod:`.export`), the Python API
(:mod:`.translator`), long-recording segmentation (:mod:`.segment`), subtitle writers
(:mod:`.subtitles`) and the ``comsl-translate`` command (:mod:`.cli`).

Nothing here is imported by ``import comsl_fairseq`` (the ``--user-dir`` path): the package
exposes :class:`SpeechTranslator` as a lazy attribute.
"""
