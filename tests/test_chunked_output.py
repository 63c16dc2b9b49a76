"""The chunked output layers (lean, fused): losses and gradients equal the full-tensor path.

Tolerance: fp32 on both sides, the same log-softmax per row; only the order of the sums
differs (per chunk vs whole tensor), so losses agree to 1e-5 relative and gradients to
1e-4 of each tensor's largest entry (+1e-8 absolute, for entries that are zero up to
rounding). Under autocast and with fp16 / bf16 products the tolerances are those
dtypes' rounding, stated at each test.
"""
import copy
from unittest import mock

import pytest
import torch

from comsl_fairseq.criterions import terms as T
from comsl_fairseq.modules import chunked_output, cpu_matmul
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
    for extra in (("--output-layer", "full"), ("--output-layer", "lean"), ("--output-layer", "fused")):
        cfg, task, model = build_task_and_model(data_dir, "--whisper-checkpoint", str(whisper_pt),
                                                "--mbart-checkpoint", str(mbart_dir / "model.pt"),
                                                "--mt-teacher", str(mbart_dir / "model.pt"), "--erm-layer", "2",
                                                *extra)
        crits.append(task.build_criterion(cfg.criterion))
    cfg.criterion.output_layer = "auto"  # the default: fused only from LARGE_VOCABULARY_ROWS vocabulary rows on
    assert len(task.target_dictionary) < LARGE_VOCABULARY_ROWS
    assert task.build_criterion(cfg.criterion).output_layer == "full"
    cfg.criterion.mt_teacher = None
    for output_layer in ("full", "fused"):  # and without a teacher (plain CE for MT)
        cfg.criterion.output_layer = output_layer
        crits.append(task.build_criterion(cfg.criterion))
    task.load_dataset("test")
    ds = task.dataset("test")
    return crits, model, ds.collater([ds[i] for i in range(4)])


@pytest.mark.parametrize("chunked", ["lean", "fused", "fused, no MT teacher", "lean, oneDNN", "fused, oneDNN"])
def test_criterion_losses_and_gradients_equal(pair, chunked, monkeypatch):
    """"oneDNN": the chunked layers' products through modules/cpu_matmul.py (--cpu-matmul auto,
    its size threshold lowered so that the tiny model's matrix qualifies), on x86 CPUs."""
    (full, lean, fused, full_no_teacher, fused_no_teacher), model, sample = pair
    if chunked == "fused, no MT teacher":
        assert full_no_teacher.teacher is None
        full = full_no_teacher
    onednn = chunked.endswith("oneDNN")
    if onednn:
        if not torch.backends.cpu.get_cpu_capability().startswith("AVX"):
            pytest.skip("oneDNN's products are used on x86 CPUs only")
        assert model.decoder.output_projection.onednn  # the default, --cpu-matmul auto
        monkeypatch.setattr(cpu_matmul, "MIN_ELEMENTS", 1)
        monkeypatch.setattr(cpu_matmul, "_onednn", mock.Mock(wraps=cpu_matmul._onednn))  # counts the calls
        chunked = chunked.split(",")[0]
    chunked = {"lean": lean, "fused": fused, "fused, no MT teacher": fused_no_teacher}[chunked]
    assert chunked.chunked_output_layer and not full.chunked_output_layer
    V = len(model.decoder.dictionary)
    monkeypatch.setattr(chunked_output, "DEFAULT_CHUNK_ELEMENTS", 5 * V)  # 5 tokens per chunk (fused: per group)
    model.eval()  # no dropout: both runs see the same network
    results = []
    for criterion in (full, chunked):
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
    if onednn:
        assert cpu_matmul._onednn.call_count > 0
        if chunked.teacher is not None:  # the frozen MT teacher follows the model's --cpu-matmul
            assert chunked.teacher.decoder.output_projection.onednn


def test_fused_terms_equal_the_term_by_term_chunks():
    """A step's translation group (MT with an outside teacher, ST and STM-ST taught by MT's p)
    and a transcript group (one term counting only some positions, one of weight 0) in one
    fused call, against token_losses term by term: the same total, per-token losses, argmaxes
    and gradients, under a backward scaled by 3 (as a loss scaler would), in chunks (4 positions of
    the translation group's 3 trained terms, 12 of the transcript group's 1) that do not
    divide the 21 tokens."""
    V = 1000
    h, w, h_t, y = case(V, L=7)
    g = torch.Generator().manual_seed(1)
    feats = {n: torch.randn(h.shape, generator=g).requires_grad_() for n in ("st", "stm_st", "asr", "mtp")}
    feats["mt"] = h
    x = torch.randint(4, V, y.shape, generator=g)
    counted = torch.rand(y.shape, generator=g) < 0.5
    outside = ProjectedStates(h_t, w.detach() * 0.7)
    # term -> (target, weight, counted, teacher, alpha)
    spec = {"st": (y, 0.35, None, "mt", 0.8), "mt": (y, 0.2, None, outside, 0.2), "stm_st": (y, 0.1, None, "mt", 0.8),
            "asr": (x, 0.35, None, None, 0.0), "mtp": (x, 0.0, counted, None, 0.0)}
    keep = {n: t.ne(PAD) if c is None else t.ne(PAD) & c for n, (t, _, c, _, _) in spec.items()}

    def grads():
        out = [w.grad.clone()] + [feats[n].grad.clone() for n in ("st", "mt", "stm_st", "asr")]
        assert feats["mtp"].grad is None or not feats["mtp"].grad.any()  # weight 0: no gradient
        for p in (w, *feats.values()):
            p.grad = None
        return out

    ref_total, ref = 0.0, {}
    for n, (t, wt, _, q, a) in spec.items():
        q = ProjectedStates(feats["mt"], w).detach() if q == "mt" else q
        ref[n] = token_losses(ProjectedStates(feats[n], w), t, q, a)
        ref_total = ref_total + wt * ref[n][0].masked_fill(~keep[n], 0.0).sum()
    (3 * ref_total).backward()
    ref_grads = grads()
    terms = {n: chunked_output.TokenTerm(ProjectedStates(feats[n], w), t, wt, keep[n], q, a)
             for n, (t, wt, _, q, a) in spec.items()}
    total, per_token = chunked_output.fused_token_losses(terms, chunk_elements=12 * V)
    (3 * total).backward()
    assert_close(total.detach(), ref_total.detach(), 1e-5)
    for n in spec:
        assert not per_token[n][0].requires_grad
        assert_close(per_token[n][0], ref[n][0].detach(), 1e-5)
        assert torch.equal(per_token[n][1], ref[n][1])
    for a, b in zip(grads(), ref_grads, strict=True):
        assert_close(a, b, 1e-4)
    with pytest.raises(RuntimeError, match="already taken"):  # its gradients are handed out once
        total2, _ = chunked_output.fused_token_losses(terms)
        total2.backward(retain_graph=True)
        total2.backward()


