"""The memory-lean output layer: chunked losses and gradients equal the full-tensor path.

Tolerance: fp32 on both sides, the same log-softmax per row; only the order of the sums
differs (per chunk vs whole tensor), so losses agree to 1e-5 relative and gradients to
1e-4 of each tensor's largest entry (+1e-8 absolute, for entries that are zero up to
rounding).
"""
import pytest
import torch

from comsl_fairseq.criterions import terms as T
from comsl_fairseq.modules import chunked_output
from comsl_fairseq.modules.chunked_output import LARGE_VOCABULARY_ROWS, ProjectedStates, token_losses
from tests.builders import build_task_and_model

PAD = 1


def assert_close(a, b, rtol, atol=1e-8):
    """|a - b| <= rtol * max|b| + atol, elementwise (atol: gradients that are zero up to rounding)."""
    scale = float(b.abs().max())
    assert float((a - b).abs().max()) <= rtol * scale + atol, (float((a - b).abs().max()), scale)


def case(V, C=8, B=3, L=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, L, C, generator=g, requires_grad=True)
    w = (torch.randn(V, C, generator=g) * 0.5).requires_grad_()
    h_t = torch.randn(B, L, C, generator=g)
    target = torch.randint(4, V, (B, L), generator=g)
    target[1, 3:] = PAD
    return h, w, h_t, target


@pytest.mark.parametrize("V,alpha", [(50_000, 0.0), (50_000, 0.8), (37, 0.2)])
def test_chunked_terms_equal_full_tensors(V, alpha):
    """A 50k-row vocabulary with 3 tokens per chunk, so the chunking really happens."""
    h, w, h_t, target = case(V)
    student, teacher = ProjectedStates(h, w), ProjectedStates(h_t, w.detach() * 0.7)
    grads, losses = [], []
    for lean in (False, True):
        p = student if lean else student.log_probs()
        q = teacher if lean else teacher.log_probs().exp()
        if lean:
            chunked_output.DEFAULT_CHUNK_ELEMENTS, saved = 3 * V, chunked_output.DEFAULT_CHUNK_ELEMENTS
        try:
            r = T.distilled_cross_entropy(p, target, PAD, q if alpha else None, alpha)
        finally:
            if lean:
                chunked_output.DEFAULT_CHUNK_ELEMENTS = saved
        r.loss.backward()
        losses.append(r)
        grads.append((h.grad.clone(), w.grad.clone()))
        h.grad = w.grad = None
    full, lean = losses
    assert_close(lean.loss.detach(), full.loss.detach(), 1e-5)
    assert int(lean.n_tokens) == int(full.n_tokens) and int(lean.n_correct) == int(full.n_correct)
    for a, b in zip(grads[1], grads[0], strict=True):
        assert_close(a, b, 1e-4)


def test_per_token_losses_and_argmax_with_uneven_chunks():
    h, w, h_t, target = case(1000, L=7)
    loss, argmax = token_losses(ProjectedStates(h, w), target, ProjectedStates(h_t, w.detach()), 0.5,
                                chunk_elements=4 * 1000)  # 21 tokens in chunks of 4
    lp, q = ProjectedStates(h, w).log_probs(), ProjectedStates(h_t, w).log_probs().exp()
    ref = 0.5 * -lp.gather(-1, target[..., None]).squeeze(-1) + 0.5 * -(q * lp).sum(-1)
    assert_close(loss.detach(), ref.detach(), 1e-5)
    assert torch.equal(argmax, lp.argmax(-1))
    with pytest.raises(ValueError, match="teacher"):
        token_losses(ProjectedStates(h, w), target, None, 0.5)


@pytest.fixture(scope="module")
def pair(data_dir, whisper_pt, mbart_dir):
    """The same tiny model and batch under both criteria (with an MT teacher: every
    distribution kind, student, DDM teacher and frozen teacher, goes through the chunks)."""
    crits = []
    for extra in (("--output-layer", "full"), ("--output-layer", "lean")):
        cfg, task, model = build_task_and_model(data_dir, "--whisper-checkpoint", str(whisper_pt),
                                                "--mbart-checkpoint", str(mbart_dir / "model.pt"),
                                                "--mt-teacher", str(mbart_dir / "model.pt"), "--erm-layer", "2",
                                                *extra)
        crits.append(task.build_criterion(cfg.criterion))
    cfg.criterion.output_layer = "auto"  # the default: lean only from LARGE_VOCABULARY_ROWS vocabulary rows on
    assert len(task.target_dictionary) < LARGE_VOCABULARY_ROWS
    assert not task.build_criterion(cfg.criterion).lean_output_layer
    task.load_dataset("test")
    ds = task.dataset("test")
    return crits, model, ds.collater([ds[i] for i in range(4)])


def test_criterion_losses_and_gradients_equal(pair, monkeypatch):
    (full, lean), model, sample = pair
    assert lean.lean_output_layer and not full.lean_output_layer
    V = len(model.decoder.dictionary)
    monkeypatch.setattr(chunked_output, "DEFAULT_CHUNK_ELEMENTS", 5 * V)  # 5 tokens per chunk
    model.eval()  # no dropout: both runs see the same network
    results = []
    for criterion in (full, lean):
        torch.manual_seed(7)  # the same CML masking
        loss, _, log = criterion(model, sample)
        loss.backward()
        results.append((loss.detach(), log, {n: p.grad.clone() for n, p in model.named_parameters()
                                             if p.grad is not None}))
        model.zero_grad(set_to_none=True)
    (l0, log0, g0), (l1, log1, g1) = results
    assert_close(l1, l0, 1e-5)
    for key in ("st", "asr", "mt", "stm_asr", "stm_st", "mtp"):
        assert_close(log1[f"{key}_loss"], log0[f"{key}_loss"], 1e-5)
        assert int(log1[f"{key}_correct"]) == int(log0[f"{key}_correct"])
    tied = next(n for n, p in model.named_parameters() if p is model.decoder.output_projection.weight)
    assert g0.keys() == g1.keys() and tied in g0  # the output matrix (tied embedding) is trained
    for name in g0:
        assert_close(g1[name], g0[name], 1e-4)
