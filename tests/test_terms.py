"""Each ComSL term against an independent computation of its formula in the paper (§3).

The references below are written from the formulas with explicit loops over sentences
and positions (numpy / plain torch), not with the functions under test.
"""
import math

import numpy as np
import torch

from comsl_fairseq.criterions import terms as T

PAD = 1


def close(value, ref) -> bool:
    """The terms compute in fp32 (as in training); references in float64."""
    return abs(value - ref) <= 1e-6 * max(1.0, abs(ref))


def random_case(seed=0, B=3, L=6, V=13):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, L, V, generator=g, dtype=torch.float64)
    teacher = torch.randn(B, L, V, generator=g, dtype=torch.float64)
    target = torch.randint(4, V, (B, L), generator=g)
    target[1, 4:] = PAD
    target[2, 2:] = PAD
    return logits, teacher, target


def ref_log_softmax(row):
    row = np.asarray(row, dtype=np.float64)
    m = row.max()
    return row - m - math.log(np.exp(row - m).sum())


def ref_ce(logits, target, count=None):
    total, n = 0.0, 0
    for b in range(target.shape[0]):
        for t in range(target.shape[1]):
            y = int(target[b, t])
            if y == PAD or (count is not None and not count[b, t]):
                continue
            total -= ref_log_softmax(logits[b, t])[y]
            n += 1
    return total, n


def ref_soft_ce(student, teacher, target):
    total = 0.0
    for b in range(target.shape[0]):
        for t in range(target.shape[1]):
            if int(target[b, t]) == PAD:
                continue
            q = np.exp(ref_log_softmax(teacher[b, t]))
            total -= float((q * ref_log_softmax(student[b, t])).sum())
    return total


def test_cross_entropy_over_non_pad_tokens():
    logits, _, target = random_case()
    r = T.token_cross_entropy(T.log_probs(logits), target, PAD)
    ref, n = ref_ce(logits.numpy(), target.numpy())
    assert r.n_tokens == n == 6 + 4 + 2
    assert close(r.loss.item(), ref)


def test_mtp_counts_only_masked_positions():
    logits, _, target = random_case(1)
    count = torch.zeros_like(target, dtype=torch.bool)
    count[0, 1] = count[0, 4] = count[1, 0] = count[2, 5] = True  # [2, 5] is padding: not counted
    r = T.token_cross_entropy(T.log_probs(logits), target, PAD, count=count)
    ref, n = ref_ce(logits.numpy(), target.numpy(), count.numpy())
    assert r.n_tokens == n == 3 and close(r.loss.item(), ref)
    none = T.token_cross_entropy(T.log_probs(logits), target, PAD, count=torch.zeros_like(count))
    assert none.n_tokens == 0 and none.loss.item() == 0.0


def test_ddm_and_mt_regularization_formula():
    logits, teacher, target = random_case(2)
    for alpha in (0.8, 0.2, 0.0):
        r = T.distilled_cross_entropy(T.log_probs(logits), target, PAD, torch.softmax(teacher, -1), alpha)
        ce, _ = ref_ce(logits.numpy(), target.numpy())
        soft = ref_soft_ce(logits.numpy(), teacher.numpy(), target.numpy())
        assert close(r.loss.item(), (1 - alpha) * ce + alpha * soft)
    plain = T.distilled_cross_entropy(T.log_probs(logits), target, PAD, None, 0.8)
    assert close(plain.loss.item(), ref_ce(logits.numpy(), target.numpy())[0])


def test_teacher_distribution_is_detached():
    logits, teacher, target = random_case(3)
    logits.requires_grad_(True)
    teacher.requires_grad_(True)
    T.distilled_cross_entropy(T.log_probs(logits), target, PAD, torch.softmax(teacher, -1), 0.8).loss.backward()
    assert teacher.grad is None and logits.grad is not None


