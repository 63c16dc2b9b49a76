"""--cpu-matmul auto: fp32 products that take no gradient run through oneDNN on x86 CPUs.

The results equal torch's own kernel's to fp32 rounding (only the order of the sums differs:
1e-5 of the largest entry), the calls that take a gradient, run under autocast or in
another dtype are torch's, and beam search finds the same hypotheses.
"""
from argparse import Namespace
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from comsl_fairseq.modules import cpu_matmul
from comsl_fairseq.modules.cpu_matmul import OneDnnLinear, linear, takes_onednn, use_onednn
from tests.builders import build_task_and_model

X86 = torch.backends.cpu.get_cpu_capability().startswith("AVX")


def assert_close(a, b, rtol=1e-5):
    scale = float(b.abs().max())
    assert float((a - b).abs().max()) <= rtol * scale, (float((a - b).abs().max()), scale)


@pytest.fixture
def spy():
    """Counts the products that really went through oneDNN (after the availability check's)."""
    cpu_matmul.onednn_available()
    with mock.patch.object(cpu_matmul, "_onednn", wraps=cpu_matmul._onednn) as s:
        yield s


@pytest.mark.skipif(not X86, reason="oneDNN's products are used on x86 CPUs only")
def test_products_equal_torch_where_onednn_takes_them(spy):
    assert cpu_matmul.onednn_available()
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4096, 256, generator=g)  # 2^20 values: the smallest matrix it takes
    b = torch.randn(4096, generator=g)
    x = torch.randn(10, 256, generator=g)
    rows = torch.randn(37, 4096, generator=g)
    steps = torch.randn(5, 3, 256, generator=g).transpose(0, 1)  # time-major, not contiguous
    full = torch.randn(cpu_matmul.MAX_ROWS, 256, generator=g)
    strided = torch.randn(2 * 4096, generator=g)[::2]  # biases that are views, not dense memory
    broadcast = torch.randn(1, generator=g).expand(4096)
    # rows padded to 12, 12, 40, 16 and none; w.t(): rows @ w
    cases = [(x, w, None), (x, w, b), (rows, w.t(), None), (steps, w, b), (full, w, b), (x, w, strided),
             (x, w, broadcast)]
    for inp, mat, bias in cases:
        assert takes_onednn(inp, mat, bias)
        out = linear(inp, mat, bias)
        assert out.shape == F.linear(inp, mat, bias).shape
        assert_close(out, F.linear(inp, mat, bias))
    assert spy.call_count == len(cases)


def test_availability_check_leaves_the_random_generator_alone(monkeypatch):
    monkeypatch.setattr(cpu_matmul, "_available", None)  # checked anew
    torch.manual_seed(3)
    cpu_matmul.onednn_available()
    after = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(3))


def test_torch_kernel_elsewhere(spy):
    """Bit-equal to F.linear wherever oneDNN is not taken; gradients flow as before."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4096, 256, generator=g)
    x = torch.randn(6, 256, generator=g)
    trained = x.clone().requires_grad_()
    out = linear(trained, w)  # a gradient is taken through it: torch's linear, with autograd
    out.sum().backward()
    assert torch.equal(out.detach(), F.linear(x, w))
    assert_close(trained.grad, w.sum(0).expand_as(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not takes_onednn(x, w)
        assert torch.equal(linear(x, w), F.linear(x, w))
    assert not takes_onednn(x.bfloat16(), w.bfloat16())
    assert not takes_onednn(x[:, :16], w[:1000, :16])  # below MIN_ELEMENTS
    assert not takes_onednn(torch.randn(cpu_matmul.MAX_ROWS + 1, 256), w)  # more rows than MAX_ROWS
    with pytest.raises(RuntimeError, match="cannot be multiplied"):  # torch's own error for a wrong width
        linear(torch.randn(6, 255), w)
    assert torch.equal(linear(x, w, onednn=False), F.linear(x, w))
    assert torch.equal(linear(x[:0], w), F.linear(x[:0], w))  # no rows
    assert spy.call_count == 0


def test_use_onednn_switches_large_linear_layers_only():
    net = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 16))
    keys = list(net.state_dict())
    assert use_onednn(net) == 1
    assert type(net[0]) is OneDnnLinear and type(net[2]) is nn.Linear
    assert list(net.state_dict()) == keys
    x = torch.randn(4, 1024)
    with torch.no_grad():
        expect = F.linear(x, net[0].weight, net[0].bias)
        assert_close(net[0](x), expect)
    out = net[0](x)  # training: nn.Linear's call, with its gradient
    assert torch.equal(out.detach(), expect)
    out.sum().backward()
    assert torch.equal(net[0].bias.grad, torch.full((1024,), 4.0))


@pytest.mark.skipif(not X86, reason="oneDNN's products are used on x86 CPUs only")
def test_beam_search_finds_the_same_hypotheses(data_dir, monkeypatch, spy):
    """The tiny model with every decoder linear layer and its output layer through oneDNN
    (the size threshold lowered to 1) against the same weights with --cpu-matmul torch."""
    monkeypatch.setattr(cpu_matmul, "MIN_ELEMENTS", 1)
    _, task, fast = build_task_and_model(data_dir)
    _, _, plain = build_task_and_model(data_dir, "--cpu-matmul", "torch")
    plain.load_state_dict(fast.state_dict())
    layers = [m for m in fast.decoder.modules() if isinstance(m, nn.Linear)]
    assert layers and all(type(m) is OneDnnLinear for m in layers)
    assert not any(type(m) is OneDnnLinear for m in fast.encoder.modules())  # the encoders keep torch's
    assert fast.decoder.output_projection.onednn and not plain.decoder.output_projection.onednn
    task.load_dataset("test")
    ds = task.dataset("test")
    sample = ds.collater([ds[i] for i in range(4)])
    hyps = []
    for model in (plain.eval(), fast.eval()):
        generator = task.build_generator([model], Namespace(beam=5, prefix_size=1, max_len_b=12))
        calls = spy.call_count
        with torch.no_grad():
            hyps.append(task.inference_step(generator, [model], sample, prefix_tokens=sample["target"][:, :1]))
        assert (spy.call_count > calls) == (model is fast)
    for a, b in zip(*hyps, strict=True):
        assert torch.equal(a[0]["tokens"], b[0]["tokens"])
        assert abs(float(a[0]["score"]) - float(b[0]["score"])) < 1e-4
