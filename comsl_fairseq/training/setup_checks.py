"""Flag combinations that cannot train, refused when the model or criterion is built.

Flag combinations that cannot train, refused when the model or criterion is built --
before the first step, not at step N.

Each check names the flags to change. They read the full fairseq config that the model
and criterion configs belong to; a config built without one (a script assembling a
model by hand) has nothing to check.
"""
import logging

from omegaconf import DictConfig

logger = logging.getLogger(__name__)

# Loss weights whose terms read audio; --text-only batches carry none.
SPEECH_WEIGHTS = ("st_weight", "asr_weight", "cml_weight", "ctc_weight")


def root_config(cfg):
    """The full fairseq config a model / criterion config node belongs to, or None."""
    root = cfg._get_parent() if isinstance(cfg, DictConfig) else None
    return root if root is not None and "common" in root and "distributed_training" in root else None


def flat_master_weights(common) -> bool:
    """Whether fairseq will train with ``FP16Optimizer``: --fp16 / --bf16 without --amp and
    without --memory-efficient-fp16 (the order of ``Trainer._build_optimizer``)."""
    memory_efficient = common.memory_efficient_fp16 or common.memory_efficient_bf16
    return bool((common.fp16 or common.bf16) and not common.amp and not memory_efficient)


def check_model_setup(model_cfg) -> None:
    """Refuse freezing Whisper (--freeze-whisper-updates / --freeze-whisper-epochs N > 0) where its
    weights would move anyway.

    - ``--fp16`` (FP16Optimizer) keeps one flat fp32 master copy of every weight; it copies the
      gradients into it (zeros for frozen Whisper) before the task can drop them, so AdamW's
      weight decay still shrinks the "frozen" weights;
    - ``--ddp-backend fully_sharded`` flattens the parameters into shards: there is no
      per-parameter gradient left to drop.
    """
    root = root_config(model_cfg)
    if root is None:
        return
    if model_cfg.get("freeze_whisper_updates", 0) > 0:
        freeze = f"--freeze-whisper-updates {model_cfg.freeze_whisper_updates}"
    elif model_cfg.get("freeze_whisper_epochs", 0) > 0:
        freeze = f"--freeze-whisper-epochs {model_cfg.freeze_whisper_epochs}"
    else:
        return
    if root.distributed_training.ddp_backend == "fully_sharded":
        raise ValueError(f"{freeze} cannot keep Whisper "
                         "unchanged under --ddp-backend fully_sharded (its parameters are flattened into shards); "
                         "use --ddp-backend legacy_ddp, or drop the freezing")
    if flat_master_weights(root.common):
        raise ValueError(f"{freeze} with --fp16: fairseq's "
                         "FP16Optimizer keeps flat fp32 master weights that the optimizer (weight decay) changes "
                         "even for frozen Whisper parameters; use --amp or --memory-efficient-fp16 instead of --fp16")


def check_criterion_setup(criterion_cfg, text_only: bool) -> None:
    """--text-only batches hold no audio: every term that reads speech must be off."""
    if not text_only:
        return
    on = [f"--{name.replace('_', '-')} {criterion_cfg[name]:g}" for name in SPEECH_WEIGHTS
          if name in criterion_cfg and criterion_cfg[name] > 0]
    if on:
        raise ValueError(f"--text-only reads no audio, but {', '.join(on)} ask(s) for speech terms; set them to 0 "
                         "(the MT stage trains with --st-weight 0 --asr-weight 0 --cml-weight 0)")

