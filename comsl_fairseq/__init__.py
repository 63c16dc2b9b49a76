"""comsl_fairseq: ComSL (Le et al., NeurIPS 2023) as a fairseq plugin.

Importing this package (``--user-dir comsl_fairseq``) registers the task
``comsl_speech_to_text``, the model ``whisper_mbart_composite`` with its
architectures, and the criterion ``comsl_multitask``.

The checkpoint allowlist is installed first: fairseq loads ``--path`` and
``checkpoint_last.pt`` only after the user dir is imported, and under
torch >= 2.6 those loads run with ``weights_only=True``.

``from comsl_fairseq import SpeechTranslator`` (the Python API, see
:mod:`comsl_fairseq.inference.translator`) is resolved lazily, so the ``--user-dir``
import does not load the inference code.
"""
from comsl_fairseq import safe_globals

safe_globals.allow_fairseq_checkpoints()

from comsl_fairseq import criterions, models, tasks  # noqa: E402,F401  (registers them)


def __getattr__(name):
    """Lazy public API: imported on first use only (PEP 562)."""
    if name == "SpeechTranslator":
        from comsl_fairseq.inference.translator import SpeechTranslator

        return SpeechTranslator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
