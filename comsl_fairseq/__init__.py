"""comsl_fairseq: ComSL (Le et al., NeurIPS 2023) as a fairseq plugin.

Importing this package (``--user-dir comsl_fairseq``) registers the task
``comsl_speech_to_text``, the model ``whisper_mbart_composite`` with its
architectures, the criterion ``comsl_multitask``, the optimizer ``adam_grouped`` and the
LR scheduler ``epoch_polynomial_decay``.

The checkpoint allowlist is installed first: fairseq loads ``--path`` and
``checkpoint_last.pt`` only after the user dir is imported, and under
torch >= 2.6 those loads run with ``weights_only=True``. For the same reason the
checkpoint-file safety (atomic ``checkpoint_last.pt``, resume fallback) is installed here.

``from comsl_fairseq import SpeechTranslator`` (the Python API, see
:mod:`comsl_fairseq.inference.translator`) is resolved lazily, so the ``--user-dir``
import does not load the inference code.
"""
from comsl_fairseq.checkpoints import allowlist, files

allowlist.allow_fairseq_checkpoints()
files.install()

from comsl_fairseq.training.distributed import install_cpu_shims  # noqa: E402

install_cpu_shims()  # fairseq's pytorch_ddp and torchrun in CPU processes (acts only without GPUs)

from comsl_fairseq import criterions, lr_schedulers, models, optim, tasks  # noqa: E402,F401  (registers them)


def __getattr__(name):
    """Lazy public API: imported on first use only (PEP 562)."""
    if name == "SpeechTranslator":
        from comsl_fairseq.inference.translator import SpeechTranslator

        return SpeechTranslator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