def test_erm_sums_normalised_distances_over_speech_frames():
    g = torch.Generator().manual_seed(4)
    Tn, B, C = 5, 2, 7
    hs, hc = torch.randn(Tn, B, C, generator=g, dtype=torch.float64), torch.randn(Tn, B, C, generator=g,
                                                                                  dtype=torch.float64)
    mask = torch.zeros(B, Tn, dtype=torch.bool)
    mask[1, 3:] = True
    hc[3:, 1] = 1e6  # padded frames may hold anything
    r = T.embedding_representation_matching(hs, hc, mask)
    ref = 0.0
    for b in range(B):
        for t in range(Tn):
            if mask[b, t]:
                continue
            a, c = hs[t, b].numpy(), hc[t, b].numpy()
            ref += float(np.linalg.norm(a / np.linalg.norm(a) - c / np.linalg.norm(c)))
    assert r.n_tokens == 8 and close(r.loss.item(), ref)
    same = T.embedding_representation_matching(hs, 3.0 * hs, mask)  # scale-invariant: zero distance
    assert same.loss.item() < 1e-5


def test_masking_never_touches_tags_eos_or_padding():
    torch.manual_seed(0)
    tag, eos, mask_idx = 50, 2, 99
    tokens = torch.tensor([[tag, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, eos],
                           [tag, 5, 6, eos] + [PAD] * 17,
                           [tag, eos] + [PAD] * 19])
    maskable = ~torch.isin(tokens, torch.tensor([tag, eos, PAD]))
    for _ in range(50):
        masked_tokens, masked = T.mask_tokens(tokens, maskable, 0.15, mask_idx)
        assert not (masked & ~maskable).any()
        assert masked.sum(1).tolist() == [3, 1, 0]  # round(0.15 * 19) = 3; at least 1; none to mask
        assert (masked_tokens[masked] == mask_idx).all() and torch.equal(masked_tokens[~masked], tokens[~masked])


def test_masking_a_batch_with_nothing_maskable_returns_at_once():
    tokens = torch.tensor([[50, 2, PAD], [50, 2, PAD]])
    out, masked = T.mask_tokens(tokens, torch.zeros_like(tokens, dtype=torch.bool), 0.15, 99)
    assert torch.equal(out, tokens) and not masked.any()


def test_mask_prob_zero_masks_nothing():
    tokens = torch.tensor([[50, 5, 6, 7, 2], [50, 5, 2, PAD, PAD]])
    maskable = ~torch.isin(tokens, torch.tensor([50, 2, PAD]))
    out, masked = T.mask_tokens(tokens, maskable, 0.0, 99)
    assert torch.equal(out, tokens) and not masked.any()


def test_unreduced_terms_are_per_sentence_sums():
    logits, teacher, target = random_case(6)
    lp = T.log_probs(logits)
    for fn in (lambda r: T.token_cross_entropy(lp, target, PAD, reduce=r),
               lambda r: T.distilled_cross_entropy(lp, target, PAD, torch.softmax(teacher, -1), 0.8, reduce=r)):
        per, total = fn(False), fn(True)
        assert per.loss.shape == (3,) and close(per.loss.sum().item(), total.loss.item())
        assert torch.equal(per.n_tokens, total.n_tokens)
    ref_first, _ = ref_ce(logits[:1].numpy(), target[:1].numpy())
    assert close(T.token_cross_entropy(lp, target, PAD, reduce=False).loss[0].item(), ref_first)


def test_ctc_targets_skip_dropped_ids_without_boolean_indexing():
    torch.manual_seed(0)
    tag, eos, blank = 50, 2, 0
    transcript = torch.tensor([[tag, 5, 6, 7, eos], [tag, 8, eos, PAD, PAD]])
    logits = torch.randn(12, 2, 60)  # T x B x V; frame 0 (the tag) is skipped
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[1, 9:] = True
    r = T.ctc_on_speech(logits, mask, transcript, torch.tensor([tag, eos, PAD]), blank)
    lp = torch.log_softmax(logits[1:].float(), -1)
    ref = torch.nn.functional.ctc_loss(lp, torch.tensor([5, 6, 7, 8]), torch.tensor([11, 8]), torch.tensor([3, 1]),
                                       blank=blank, reduction="sum", zero_infinity=True)
    assert int(r.n_tokens) == 4 and close(r.loss.item(), ref.item())
    per = T.ctc_on_speech(logits, mask, transcript, torch.tensor([tag, eos, PAD]), blank, reduce=False)
    assert per.loss.shape == (2,) and close(per.loss.sum().item(), ref.item())
