"""The loss terms of ComSL (paper §3, SPEC §4), one function each.

Every term returns sums over tokens (as the original code does) together with the
counts needed to log it: a :class:`TermResult`. The criterion weights and adds them.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TermResult:
    loss: torch.Tensor  # summed over counted tokens
    n_tokens: int  # tokens the loss is summed over
    n_correct: int  # of those, tokens whose argmax equals the target


def token_cross_entropy(logits: torch.Tensor, target: torch.Tensor, pad: int) -> TermResult:
    """CE(p(target | ...), target) summed over non-pad target tokens.

    Used by the ST (CE(p(y|H_s), y)), ASR (CE(p(x|H_s), x)) and MT (CE(p(y|H_x), y))
    terms. logits: B x T x V, target: B x T. Computed in fp32 for stability.
    """
    lprobs = F.log_softmax(logits.float(), dim=-1)  # B x T x V
    keep = target.ne(pad)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # B x T
    loss = nll.masked_fill(~keep, 0.0).sum()
    with torch.no_grad():
        correct = (lprobs.argmax(-1).eq(target) & keep).sum()
    return TermResult(loss, int(keep.sum()), int(correct))
