"""The decoder's tied output layer, log-softmax and token losses, chunked over tokens.

A decoder pass over mBART-50's 250k-row vocabulary would otherwise leave a B x T x V fp32
log-probability tensor alive from the forward to the backward (six passes per ComSL step,
and the DDM teacher's probabilities besides). Here a pass is kept as its final hidden
states (B x T x C) and the output matrix (V x C, tied to the token embedding); the loss of
each chunk of tokens is computed from a chunk x V slice of logits that is freed at once,
and the backward recomputes that slice instead of having stored it. Row by row the
arithmetic is the same as the full tensor's (one log-softmax over the whole vocabulary per
token), so losses and gradients agree to float rounding.

Per token, with p = softmax(z), z = W h, and q a detached teacher distribution:

    loss = (1 - a) (-log p_y) + a (-sum_v q_v log p_v),  dloss/dz = p - (1 - a) e_y - a q

(q sums to 1), which the backward applies chunk by chunk: one extra product h W^T per chunk
(two with a teacher, whose logits are recomputed too) buys the memory of the full tensors.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ProjectedStates:
    """p(. | H) of one decoder pass, not yet projected: ``softmax(features @ weight^T)``.

    features: B x T x C final decoder states; weight: V x C output matrix; ``dtype``: the
    dtype the product runs in (bf16 where the model runs under bf16 autocast, as its own
    output layer would); the softmax is always fp32. ``step``: the training step's gradient
    buffer of the shared embedding (modules/tied_embedding.py), which the weight's gradient
    is added into instead of being returned, or None.
    """

    features: torch.Tensor
    weight: torch.Tensor
    dtype: torch.dtype = torch.float32
    step: object = None

    def detach(self) -> "ProjectedStates":
        """The same distribution as a teacher: no gradient flows into it."""
        return ProjectedStates(self.features.detach(), self.weight.detach(), self.dtype)

    def log_probs(self) -> torch.Tensor:
        """The full B x T x V fp32 log-probabilities (what the chunked path avoids)."""
        logits = F.linear(self.features.to(self.dtype), self.weight.to(self.dtype))
        return F.log_softmax(logits.float(), dim=-1)


# --output-layer auto: the chunked output layer from this many vocabulary rows on, where the
# B x T x V tensors dominate a step's memory (mBART-50's 250k; not the tiny arch's 8k).
LARGE_VOCABULARY_ROWS = 50_000

# Logit elements per chunk: 2^25 fp32 values (128 MiB; ~134 tokens at 250k rows). A few
# such slices are alive at once (logits, probabilities, a teacher's).
DEFAULT_CHUNK_ELEMENTS = 2 ** 25


def token_losses(student: ProjectedStates, target: torch.Tensor, teacher: ProjectedStates | None = None,
                 alpha: float = 0.0, chunk_elements: int | None = None) -> tuple:
    """Per-token ``(1 - alpha) CE(p, y) + alpha softCE(q || p)`` and argmax, chunked.

    student: the distribution p being trained; target: B x T token ids; teacher: q (its
    gradient is never taken) or None for plain CE (``alpha`` must then be 0).
    Returns (loss B x T fp32, differentiable w.r.t. the student's features and weight;
    argmax of p, B x T). ``chunk_elements``: logit elements per chunk (default
    :data:`DEFAULT_CHUNK_ELEMENTS`).
    """
    if teacher is None and alpha != 0:
        raise ValueError("alpha > 0 needs a teacher distribution")
    B, T, C = student.features.shape
    V = student.weight.size(0)
    chunk = max(1, (chunk_elements or DEFAULT_CHUNK_ELEMENTS) // V)
    h_t = w_t = None
    if teacher is not None and alpha != 0:
        h_t, w_t = teacher.features.detach().reshape(B * T, -1), teacher.weight.detach()
    loss, argmax = _ChunkedTokenLoss.apply(student.features.reshape(B * T, C), student.weight, target.reshape(-1),
                                           h_t, w_t, float(alpha), chunk, student.dtype,
                                           teacher.dtype if teacher is not None else student.dtype, student.step)
    return loss.view(B, T), argmax.view(B, T)


class _ChunkedTokenLoss(torch.autograd.Function):
    """h: N x C, w: V x C, target: N, optional teacher h_t: N x C', w_t: V x C'."""

    @staticmethod
    def forward(ctx, h, w, target, h_t, w_t, alpha, chunk, dtype, teacher_dtype, step):
        w_c = w.to(dtype)
        w_tc = w_t.to(teacher_dtype) if w_t is not None else None
        loss = torch.empty(h.size(0), dtype=torch.float32, device=h.device)
        argmax = torch.empty(h.size(0), dtype=torch.long, device=h.device)
        for s in range(0, h.size(0), chunk):
            e = min(s + chunk, h.size(0))
            lp = F.log_softmax(F.linear(h[s:e].to(dtype), w_c).float(), dim=-1)  # n x V
            nll = -lp.gather(1, target[s:e, None]).squeeze(1)
            if h_t is not None:
                q = torch.softmax(F.linear(h_t[s:e].to(teacher_dtype), w_tc).float(), dim=-1)
                nll = (1 - alpha) * nll + alpha * -(q * lp).sum(-1)
            loss[s:e] = nll
            argmax[s:e] = lp.argmax(-1)
        ctx.save_for_backward(h, w, target, h_t, w_t)
        ctx.alpha, ctx.chunk, ctx.dtype, ctx.teacher_dtype, ctx.step = alpha, chunk, dtype, teacher_dtype, step
        ctx.mark_non_differentiable(argmax)
        return loss, argmax

    @staticmethod
    def backward(ctx, grad_loss, _grad_argmax):
        h, w, target, h_t, w_t = ctx.saved_tensors
        alpha, chunk, dtype = ctx.alpha, ctx.chunk, ctx.dtype
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w_c = w.to(dtype)
        w_tc = w_t.to(ctx.teacher_dtype) if w_t is not None else None
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = None  # float32; the first chunk's product allocates it (zero-filling V x D first cost as
        # much as a third of a ComSL-Medium CPU step, one fill per decoder pass), later chunks add to it
        for s in range(0, h.size(0), chunk):
            e = min(s + chunk, h.size(0))
            g = torch.softmax(F.linear(h[s:e].to(dtype), w_c).float(), dim=-1)  # p, n x V
            g.scatter_add_(1, target[s:e, None], torch.full((e - s, 1), alpha - 1, dtype=g.dtype, device=g.device))
            if h_t is not None:
                q = torch.softmax(F.linear(h_t[s:e].to(ctx.teacher_dtype), w_tc).float(), dim=-1)
                g.sub_(q, alpha=alpha)
                del q
            g.mul_(grad_loss[s:e, None].float())  # dloss/dz, n x V
            if need_h:
                grad_h[s:e] = (g.to(dtype) @ w_c).to(h.dtype)
            if need_w and ctx.step is not None:  # into the step's one buffer: no V x C tensor per pass
                ctx.step.add_product(g.t(), h[s:e].float())
            elif need_w:
                if grad_w is None:
                    grad_w = g.t() @ h[s:e].float()
                else:
                    grad_w.addmm_(g.t(), h[s:e].float())
        if need_w and ctx.step is None:
            grad_w = grad_w.to(w.dtype) if grad_w is not None else torch.zeros_like(w)  # (no rows at all)
        return grad_h, grad_w, None, None, None, None, None, None, None, None
