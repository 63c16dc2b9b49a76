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

The update is fairseq's Adam arithmetic, op for op, applied with torch's ``_foreach_*``
calls to all tensors of a group at once (``--no-foreach`` keeps fairseq's loop of about ten
Python-level tensor calls per parameter tensor). Same state layout (``step``, ``exp_avg``,
``exp_avg_sq`` per parameter), so checkpoints move between the two.
"""
import copy
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from fairseq.optim import register_optimizer
from fairseq.optim.adam import Adam, FairseqAdam, FairseqAdamConfig
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


# Elements per foreach call: bounds the temporary sqrt(exp_avg_sq) (256 MiB in fp32) that a
# single call over every tensor would hold for the whole model at once.
FOREACH_BUCKET_ELEMENTS = 2 ** 26


class ForeachAdam(Adam):
    """fairseq's Adam (decoupled weight decay, eps added to sqrt(v), bias corrections folded
    into the step size), each operation applied to a whole bucket of tensors at once."""

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            if group.get("amsgrad", False):
                raise ValueError("adam_grouped's foreach update has no AMSGrad; use --no-foreach")
            for (step, _), bucket in self._buckets(group).items():
                self._update(group, step, *bucket)
        return loss

    def _buckets(self, group) -> dict:
        """{(step, bucket number): (fp32 params, grads, exp_avg, exp_avg_sq, [(param, fp32 copy)])},
        counting each parameter's step as fairseq's loop does."""
        buckets, size, number = defaultdict(lambda: ([], [], [], [], [])), 0, 0
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("Adam does not support sparse gradients, please consider SparseAdam instead")
            low = p.data.dtype in (torch.float16, torch.bfloat16)
            grad = p.grad.data.float() if p.grad.dtype in (torch.float16, torch.bfloat16) else p.grad.data
            p32 = p.data.float() if low else p.data
            state = self.state[p]
            if len(state) == 0:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p32)
                state["exp_avg_sq"] = torch.zeros_like(p32)
            else:
                state["exp_avg"] = state["exp_avg"].to(p32)
                state["exp_avg_sq"] = state["exp_avg_sq"].to(p32)
            state["step"] += 1
            if size + p32.numel() > FOREACH_BUCKET_ELEMENTS and size > 0:
                number, size = number + 1, 0
            size += p32.numel()
            b = buckets[(state["step"], number)]
            for lst, x in zip(b[:4], (p32, grad, state["exp_avg"], state["exp_avg_sq"]), strict=True):
                lst.append(x)
            if low:
                b[4].append((p, p32))
        return buckets

    @staticmethod
    def _update(group, step, params, grads, exp_avg, exp_avg_sq, low_precision) -> None:
        beta1, beta2 = group["betas"]
        torch._foreach_mul_(exp_avg, beta1)
        torch._foreach_add_(exp_avg, grads, alpha=1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_add_(denom, group["eps"])
        step_size = group["lr"] * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
        if group["weight_decay"] != 0:
            torch._foreach_add_(params, params, alpha=-group["weight_decay"] * group["lr"])
        torch._foreach_addcdiv_(params, exp_avg, denom, value=-step_size)
        for p, p32 in low_precision:
            p.data.copy_(p32)


@dataclass
class AdamGroupedConfig(FairseqAdamConfig):
    """fairseq's Adam options; --weight-decay applies to the parameters the model did not
    mark with a zero ``weight_decay_scale`` (biases and normalisation weights)."""

    no_foreach: bool = field(default=False, metadata={
        "help": "update the parameters with fairseq's loop over tensors instead of torch's foreach ops over "
                "all tensors of a group (the same arithmetic and results). Neither is used where fairseq picks "
                "apex's FusedAdam (CUDA with apex installed)"})


@register_optimizer("adam_grouped", dataclass=AdamGroupedConfig)
class AdamGrouped(FairseqAdam):
    """fairseq's Adam, built with one parameter group per weight-decay scale."""

    def __init__(self, cfg: AdamGroupedConfig, params):
        groups = weight_decay_groups(params, cfg.weight_decay)
        super().__init__(cfg, [dict(g) for g in groups])  # copies: torch fills in the group defaults
        if not cfg.no_foreach and type(self._optimizer) is Adam:
            self._optimizer = ForeachAdam(groups, **self.optimizer_config)
