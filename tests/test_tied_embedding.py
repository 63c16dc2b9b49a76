"""--embedding-grad rows (one gradient buffer for the shared embedding per step) against
torch's embedding (--embedding-grad dense): the same gradients, in one tensor per step.

Tolerance: fp32 on both sides; the same products and rows, summed in another order, so
gradients agree to 1e-5 of each tensor's largest entry.
"""
import copy

import pytest
import torch

from comsl_fairseq.modules import chunked_output
from comsl_fairseq.modules.tied_embedding import (
    ROWS_MIN_ELEMENTS,
    SharedTokenEmbedding,
    TiedOutputProjection,
    embedding_grad_mode,
)
from tests.builders import build_task_and_model
from tests.test_chunked_output import assert_close


@pytest.fixture(scope="module")
def built(data_dir, whisper_pt, mbart_dir):
    """A tiny pretrained model (--embedding-grad dense, switched per run below) and a batch."""
    cfg, task, model = build_task_and_model(data_dir, "--whisper-checkpoint", str(whisper_pt),
                                            "--mbart-checkpoint", str(mbart_dir / "model.pt"),
                                            "--mt-teacher", str(mbart_dir / "model.pt"), "--erm-layer", "2",
                                            "--embedding-grad", "dense")
    assert model.embedding_grad == "dense"  # the flag reaches the model
    task.load_dataset("test")
    ds = task.dataset("test")
    return cfg, task, model, ds.collater([ds[i] for i in range(4)])


def gradients(built, mode: str, output_layer: str) -> tuple:
    cfg, task, model, sample = built
    model.embedding_grad = mode
    cfg.criterion.output_layer = output_layer
    criterion = task.build_criterion(cfg.criterion)
    model.eval()  # no dropout: both runs see the same network (gradients are still taken)
    torch.manual_seed(7)  # the same CML masking
    loss, _, _ = criterion(model, sample)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.parametrize("output_layer", ["full", "lean", "fused"])
def test_rows_mode_gives_the_dense_gradients(built, output_layer, monkeypatch):
    monkeypatch.setattr(chunked_output, "DEFAULT_CHUNK_ELEMENTS", 5 * len(built[1].target_dictionary))
    l_rows, g_rows = gradients(built, "rows", output_layer)
    l_dense, g_dense = gradients(built, "dense", output_layer)
    assert torch.equal(l_rows, l_dense)  # the forward is the same arithmetic
    model = built[2]
    tied = next(n for n, p in model.named_parameters() if p is model.decoder.embed_tokens.weight)
    assert g_rows.keys() == g_dense.keys() and tied in g_rows
    assert not g_rows[tied].is_sparse and g_rows[tied].dtype == torch.float32
    for name in g_dense:
        assert_close(g_rows[name], g_dense[name], 1e-5)


def test_one_gradient_per_step_and_plain_embedding_elsewhere():
    """Every use of a step adds into one gradient; rows outside the batch get only the output
    layer's share; outside a gradient-taking forward the module is nn.Embedding."""
    torch.manual_seed(0)
    emb = SharedTokenEmbedding(50, 6, padding_idx=1)
    proj = TiedOutputProjection(emb)
    ref = torch.nn.Embedding(50, 6, padding_idx=1)
    ref.weight.data.copy_(emb.weight.data)
    ids = torch.tensor([[3, 7, 1, 7], [9, 9, 2, 1]])
    x = torch.randn(2, 3, 6)

    def loss(lookup, weight):
        return (lookup(ids) ** 2).sum() + lookup(ids[:, :2]).sum() + torch.log_softmax(x @ weight.t(), -1)[..., 5].sum()

    emb.begin_step(True)
    loss(emb, proj.current()[0]).backward()
    ref_loss = loss(ref, ref.weight)
    ref_loss.backward()
    assert_close(emb.weight.grad, ref.weight.grad, 1e-6)
    assert float(emb.weight.grad[1].abs().max()) > 0  # the output layer reaches the padding row ...
    emb.weight.grad = None
    ref.weight.grad = None
    emb.begin_step(True)
    (emb(ids) ** 2).sum().backward()  # ... a lookup never does; no output layer in this step
    (ref(ids) ** 2).sum().backward()
    assert torch.equal(emb.weight.grad[1], torch.zeros(6)) and emb.weight.grad.shape == (50, 6)
    assert_close(emb.weight.grad, ref.weight.grad, 1e-6)
    with torch.no_grad():
        emb.begin_step(True)
        assert emb.current() == (emb.weight, None)
        assert torch.equal(emb(ids), ref(ids))
    assert list(dict(proj.named_parameters())) == ["weight"] and proj.weight is emb.weight
    emb.begin_step(True)
    (emb(ids) ** 2).sum().backward()
    emb.weight.grad = None
    with torch.no_grad():
        emb.weight.add_(0.1)  # an optimizer step
    assert emb.current() == (emb.weight, None)  # after its backward and the update, the step is not read again
    (emb(ids) ** 2).sum().backward()  # a use outside a model forward: torch's embedding
    assert emb.weight.grad.shape == (50, 6)
    emb.begin_step(True)  # a step left open (forward without backward) does not stop a deep copy (--ema)
    twin = copy.deepcopy(emb)
    assert twin.current() == (twin.weight, None) and torch.equal(twin.weight, emb.weight)


def test_auto_picks_rows_for_large_token_matrices_only(data_dir):
    _, task, model = build_task_and_model(data_dir)  # the tiny fixture's vocabulary, the default auto
    weight = model.decoder.embed_tokens.weight
    assert weight.numel() < ROWS_MIN_ELEMENTS and model.embedding_grad == "dense"
    assert embedding_grad_mode("auto", 250_056, 1024) == "rows"  # mBART-50
    assert embedding_grad_mode("auto", 40_061, 1024) == "rows"  # mBART-50 trimmed to 40k rows
    assert embedding_grad_mode("auto", 8_002, 128) == "dense"  # the tiny arch
    assert embedding_grad_mode("rows", 8_002, 128) == "rows" and embedding_grad_mode("dense", 250_056, 1024) == "dense"
