"""The loss terms of ComSL (Le et al., 2023, §3), one function each.

Notation: H_s = mBART-encoder output on the speech path, H_x = on the transcript,
H_c = on the concatenation [emb(x~) ; speech embeddings], x~ being the transcript with
some tokens replaced by <mask>; H_c^x and H_c^s are its text and speech parts.
p(. | H) is the shared decoder's distribution; softCE(q || p) = -sum_v q_v log p_v with q
detached. Every term is a sum over the tokens (or frames) it counts, as in the original
code (``reduce=False``: one sum per sentence, B), returned as a :class:`TermResult` with
the counts needed to log it. The counts stay tensors on the loss's device: reading them
as Python numbers would stall the GPU once per term and step (fairseq sums them later).

Token terms take a decoder pass's distribution in one of two forms:
- log-probabilities (``log_probs(logits)``, B x T x V), computed once per decoder pass by
  the criterion: ST, for one, needs them for its CE and for its DDM share, and the MT
  pass's distribution is the teacher of two terms, so the vocabulary-sized softmax is
  materialised once per pass, not once per use;
- a :class:`ProjectedStates` (final decoder states and the output matrix), from which
  modules/chunked_output.py computes the same per-token losses a chunk of tokens at a
  time, never holding a B x T x V tensor through the backward. A teacher then is a
  ProjectedStates too.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from comsl_fairseq.modules.chunked_output import ProjectedStates, token_losses


@dataclass
class TermResult:
    loss: torch.Tensor  # summed over counted tokens / frames: a scalar, or B sums with reduce=False
    n_tokens: torch.Tensor  # 0-dim: tokens (frames for ERM) the loss is summed over
    n_correct: torch.Tensor  # 0-dim: of those, tokens whose argmax equals the target (0 for ERM, CTC)


def _total(x: torch.Tensor, reduce: bool) -> torch.Tensor:
    """B x T -> the batch sum (a scalar), or with ``reduce=False`` one sum per sentence (B)."""
    return x.sum() if reduce else x.sum(dim=1)


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log p over the vocabulary, in fp32 for a stable softmax under fp16/bf16."""
    return F.log_softmax(logits.float(), dim=-1)


def token_cross_entropy(lprobs: torch.Tensor, target: torch.Tensor, pad: int,
                        count: torch.Tensor | None = None, reduce: bool = True) -> TermResult:
    """CE(p(target | H), target) summed over non-pad target tokens.

    The ST, ASR and MT cross-entropies, STM-ASR = CE(p(x | H_c^s), x), and MTP =
    CE(p(x | H_c^x), x) with ``count`` (B x T bool) restricting it to masked positions.
    lprobs: B x T x V log-probabilities (or a ProjectedStates), target: B x T.
    """
    keep = target.ne(pad) if count is None else target.ne(pad) & count
    if isinstance(lprobs, ProjectedStates):
        nll, argmax = token_losses(lprobs, target)
        return chunked_result(nll, argmax, target, keep, reduce)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # B x T
    loss = _total(nll.masked_fill(~keep, 0.0), reduce)
    with torch.no_grad():
        correct = (lprobs.argmax(-1).eq(target) & keep).sum()
    return TermResult(loss, keep.sum(), correct)


def soft_cross_entropy(student_lprobs: torch.Tensor, teacher_probs: torch.Tensor, target: torch.Tensor,
                       pad: int, reduce: bool = True) -> torch.Tensor:
    """softCE(q || p) = -sum_v q_v log p_v with the teacher distribution q detached, summed
    over the non-pad positions of ``target`` (B x T)."""
    per_token = -(teacher_probs.detach() * student_lprobs).sum(-1)  # B x T
    return _total(per_token.masked_fill(target.eq(pad), 0.0), reduce)


def distilled_cross_entropy(lprobs: torch.Tensor, target: torch.Tensor, pad: int,
                            teacher_probs: torch.Tensor | None, alpha: float, reduce: bool = True,
                            count: torch.Tensor | None = None) -> TermResult:
    """(1 - alpha) CE(p, y) + alpha softCE(p_teacher || p); plain CE without a teacher.

    - ST with decoder distribution matching (DDM): p = p(y | H_s), teacher = the same
      model's MT pass p(y | H_x), alpha = --ddm-alpha (0.8);
    - STM-ST (CML): the same with p = p(y | H_c^s);
    - MT with regularization: p = p(y | H_x), teacher = the frozen fine-tuned mBART,
      alpha = --mt-reg-alpha (0.2).
    Without a teacher it is the plain CE of :func:`token_cross_entropy` (``count`` as
    there). Accuracy is that of p against the reference. ``lprobs`` and ``teacher_probs``
    are B x T x V tensors (log p, q), or both ProjectedStates.
    """
    if teacher_probs is None or alpha == 0:
        return token_cross_entropy(lprobs, target, pad, count, reduce)
    if count is not None:
        raise ValueError("a distilled term counts every non-pad token")
    if isinstance(lprobs, ProjectedStates):
        per_token, argmax = token_losses(lprobs, target, teacher_probs, alpha)
        return chunked_result(per_token, argmax, target, target.ne(pad), reduce)
    ce = token_cross_entropy(lprobs, target, pad, reduce=reduce)
    loss = (1 - alpha) * ce.loss + alpha * soft_cross_entropy(lprobs, teacher_probs, target, pad, reduce)
    return TermResult(loss, ce.n_tokens, ce.n_correct)


