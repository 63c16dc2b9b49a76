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

(q sums to 1). Two ways to apply it:

- :func:`token_losses` (``--output-layer lean``), one term at a time: the backward
  recomputes each chunk's logits, one extra product h W^T per chunk (two with a teacher,
  whose logits are recomputed too);
- :func:`fused_token_losses` (``--output-layer fused``), all terms of a step at once: the
  gradients are computed in the forward while each chunk's probabilities are at hand, and
  terms on the same targets share the chunk loop, so a DDM teacher's probabilities are
  computed once for its students and nothing is recomputed. Per ComSL step with an MT
  teacher that is 19 output-layer products of a pass's size where the lean way needs 30
  (full B x T x V tensors: 19, kept through the backward).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from comsl_fairseq.modules.cpu_matmul import linear


@dataclass
class ProjectedStates:
    """p(. | H) of one decoder pass, not yet projected: ``softmax(features @ weight^T)``.

    features: B x T x C final decoder states; weight: V x C output matrix; ``dtype``: the
    dtype the product runs in (an active autocast's, or bf16 under the model's own bf16
    autocast, as its output layer would); the softmax is always fp32. ``step``: the training step's gradient
    buffer of the shared embedding (modules/tied_embedding.py), which the weight's gradient
    is added into instead of being returned, or None. ``onednn``: the products may run
    through modules/cpu_matmul.py (the model's ``--cpu-matmul auto``).
    """

    features: torch.Tensor
    weight: torch.Tensor
    dtype: torch.dtype = torch.float32
    step: object = None
    onednn: bool = False

    def detach(self) -> "ProjectedStates":
        """The same distribution as a teacher: no gradient flows into it."""
        return ProjectedStates(self.features.detach(), self.weight.detach(), self.dtype, onednn=self.onednn)

    def log_probs(self) -> torch.Tensor:
        """The full B x T x V fp32 log-probabilities (what the chunked path avoids)."""
        logits = linear(self.features.to(self.dtype), self.weight.to(self.dtype), onednn=self.onednn)
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
                                           teacher.dtype if teacher is not None else student.dtype, student.step,
                                           student.onednn, teacher is not None and teacher.onednn)
    return loss.view(B, T), argmax.view(B, T)


