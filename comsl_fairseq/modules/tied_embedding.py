"""mBART's shared token embedding, with one gradient buffer per training step.

The V x C token matrix (250,054 x 1024 in mBART-50) is read by every text input of a ComSL
step (the MT and concatenated encoder passes, the source-language tags, each decoder
pass's input tokens) and is also the decoder's output layer. Under torch's own embedding,
each of those reads hands autograd a dense V x C gradient (1 GB in fp32) that is zero-filled,
written in a few hundred rows and summed into the others: about 18 such tensors per
ComSL-Medium step, a fifth of a CPU step's time and a GB or two of its peak.

Here a training forward opens a *step*: the weight enters the graph once through
:class:`_CollectGradient` (an identity), and everything of that forward reads this one view.
A lookup's backward hands back only the rows it read (ids and B x T x C gradients); the
chunked output layer (modules/chunked_output.py) adds its products, or the fused one its
finished product, into one fp32 V x C buffer; the identity's backward then adds the dense
products of the plain output layer, scatters the collected rows in with one ``index_add_``
and returns the sum. Autograd sees a single gradient for the parameter, computed after every
use has finished, so the data parallel reducers (torch DDP's hooks, legacy_ddp) see the same
complete gradient they see with torch's embedding. Rows are summed in another order than
torch's, so gradients agree to float rounding (tested).

With ``--embedding-grad dense``, and in any forward that takes no gradient of the weight
(evaluation, decoding, anything under ``no_grad``), the module is a plain ``nn.Embedding``.

Limits (none reached by fairseq-train's loop, which runs one full backward per forward): a
partial backward that leaves the weight out (``torch.autograd.grad`` of other inputs,
``backward(inputs=...)``) leaves the step's pieces behind for the next backward of that graph;
the rows path has no second derivative (``create_graph``); under bf16 autocast each
plain-output-layer use casts the view anew (the chunked output layers, fused being
mBART-50's default, do not use it); on CUDA, ``index_add_`` sums rows in a nondeterministic
order unless ``torch.use_deterministic_algorithms`` is on (use ``dense`` for bit-repeatable
runs).
"""
import torch
import torch.nn.functional as F
from torch import nn

from comsl_fairseq.modules.cpu_matmul import linear

# --embedding-grad auto: one gradient per step for token matrices from this many values on
# (64 MB in fp32; mBART-50's is 256 M, 40 M trimmed to 40k rows, the tiny arch's 1 M), where
# a dense gradient per use costs a measurable share of a step.
ROWS_MIN_ELEMENTS = 2 ** 24


def embedding_grad_mode(setting: str, rows: int, dim: int) -> str:
    """--embedding-grad resolved for a rows x dim token matrix: "rows" or "dense"."""
    if setting == "auto":
        return "rows" if rows * dim >= ROWS_MIN_ELEMENTS else "dense"
    return setting