def chunked_result(per_token: torch.Tensor, argmax: torch.Tensor, target: torch.Tensor, keep: torch.Tensor,
                    reduce: bool) -> TermResult:
    """A TermResult from per-token losses and argmaxes (B x T), counting ``keep`` only."""
    with torch.no_grad():
        correct = (argmax.eq(target) & keep).sum()
    return TermResult(_total(per_token.masked_fill(~keep, 0.0), reduce), keep.sum(), correct)


def embedding_representation_matching(h_speech: torch.Tensor, h_concat: torch.Tensor,
                                      padding_mask: torch.Tensor, reduce: bool = True) -> TermResult:
    """ERM: sum over speech frames of || h_s/|h_s| - h_c^s/|h_c^s| ||_2.

    h_speech: T x B x C, mBART-encoder layer-k output of the speech-only pass;
    h_concat: T x B x C, the speech part of the concatenated pass at the same layer;
    padding_mask: B x T, True at padding (excluded).
    """
    a = F.normalize(h_speech.float(), dim=-1)
    b = F.normalize(h_concat.float(), dim=-1)
    dist = (a - b).norm(dim=-1).transpose(0, 1)  # B x T
    n_frames = (~padding_mask).sum()
    return TermResult(_total(dist.masked_fill(padding_mask, 0.0), reduce), n_frames, torch.zeros_like(n_frames))


def mask_tokens(tokens: torch.Tensor, maskable: torch.Tensor, prob: float, mask_idx: int) -> tuple:
    """Replace round(prob * n) of each sentence's maskable tokens by ``mask_idx`` (at
    least one where a sentence has any, unless ``prob`` is 0: then nothing is masked),
    chosen uniformly without replacement.

    tokens, maskable: B x T (maskable excludes tags, </s> and padding). Returns
    (masked tokens, B x T bool of masked positions). One vectorised draw, no retry loop:
    a batch with nothing maskable comes back unchanged.
    """
    if prob <= 0:
        return tokens, torch.zeros_like(maskable)
    n = maskable.sum(dim=1)  # B
    k = torch.where(n > 0, torch.clamp((n.float() * prob).round().long(), min=1), torch.zeros_like(n))
    scores = torch.rand(tokens.shape, device=tokens.device).masked_fill(~maskable, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)  # rank of each position among its row
    masked = (rank < k.unsqueeze(1)) & maskable
    return tokens.masked_fill(masked, mask_idx), masked


def ctc_on_speech(logits: torch.Tensor, padding_mask: torch.Tensor, transcript: torch.Tensor,
                  drop: torch.Tensor, blank: int, reduce: bool = True) -> TermResult:
    """CTC(transcript | H_s): an auxiliary alignment loss of ours, not in the paper.

    logits: T x B x V frame-wise outputs of the speech path (frame 0, the language tag,
    is skipped); padding_mask: B x T; transcript: B x L, from which the ``drop`` ids
    (tags, </s>, padding) are removed to form the CTC targets. Summed over sentences;
    impossible alignments (too few frames) count zero rather than infinity.
    """
    lprobs = log_probs(logits[1:])  # (T-1) x B x V
    input_lengths = (~padding_mask[:, 1:]).sum(dim=1)
    keep = ~torch.isin(transcript, drop)
    # B x L padded targets: each row's kept tokens moved to its front in order (a stable sort,
    # no boolean indexing, which would wait for the device to count them)
    targets = transcript.gather(1, (~keep).long().argsort(dim=1, stable=True))
    target_lengths = keep.sum(dim=1)
    loss = F.ctc_loss(lprobs, targets, input_lengths, target_lengths, blank=blank,
                      reduction="sum" if reduce else "none", zero_infinity=True)
    n = target_lengths.sum()
    return TermResult(loss, n, torch.zeros_like(n))
