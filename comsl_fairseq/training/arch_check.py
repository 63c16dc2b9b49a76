"""Which ``--arch`` the task can build.

This plugin's models only: another one (e.g. ``--arch transformer`` when resuming) would
fail inside fairseq with a ``TypeError``.
"""
from fairseq.models import ARCH_MODEL_NAME_REGISTRY, MODEL_REGISTRY


def check_model_family(model_cfg) -> None:
    """Only this plugin's models read audio batches: any other ``--arch`` (e.g. ``transformer``,
    which wants a source dictionary) is refused by name before fairseq fails inside it."""
    arch = getattr(model_cfg, "_name", None) or getattr(model_cfg, "arch", None)
    model_class = MODEL_REGISTRY.get(ARCH_MODEL_NAME_REGISTRY.get(arch, arch))
    if model_class is not None and not model_class.__module__.startswith("comsl_fairseq."):
        ours = sorted(a for a, m in ARCH_MODEL_NAME_REGISTRY.items()
                      if MODEL_REGISTRY[m].__module__.startswith("comsl_fairseq."))
        raise ValueError(f"--arch {arch} is not a model of this plugin; the task comsl_speech_to_text feeds audio "
                         f"batches to one of {ours} (when resuming, use the --arch the checkpoint was trained with)")

