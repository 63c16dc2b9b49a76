"""Using a trained model: export, the Python API, segmentation and subtitles.

Using a trained model: self-contained model folders (:mod:`.export`), the Python API
(:mod:`.translator`), what the command reads (:mod:`.inputs`), the languages a model knows
(:mod:`.languages`), speech detection and segmentation (:mod:`.segment`) and subtitle writers
(:mod:`.subtitles`); the ``comsl-translate`` command is :mod:`comsl_fairseq.cli.translate`.

Nothing here is imported by ``import comsl_fairseq`` (the ``--user-dir`` path): the package
exposes :class:`SpeechTranslator` as a lazy attribute.
"""