def test_fused_terms_without_gradient_and_bad_plans():
    h, w, h_t, y = case(300)
    keep = y.ne(PAD)
    with torch.no_grad():  # evaluation: the losses only
        total, per_token = chunked_output.fused_token_losses(
            {"ce": chunked_output.TokenTerm(ProjectedStates(h, w), y, 1.0, keep)})
    assert not total.requires_grad
    assert_close(total, token_losses(ProjectedStates(h, w), y)[0].detach().masked_fill(~keep, 0.0).sum(), 1e-5)
    other_targets = y.clone()
    bad = {"a": chunked_output.TokenTerm(ProjectedStates(h, w), y, 1.0, keep),
           "b": chunked_output.TokenTerm(ProjectedStates(h_t, w), other_targets, 1.0, keep, "a", 0.5)}
    with pytest.raises(ValueError, match="same targets"):
        chunked_output.fused_token_losses(bad)
    bad = {"a": chunked_output.TokenTerm(ProjectedStates(h, w), y, 1.0, keep),
           "b": chunked_output.TokenTerm(ProjectedStates(h_t, w.detach().clone()), y, 1.0, keep)}
    with pytest.raises(ValueError, match="another output matrix"):
        chunked_output.fused_token_losses(bad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_under_autocast(pair, dtype, monkeypatch):
    """The criterion under an outside autocast (fairseq's --amp, the benchmark's --bf16), with
    several chunks: the fused layer runs its products in the autocast dtype, keeps the tied
    weight's gradient in fp32, and its gradients stay within that dtype's rounding of fp32."""
    (full, _, fused, _, _), model, sample = pair
    V = len(model.decoder.dictionary)
    monkeypatch.setattr(chunked_output, "DEFAULT_CHUNK_ELEMENTS", 5 * V)
    model.eval()
    grads = []
    for criterion, autocast in ((full, False), (fused, True)):
        torch.manual_seed(7)
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):
            loss, _, _ = criterion(model, sample)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad(set_to_none=True)
    ref, low = grads
    tied = next(n for n, p in model.named_parameters() if p is model.decoder.output_projection.weight)
    assert ref.keys() == low.keys() and low[tied].dtype == torch.float32
    for name in ref:
        if "k_proj.bias" not in name:  # (zero up to rounding: softmax ignores it)
            assert_close(low[name], ref[name], 3e-2, atol=1e-4)


@pytest.mark.parametrize("dtype,rtol", [(torch.float16, 2e-3), (torch.bfloat16, 1.5e-2), (torch.float32, 1e-5)])
def test_fused_low_precision_products_against_float64(dtype, rtol):
    """Logits in fp16 / bf16 (a 50k-row vocabulary, where most probabilities are tiny), under a
    backward scaled as a loss scaler would: the gradients stay within the dtype's rounding of
    the float64 ones, and no row of the weight's gradient is lost to underflow."""
    g = torch.Generator().manual_seed(0)
    V, C = 50_000, 16
    w0, h0 = torch.randn(V, C, generator=g) * 0.5, torch.randn(2, 6, C, generator=g) * 2
    y = torch.randint(4, V, (2, 6), generator=g)
    h, w = h0.double().requires_grad_(), w0.double().requires_grad_()
    (0.35 * -torch.log_softmax(h @ w.t(), -1).gather(-1, y[..., None]).sum()).backward()
    ref = (h.grad.float(), w.grad.float())
    h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    total, _ = chunked_output.fused_token_losses(
        {"st": chunked_output.TokenTerm(ProjectedStates(h, w, dtype), y, 0.35, torch.ones_like(y, dtype=torch.bool))},
        chunk_elements=4 * V)
    (1024 * total).backward()
    for got, want in zip((h.grad / 1024, w.grad / 1024), ref, strict=True):
        assert float((got - want).norm() / want.norm()) < rtol
    assert int((w.grad.abs().sum(1) == 0).sum()) == 0


def test_fused_criterion_with_no_token_term(pair):
    """--output-layer fused where only CTC is trained: no decoder pass, so no fused call."""
    (_, _, fused, _, _), model, sample = pair
    criterion = copy.copy(fused)  # the same criterion with every decoder-pass weight 0
    criterion.w = {**fused.w, "st": 0.0, "asr": 0.0, "mt": 0.0, "cml": 0.0, "ctc": 1.0}
    assert set(criterion.branches()) == {"ctc"}
    loss, _, log = criterion(model, sample)
    loss.backward()
    model.zero_grad(set_to_none=True)
    assert set(k for k in log if k.endswith("_loss")) == {"ctc_loss"} and float(log["ctc_loss"]) > 0
