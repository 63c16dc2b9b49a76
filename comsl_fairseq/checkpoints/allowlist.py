"""Let torch >= 2.6 load fairseq checkpoints with ``weights_only=True``.

Since torch 2.6, ``torch.load`` refuses any pickled global that is not on an
allowlist. fairseq checkpoints pickle a handful of harmless classes (the training
``argparse.Namespace``, numpy scalars kept by metric meters, and for the rank
broadcast of a resumed state the omegaconf containers and fairseq's tensor
placeholder). We allowlist exactly those, so ``fairseq-generate --path``, training
resume and our pretrained loaders work while a checkpoint carrying any other
callable is still refused. The weights-only protection is never switched off.
"""
import argparse
import collections
import logging
import pickle
import re
import typing
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)


def _numpy_globals() -> list:
    """numpy array and scalar reconstruction, under numpy 1 and numpy 2 module names."""
    core = getattr(np, "_core", None) or np.core
    found = [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype]
    # numpy >= 1.25 pickles dtypes by their class (np.dtypes.Float64DType, ...).
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        found += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")]
    return found


def _omegaconf_globals() -> list:
    """omegaconf containers as pickled inside a broadcast training state."""
    import omegaconf
    from omegaconf import base, nodes

    found = [omegaconf.DictConfig, omegaconf.ListConfig, base.ContainerMetadata, base.Metadata]
    found += [
        getattr(nodes, name)
        for name in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode",
                     "EnumNode", "BytesNode", "PathNode")
        if hasattr(nodes, name)
    ]
    return found


def _fairseq_globals() -> list:
    from fairseq.distributed import utils as dist_utils

    return [dist_utils._TensorPlaceholder]


def fairseq_checkpoint_globals() -> list:
    """Every class a fairseq checkpoint or its distributed broadcast may pickle."""
    return (
        [argparse.Namespace, collections.defaultdict, collections.OrderedDict, dict, list,
         set, tuple, int, float, bool, str, typing.Any]
        + _numpy_globals()
        + _omegaconf_globals()
        + _fairseq_globals()
    )


def allow_fairseq_checkpoints() -> None:
    """Register the fairseq checkpoint classes with torch's weights-only unpickler."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is None:  # torch < 2.4 has no allowlist and no weights-only default
        return
    add(fairseq_checkpoint_globals())


class UnsafeCheckpointError(ValueError):
    """A file whose pickle names a callable outside the allowlist: loading it would run code."""


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load_weights_only(path, what: str = "checkpoint"):
    """``torch.load`` of ``path`` on the CPU with the weights-only unpickler, and errors that
    name the file: missing, empty, truncated, or pickling code (refused, never run)."""
    from comsl_fairseq.checkpoints.files import checkpoint_problem

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        return torch.load(path, map_location="cpu")  # weights_only=True (torch >= 2.6)
    except Exception as e:  # noqa: BLE001  (torch raises RuntimeError, EOFError, ... for broken files)
        found = _GLOBAL.search(str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if found:  # the weights-only unpickler met a callable it does not allow
            raise UnsafeCheckpointError(
                f"{what} {path} would run code when loaded (it pickles {found[1]}, which is not a tensor, "
                "number or training setting) and is refused; use a checkpoint written by fairseq-train or "
                "torch.save of tensors only") from None
        # anything else is a file that is not (or no longer) a checkpoint: a text file, a truncated copy
        problem = checkpoint_problem(path) or "not a torch checkpoint (its bytes are not a pickle torch can read)"
        raise ValueError(f"cannot read {what} {path}: {problem}; copy or write it again") from None