class StepGradient:
    """One training forward's gradient of the shared weight, gathered in pieces: ``ids`` and
    ``rows`` (N, N x C per lookup) and ``dense``, the fp32 V x C sum the chunked output layer
    adds into. (It holds no reference to the view, so no reference cycle runs through the graph.)
    """

    def __init__(self, weight_version: int):
        self.ids, self.rows = [], []
        self.dense = None
        self.weight_version = weight_version  # the weight's version when the step opened
        self.closed = False  # its gradient has been handed to autograd

    def add_rows(self, ids: torch.Tensor, grads: torch.Tensor) -> None:
        """ids N, grads N x C: gradient rows of one lookup."""
        self.ids.append(ids)
        self.rows.append(grads)

    def add_product(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Add ``a @ b`` (V x n times n x C, fp32) to the dense part, allocating it the first time."""
        if self.dense is None:
            self.dense = a @ b
        else:
            self.dense.addmm_(a, b)

    def add_dense(self, product: torch.Tensor) -> None:
        """Add a V x C fp32 tensor of the caller's (it may become the buffer itself)."""
        if self.dense is None:
            self.dense = product
        else:
            self.dense.add_(product)


class _CollectGradient(torch.autograd.Function):
    """Identity on the weight; its backward runs after every use of the view and returns their sum."""

    @staticmethod
    def forward(ctx, weight, step):
        ctx.step, ctx.shape, ctx.dtype = step, weight.shape, weight.dtype
        ctx.set_materialize_grads(False)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        step = ctx.step
        total = step.dense  # ours (fp32, from add_product / add_dense): safe to add into
        if grad is not None:
            if total is not None:
                total.add_(grad)
            elif grad.is_contiguous() and grad.dtype == torch.float32 and not grad._is_view():
                total = grad  # the engine's sum of several output-layer products (one alone is a view)
            else:
                total = grad.float().clone(memory_format=torch.contiguous_format)
        if step.ids:
            ids, rows = torch.cat(step.ids), torch.cat(step.rows)
            if total is None:  # no output-layer product this step: only rows were read
                total = torch.zeros(ctx.shape, dtype=torch.float32, device=rows.device)
            total.index_add_(0, ids, rows.to(total.dtype))
        step.ids, step.rows, step.dense = [], [], None  # the buffers are the gradient now
        step.closed = True
        if total is None:
            return None, None
        return total.to(ctx.dtype), None


class _GatherRows(torch.autograd.Function):
    """``F.embedding`` whose backward hands its rows to the step instead of a dense V x C gradient."""

    @staticmethod
    def forward(ctx, weight, ids, padding_idx, step):
        ctx.save_for_backward(ids)
        ctx.padding_idx, ctx.step = padding_idx, step
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        flat_ids, flat_grad = ids.reshape(-1), grad.reshape(-1, grad.size(-1))
        if ctx.padding_idx is not None:  # as torch's embedding: the padding row gets no gradient
            keep = flat_ids.ne(ctx.padding_idx)
            flat_ids, flat_grad = flat_ids[keep], flat_grad[keep]
        ctx.step.add_rows(flat_ids, flat_grad)
        return None, None, None, None


class SharedTokenEmbedding(nn.Embedding):
    """``nn.Embedding`` (same parameter, same state dict) that reads the open step's view of
    its weight during a training forward; see the module docstring."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx=None):
        super().__init__(num_embeddings, embedding_dim, padding_idx=padding_idx)
        self._open = None  # (view of the weight, StepGradient) during a training forward

    def begin_step(self, enabled: bool) -> None:
        """Called at the start of each model forward: open a step when this forward trains
        the weight and ``enabled`` (--embedding-grad rows), else read the parameter itself."""
        trains = enabled and torch.is_grad_enabled() and self.weight.requires_grad
        self._open = None
        if trains:
            step = StepGradient(self.weight._version)
            self._open = (_CollectGradient.apply(self.weight, step), step)

    def __getstate__(self):
        """Copies and pickles (fairseq's --ema deep-copies the model) leave the open step out:
        its view is part of a graph and cannot be copied."""
        state = dict(super().__getstate__())
        state["_open"] = None
        return state

    def current(self) -> tuple:
        """(weight to read, open StepGradient or None) for this forward."""
        if self._open is not None and torch.is_grad_enabled():
            step = self._open[1]
            # a use after the step's backward or after an optimizer step reads the parameter
            if not step.closed and step.weight_version == self.weight._version:
                return self._open
        return self.weight, None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        weight, step = self.current()
        if step is None:
            return super().forward(ids)
        return _GatherRows.apply(weight, ids, self.padding_idx, step)


class TiedOutputProjection(nn.Module):
    """The decoder's output layer ``x @ W^T`` with W the shared token embedding (the same
    parameter, kept under the key ``weight`` as fairseq's tied ``nn.Linear``), reading the
    open step's view like the lookups. ``onednn``: calls that take no gradient go through
    modules/cpu_matmul.py (set by the model's ``--cpu-matmul auto``)."""

    onednn = False

    def __init__(self, embedding: SharedTokenEmbedding):
        super().__init__()
        self.weight = embedding.weight
        self.__dict__["_embedding"] = embedding  # not a submodule: no second state-dict entry

    def current(self) -> tuple:
        """(weight to project with, open StepGradient or None)."""
        if self._embedding.weight is not self.weight:  # re-tied from outside: read our own
            return self.weight, None
        return self._embedding.current()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.current()[0], onednn=self.onednn)
