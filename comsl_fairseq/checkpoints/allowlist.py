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
import typing

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