def _token_loss(lp: torch.Tensor, y: torch.Tensor, q: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """Per-token ``(1 - alpha) (-log p_y) + alpha (-sum_v q_v log p_v)`` of a chunk (lp: n x V
    log p, y: n x 1 targets, q: n x V teacher probabilities or None for plain CE)."""
    nll = -lp.gather(1, y).squeeze(1)
    if q is None:
        return nll
    return (1 - alpha) * nll + alpha * -(q * lp).sum(-1)


def _logit_gradient_(p: torch.Tensor, y: torch.Tensor, q: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """dloss/dz = p - (1 - alpha) e_y - alpha q of :func:`_token_loss`, written into ``p`` (n x V)."""
    p.scatter_add_(1, y, torch.full((p.size(0), 1), alpha - 1, dtype=p.dtype, device=p.device))
    if q is not None:
        p.sub_(q, alpha=alpha)
    return p


def _add_product(total: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``total + a @ b``, in place; the first product allocates it (a V x C zero fill first cost
    as much as a third of a ComSL-Medium CPU step, one per decoder pass)."""
    return a @ b if total is None else total.addmm_(a, b)


class _ChunkedTokenLoss(torch.autograd.Function):
    """h: N x C, w: V x C, target: N, optional teacher h_t: N x C', w_t: V x C'."""

    @staticmethod
    def forward(ctx, h, w, target, h_t, w_t, alpha, chunk, dtype, teacher_dtype, step, onednn, teacher_onednn):
        w_c = w.to(dtype)
        w_tc = w_t.to(teacher_dtype) if w_t is not None else None
        loss = torch.empty(h.size(0), dtype=torch.float32, device=h.device)
        argmax = torch.empty(h.size(0), dtype=torch.long, device=h.device)
        for s in range(0, h.size(0), chunk):
            e = min(s + chunk, h.size(0))
            lp = F.log_softmax(linear(h[s:e].to(dtype), w_c, onednn=onednn).float(), dim=-1)  # n x V
            q = None
            if h_t is not None:
                q = torch.softmax(linear(h_t[s:e].to(teacher_dtype), w_tc, onednn=teacher_onednn).float(), dim=-1)
            loss[s:e] = _token_loss(lp, target[s:e, None], q, alpha)
            argmax[s:e] = lp.argmax(-1)
        ctx.save_for_backward(h, w, target, h_t, w_t)
        ctx.alpha, ctx.chunk, ctx.dtype, ctx.teacher_dtype, ctx.step = alpha, chunk, dtype, teacher_dtype, step
        ctx.onednn, ctx.teacher_onednn = onednn, teacher_onednn
        ctx.mark_non_differentiable(argmax)
        return loss, argmax

    @staticmethod
    def backward(ctx, grad_loss, _grad_argmax):
        h, w, target, h_t, w_t = ctx.saved_tensors
        alpha, chunk, dtype, onednn = ctx.alpha, ctx.chunk, ctx.dtype, ctx.onednn
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w_c = w.to(dtype)
        w_tc = w_t.to(ctx.teacher_dtype) if w_t is not None else None
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = None  # float32, allocated by the first chunk's product
        for s in range(0, h.size(0), chunk):
            e = min(s + chunk, h.size(0))
            g = torch.softmax(linear(h[s:e].to(dtype), w_c, onednn=onednn).float(), dim=-1)  # p, n x V
            q = None
            if h_t is not None:
                q = torch.softmax(linear(h_t[s:e].to(ctx.teacher_dtype), w_tc, onednn=ctx.teacher_onednn).float(),
                                  dim=-1)
            _logit_gradient_(g, target[s:e, None], q, alpha)
            del q
            g.mul_(grad_loss[s:e, None].float())  # dloss/dz, n x V
            if need_h:
                grad_h[s:e] = linear(g.to(dtype), w_c.t(), onednn=onednn).to(h.dtype)  # g @ w
            if need_w and ctx.step is not None:  # into the step's one buffer: no V x C tensor per pass
                ctx.step.add_product(g.t(), h[s:e].float())
            elif need_w:
                grad_w = _add_product(grad_w, g.t(), h[s:e].float())
        if need_w and ctx.step is None:
            grad_w = grad_w.to(w.dtype) if grad_w is not None else torch.zeros_like(w)  # (no rows at all)
        return grad_h, grad_w, None, None, None, None, None, None, None, None, None, None


@dataclass
class TokenTerm:
    """One token loss of a training step, for :func:`fused_token_losses`.

    ``(1 - alpha) CE(p, target) + alpha softCE(q || p)`` per token, p = ``student``; q is
    ``teacher``: a detached outside distribution (a ProjectedStates), the name of another
    term of the same call whose p (detached) teaches this one, or None (``alpha`` 0).
    ``weight``: the term's coefficient in the step's loss; ``keep``: B x T bool, the tokens
    it counts. A named teacher must share this term's ``target`` tensor (the same positions).
    """

    student: ProjectedStates
    target: torch.Tensor
    weight: float
    keep: torch.Tensor
    teacher: "ProjectedStates | str | None" = None
    alpha: float = 0.0


def fused_token_losses(terms: dict, chunk_elements: int | None = None) -> tuple:
    """The step's token terms in one pass over the vocabulary, gradients computed on the way.

    Returns ``(total, {name: (loss B x T, argmax B x T)})``: ``total`` = sum over terms of
    ``weight`` x the term's loss summed over its ``keep`` tokens, differentiable w.r.t. the
    students' features and the shared output matrix; the per-token losses are values only.

    Unlike :func:`token_losses`, whose backward recomputes each chunk's logits, the
    gradients are computed in the forward while each chunk's probabilities are at hand
    (dloss/dz = weight (p - (1 - a) e_y - a q), times 1 at tokens kept, 0 elsewhere), and
    the backward only scales them by the gradient of ``total``; this is exact because the
    total is linear in the per-token losses and the teachers are detached. Terms on the same
    targets are taken a chunk of positions at a time together: a named teacher's
    probabilities are computed once per chunk for all its students (the DDM teacher,
    the MT pass, has two), and the weight gradient of the group is one product. Per pass
    that is 3 output-layer products (4 with an outside teacher) where :func:`token_losses`
    needs 4 (6 with a teacher).

    Every student must read the same output matrix (the tied weight: one ``step``, one
    dtype). The gradient is taken once: a second backward through ``total`` raises.
    """
    if not terms:
        raise ValueError("no token terms")
    first = next(iter(terms.values())).student
    groups = {}  # id(target) -> [names], terms that teach others first
    for name, t in terms.items():
        s = t.student
        if s.weight is not first.weight or s.dtype != first.dtype or s.step is not first.step or \
                s.onednn != first.onednn:
            raise ValueError(f"term {name!r} reads another output matrix than {next(iter(terms))!r}")
        if t.teacher is None and t.alpha != 0:
            raise ValueError(f"term {name!r}: alpha > 0 needs a teacher distribution")
        if isinstance(t.teacher, str) and (t.teacher not in terms or terms[t.teacher].target is not t.target
                                           or isinstance(terms[t.teacher].teacher, str)):
            raise ValueError(f"term {name!r}: teacher {t.teacher!r} is not a term on the same targets with its "
                             "own distribution")
        groups.setdefault(id(t.target), []).append(name)
    teaching = {t.teacher for t in terms.values() if isinstance(t.teacher, str)}
    order = [sorted(names, key=lambda n: n not in teaching) for names in groups.values()]
    grad_on = torch.is_grad_enabled()
    trains = {n: grad_on and t.weight != 0 and t.student.features.requires_grad for n, t in terms.items()}
    train_weight = grad_on and first.weight.requires_grad and any(t.weight != 0 for t in terms.values())
    plan = _FusedPlan(terms, order, teaching, trains, train_weight, chunk_elements or DEFAULT_CHUNK_ELEMENTS)
    names = list(terms)
    out = _FusedTokenLosses.apply(plan, first.weight, *(terms[n].student.features for n in names))
    total, losses, argmaxes = out[0], out[1:1 + len(names)], out[1 + len(names):]
    return total, {n: (loss, argmax) for n, loss, argmax in zip(names, losses, argmaxes, strict=True)}


@dataclass
class _FusedPlan:
    terms: dict
    groups: list  # [[term names]] sharing one target tensor, teachers first
    teaching: set  # names of the terms whose p teaches another
    trains: dict  # name -> the term's features get a gradient
    train_weight: bool  # the output matrix gets a gradient
    chunk_elements: int


class _FusedTokenLosses(torch.autograd.Function):
    """inputs: the plan, the output matrix V x C, each term's features (B x T x C, plan order)."""

    @staticmethod
    def forward(ctx, plan, w, *features):
        with torch.autocast(w.device.type, enabled=False):  # the dtypes below are the plan's, not autocast's
            return _FusedTokenLosses._forward(ctx, plan, w, *features)

    @staticmethod
    def _forward(ctx, plan, w, *features):
        terms, names = plan.terms, list(plan.terms)
        first = terms[names[0]].student
        dtype, step, onednn = first.dtype, first.step, first.onednn
        V = w.size(0)
        w_c = w.to(dtype)
        # dloss/dz is not yet multiplied by a loss scale here: its products never run in fp16
        # (whose range it would underflow), bf16 has fp32's
        w_g = w.float() if dtype == torch.float16 and any(plan.trains.values()) else w_c
        flat = {n: f.reshape(-1, f.size(-1)) for n, f in zip(names, features, strict=True)}
        grad_h = {n: torch.empty_like(flat[n]) for n in names if plan.trains[n]}
        grad_w = None  # fp32 V x C, allocated by the first product
        loss = {n: torch.empty(flat[n].size(0), dtype=torch.float32, device=w.device) for n in names}
        argmax = {n: torch.empty(flat[n].size(0), dtype=torch.long, device=w.device) for n in names}
        outside = {}  # id(teacher) -> (its flat features, its matrix in its dtype)
        for t in terms.values():
            if isinstance(t.teacher, ProjectedStates) and id(t.teacher) not in outside:
                q = t.teacher
                outside[id(q)] = (q.features.detach().reshape(-1, q.features.size(-1)), q.weight.detach().to(q.dtype),
                                  q.dtype, q.onednn)
        for group in plan.groups:
            target = terms[group[0]].target.reshape(-1)
            scale = {n: terms[n].keep.reshape(-1).float() * terms[n].weight for n in group}
            gets_grad = [n for n in group if plan.trains[n] or (plan.train_weight and terms[n].weight != 0)]
            chunk = max(1, plan.chunk_elements // (V * max(1, len(gets_grad))))
            # dloss/dz of the group's chunk, one buffer for all chunks
            g_buf = torch.empty(len(gets_grad) * min(chunk, target.size(0)), V, dtype=torch.float32,
                                device=w.device) if gets_grad else None
            for s in range(0, target.size(0), chunk):
                e = min(s + chunk, target.size(0))
                y = target[s:e, None]
                probs = {}  # this chunk's p of the terms that teach, and q of outside teachers
                g_all = g_buf[:len(gets_grad) * (e - s)] if gets_grad else None
                h_all = []
                for n in group:
                    t = terms[n]
                    lp = F.log_softmax(linear(flat[n][s:e].to(dtype), w_c, onednn=onednn).float(), dim=-1)  # (e-s) x V
                    q = None
                    if isinstance(t.teacher, str):
                        q = probs[t.teacher]
                    elif t.teacher is not None:
                        key = id(t.teacher)
                        if key not in probs:
                            h_t, w_t, dtype_t, onednn_t = outside[key]
                            probs[key] = torch.softmax(linear(h_t[s:e].to(dtype_t), w_t, onednn=onednn_t).float(),
                                                       dim=-1)
                        q = probs[key]
                    q = q if t.alpha != 0 else None
                    loss[n][s:e] = _token_loss(lp, y, q, t.alpha)
                    argmax[n][s:e] = lp.argmax(-1)
                    if n in gets_grad:
                        k = gets_grad.index(n)
                        g = g_all[k * (e - s):(k + 1) * (e - s)]
                        torch.exp(lp, out=g)  # p
                        if n in plan.teaching:
                            probs[n] = g.clone()
                        _logit_gradient_(g, y, q, t.alpha).mul_(scale[n][s:e, None])  # dtotal/dz
                        if plan.trains[n]:
                            grad_h[n][s:e] = linear(g.to(w_g.dtype), w_g.t(), onednn=onednn).to(grad_h[n].dtype)
                        if plan.train_weight:
                            h_all.append(flat[n][s:e].float())
                    elif n in plan.teaching:
                        probs[n] = lp.exp()
                    del lp
                if plan.train_weight and h_all:  # the group's chunk in one product
                    grad_w = _add_product(grad_w, g_all.t(), torch.cat(h_all))
        total = sum(terms[n].weight * loss[n].masked_fill(~terms[n].keep.reshape(-1), 0.0).sum()
                    for n in names if terms[n].weight != 0)  # (a term that only teaches adds nothing)
        ctx.grad_h = [grad_h.get(n) for n in names]
        ctx.shapes = [f.shape for f in features]
        ctx.grad_w, ctx.step, ctx.w_dtype = grad_w, step, w.dtype
        shaped = [loss[n].view(terms[n].target.shape) for n in names] + \
                 [argmax[n].view(terms[n].target.shape) for n in names]
        ctx.mark_non_differentiable(*shaped)
        return (torch.as_tensor(total, dtype=torch.float32, device=w.device), *shaped)

    @staticmethod
    def backward(ctx, grad_total, *_):
        if ctx.grad_h is None:
            raise RuntimeError("the fused output layer's gradient was already taken (a second backward)")
        c = grad_total.float()
        unit = c.device.type == "cpu" and float(c) == 1.0  # fairseq's backward of an unscaled loss
        grads_h = [None if g is None else (g if unit else (g.float() * c).to(g.dtype)).view(shape)
                   for g, shape in zip(ctx.grad_h, ctx.shapes, strict=True)]
        grad_w = ctx.grad_w
        ctx.grad_h = ctx.grad_w = None
        if grad_w is not None and not unit:
            grad_w.mul_(c)
        if grad_w is not None and ctx.step is not None:  # into the step's one buffer (tied_embedding.py)
            ctx.step.add_dense(grad_w)
            grad_w = None
        elif grad_w is not None:
            grad_w = grad_w.to(ctx.w_dtype)
        return (None, grad_w, *grads_h)
