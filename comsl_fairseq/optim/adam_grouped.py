"""Optimizer ``adam_grouped``: fairseq's Adam with weight decay only where it should decay.

Optimizer ``adam_grouped``: fairseq's Adam (AdamW-style decoupled weight decay) with
weight decay only on the parameters that should decay (the training strategies).

The original ComSL excludes biases and LayerNorm weights from weight decay (by name:
``bias``, ``LayerNorm.weight``, ``layer_norm.weight``, ``attn_ln``, ``mlp_ln``); with
``--weight-decay 0.1`` over ~600k updates, decaying them would pull every LayerNorm gain
towards zero. The rule here is by module, not by name, so no norm escapes it:

    no decay: every ``bias`` and every parameter of a normalisation layer (LayerNorm,
              GroupNorm, ...)
    decay:    everything else (weight matrices, conv kernels, embeddings)

The model marks its parameters with fairseq's public per-parameter convention,
``p.optim_overrides = {"optimizer": {"weight_decay_scale": 0.0}}`` (read by fairseq's
``composite`` optimizer, and carried to fp32 copies by its FP16 wrapper when grads are not
flattened); this optimizer turns the marks into the torch parameter groups it is built
with, so the groups are what the optimizer state holds and checkpoints save.
"""
import copy
import logging
from collections import defaultdict
from dataclasses import dataclass

from fairseq.optim import register_optimizer
from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig
from torch import nn

logger = logging.getLogger(__name__)

NO_WEIGHT_DECAY = {"optimizer": {"weight_decay_scale": 0.0}}


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, GroupNorm, BatchNorm and look-alikes (e.g. apex's FusedLayerNorm)."""
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)) or \
        "norm" in type(module).__name__.lower()


def mark_no_weight_decay(model: nn.Module) -> dict:
    """Mark every bias and normalisation parameter of ``model`` for no weight decay.
    Returns {"decay": n, "no_decay": n} parameter counts (elements)."""
    counts = {"decay": 0, "no_decay": 0}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name == "bias" or is_norm(module):
                p.optim_overrides = copy.deepcopy(NO_WEIGHT_DECAY)  # a copy: fairseq may add keys to it
    for p in model.parameters():
        counts["no_decay" if _decay_scale(p) == 0 else "decay"] += p.numel()
    return counts


def _decay_scale(p) -> float:
    overrides = getattr(p, "optim_overrides", None) or {}
    return float(overrides.get("optimizer", {}).get("weight_decay_scale", 1.0))


def weight_decay_groups(params, weight_decay: float) -> list:
    """Torch parameter groups, one per weight-decay scale found on ``params``."""
    params = list(params)
    if params and all(isinstance(p, dict) for p in params):
        return params  # already grouped by the caller
    by_scale = defaultdict(list)
    for p in params:
        by_scale[_decay_scale(p)].append(p)
    if len(params) == 1 and 1.0 in by_scale:
        logger.warning("adam_grouped got one flat parameter (--fp16 flattens them): weight decay applies to "
                       "every parameter; use --amp, --memory-efficient-fp16 or --fp16-no-flatten-grads")
    groups = []
    for scale, ps in sorted(by_scale.items(), reverse=True):
        groups.append({"params": ps, "weight_decay": weight_decay * scale})
        logger.info("weight decay %g on %d tensors (%d parameters)", weight_decay * scale, len(ps),
                    sum(p.numel() for p in ps))
    return groups


@dataclass
class AdamGroupedConfig(FairseqAdamConfig):
    """fairseq's Adam options; --weight-decay applies to the parameters the model did not
    mark with a zero ``weight_decay_scale`` (biases and normalisation weights)."""


@register_optimizer("adam_grouped", dataclass=AdamGroupedConfig)
class AdamGrouped(FairseqAdam):
    """fairseq's Adam, built with one parameter group per weight-decay scale."""

    def __init__(self, cfg: AdamGroupedConfig, params):
        super().__init__(cfg, weight_decay_groups(params, cfg.weight_decay))
