"""fp32 products with large matrices on x86 CPUs through oneDNN, where torch's default is slow.

torch runs an fp32 ``x @ W^T`` on the CPU through MKL's sgemm. On this project's machines
(2 cores of an AMD EPYC with AVX-512, torch 2.13) that kernel is slow when ``x`` has few
rows, which is the shape of beam search's decoder steps (batch x beam rows) and of the
chunked output layer's products with mBART-50's 250k x 1024 matrix (a chunk of tokens x
250k). oneDNN's kernel for the same fp32 product, which torch ships for its compiler
(``torch.ops.mkldnn._linear_pointwise``), ran these in milliseconds (medians, 2 threads):

    rows x  W                  MKL     oneDNN
    10  x  1024 x 4096         3.4     1.5      (a decoder layer's FFN, one beam step)
    10  x  250054 x 1024       252     61       (the output layer, one beam step)
    40  x  250054 x 1024       305     155      (a training pass's logits)
    134 x  250054 x 1024       909     406      (a full chunk's logits)
    40  x  (250054 x 1024)^T   236     191      (the chunk's feature gradient, g @ W)

and was never slower among the shapes measured (up to 1,100 rows). Both accumulate in fp32;
the results differ in the last bits (about 2e-6 of values of 3).

oneDNN compiles and keeps a kernel per shape, and memory grows with them: cycling through
every row count from 1 to 256 with six matrices of a decoder layer's sizes left the process
1.86 GB larger (torch's kernel: 44 MB). So the rows are rounded up, with zero rows that are
sliced off again, to a multiple of 4 up to 32 and of 8 up to :data:`MAX_ROWS` (36 shapes per
matrix: 178 MB in the same test), and calls with more rows keep torch's kernel. Beam search
(batch x beam rows) and the chunked output layer (at most 134 rows at 250k) stay below it.

:func:`linear` takes oneDNN's kernel only where no gradient is taken through the call (no
autograd formula is needed), in fp32, outside autocast, for matrices of
:data:`MIN_ELEMENTS` values or more, at most :data:`MAX_ROWS` rows, and on x86; everything
else is ``F.linear`` as before.

The model option ``--cpu-matmul auto|torch`` decides: auto sends the decoder's linear layers
and its tied output layer here (beam search; validation batches of few tokens, except the
self-attention projections, which fairseq's attention reads directly outside beam search), the
frozen MT teacher's decoder likewise, and the chunked output layer's products (training). It
also holds where ``torch.backends.mkldnn`` is disabled (the translator disables it for convolutions, whose
kernels depend on the audio's length: the decoder's shapes depend only on batch x beam).
Models narrower than 1024 (the tiny arch, the toy demo's) have no matrix this large, so
their results do not change.
"""
import logging

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

# Matrices with at least this many values go to oneDNN (mBART-large's 1024 x 1024 and up;
# not the tiny arch's 128-wide layers).
MIN_ELEMENTS = 2 ** 20
# ... and products of at most this many rows (see the module's docstring).
MAX_ROWS = 256

_available = None  # decided on first use: see onednn_available


def onednn_available() -> bool:
    """oneDNN's fp32 linear runs here (x86 with AVX2 or AVX-512) and agrees with ``F.linear``
    (checked once per process, on fixed values: the random generators are not touched)."""
    global _available
    if _available is None:
        ok = False
        capability = torch.backends.cpu.get_cpu_capability()
        if torch.backends.mkldnn.is_available() and capability.startswith("AVX") and \
                hasattr(torch.ops.mkldnn, "_linear_pointwise"):
            try:
                x = torch.arange(3 * 64, dtype=torch.float32).view(3, 64).sin()
                w = torch.arange(32 * 64, dtype=torch.float32).view(32, 64).cos()
                ok = torch.allclose(_onednn(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)
            except RuntimeError as e:  # a build without the op's CPU kernel
                logger.info("oneDNN linear not usable here (%s): torch's kernels are used", e)
        _available = ok  # set once decided: a caller meanwhile checks for itself
    return _available


def _onednn(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    rows = x.reshape(-1, x.size(-1))
    n = rows.size(0)
    padded = -(-n // 4) * 4 if n <= 32 else -(-n // 8) * 8  # a few shapes, a few compiled kernels
    if padded > n:
        rows = torch.cat([rows, rows.new_zeros(padded - n, rows.size(1))])
    bias = bias.contiguous() if bias is not None else None  # (the op reads it as dense memory)
    out = torch.ops.mkldnn._linear_pointwise(rows.contiguous(), w, bias, "none", [], "")
    return out[:n].view(*x.shape[:-1], w.size(0))


def takes_onednn(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether :func:`linear` computes ``x @ w^T`` through oneDNN."""
    if w.numel() < MIN_ELEMENTS or x.numel() == 0 or w.dim() != 2 or x.size(-1) != w.size(1) or \
            x.numel() > MAX_ROWS * x.size(-1):
        return False  # (a width that does not match gets F.linear's own error)
    if x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32:
        return False
    if bias is not None and (tuple(bias.shape) != (w.size(0),) or bias.dtype != torch.float32):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad or (bias is not None and bias.requires_grad)):
        return False
    return not torch.is_autocast_enabled("cpu") and onednn_available()


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, onednn: bool = True) -> torch.Tensor:
    """``x @ w^T + bias`` (``F.linear``), through oneDNN where :func:`takes_onednn` says so and
    ``onednn`` is set. ``w`` may be a transposed view (``g @ W`` is ``linear(g, W.t())``)."""
    if onednn and takes_onednn(x, w, bias):
        return _onednn(x, w, bias)
    return F.linear(x, w, bias)


class OneDnnLinear(nn.Linear):
    """``nn.Linear`` whose no-gradient fp32 CPU calls go through :func:`linear` (the same
    parameters and state-dict keys; training calls are ``nn.Linear``'s)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def use_onednn(module: nn.Module) -> int:
    """Send ``module``'s large ``nn.Linear`` layers, and the parts that read an ``onednn``
    attribute (the tied output layer), through :func:`linear`; returns how many linear
    layers were switched. Smaller layers keep ``nn.Linear`` (see :data:`MIN_ELEMENTS`)."""
    n = 0
    for m in module.modules():
        if type(m) is nn.Linear and m.weight.numel() >= MIN_ELEMENTS:
            m.__class__ = OneDnnLinear
            n += 1
        elif hasattr(m, "onednn"):
            m.onednn = True
    return n
