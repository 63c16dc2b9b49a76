"""Data-parallel training with a frozen Whisper encoder, and fairseq's DDP on CPU processes.

Two problems with fairseq's default ``--ddp-backend pytorch_ddp`` (``torch`` DDP):

1. While Whisper is frozen (it runs under ``torch.no_grad()``) its parameters get no
   gradient. DDP's reducer waits for every parameter it manages and stops the second update
   with "Expected to have finished reduction in the prior iteration". Our mechanism: when a
   freeze is configured, the model lists Whisper's parameters in
   ``_ddp_params_and_buffers_to_ignore`` (read by DDP when it wraps the model), so the reducer
   never waits for them, and :func:`all_reduce_grads` averages their gradients once per update
   after unfreezing. fairseq's trainer calls ``model.all_reduce_grads()`` (through
   ``optimizer.all_reduce_grads``) after the last backward of an update, before clipping, for
   any wrapped model that has one, which is exactly where this belongs.
   Cost: nothing while frozen (no Whisper gradient is communicated at all, where
   ``find_unused_parameters`` or legacy_ddp would all-reduce zeros); after unfreezing, Whisper's
   gradients (~307 M fp32 values for Whisper-medium) are averaged in one pass after the backward
   instead of overlapping with it. ``find_unused_parameters`` (fixed when DDP wraps the model,
   so on for the whole run) would instead search the autograd graph at every step and still
   all-reduce Whisper's zero gradients while frozen. No flag is needed.
2. fairseq builds ``DistributedDataParallel(..., device_ids=[device_id])`` even for a module on
   the CPU, which torch refuses, and under ``torchrun`` it computes the device id as
   ``rank % torch.cuda.device_count()``, a division by zero without GPUs. :func:`install_cpu_shims`
   fixes both for CPU processes only; GPU runs go through fairseq's code unchanged.
"""
import logging
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)

BUCKET_NUMEL = 2**26  # values per all-reduce call (256 MB in fp32), as DDP buckets are bounded


def _data_parallel_group():
    """(group, world size) of data-parallel training, or (None, 1) outside it."""
    from fairseq.distributed import utils as dist_utils

    if not dist.is_initialized():
        return None, 1
    group = dist_utils.get_data_parallel_group()
    return group, dist_utils.get_world_size(group)


def broadcast_from_first_rank(params: list) -> None:
    """Copy the values of ``params`` from the group's first rank to all others (what DDP does
    when it wraps a model, for the parameters it manages, but not for ignored ones)."""
    group, world = _data_parallel_group()
    if world == 1:
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=dist.get_global_rank(group, 0), group=group)


def all_reduce_grads(params: list) -> None:
    """Average the gradients of ``params`` over the data-parallel group, in place.

    Parameters without a gradient join with zeros, so every rank issues the same collectives
    (a rank whose batch did not reach a parameter still contributes, as legacy_ddp does).
    Averaging (not summing) matches DDP: fairseq's trainer multiplies by the world size later.
    No-op outside distributed training.
    """
    group, world = _data_parallel_group()
    if world == 1:
        return
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    for bucket in _buckets(grads):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat, group=group)
        flat.div_(world)
        offset = 0
        for g in bucket:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()


def _buckets(tensors: list):
    """Consecutive groups of tensors of at most BUCKET_NUMEL values (a larger tensor alone)."""
    bucket, numel = [], 0
    for t in tensors:
        if bucket and numel + t.numel() > BUCKET_NUMEL:
            yield bucket
            bucket, numel = [], 0
        bucket.append(t)
        numel += t.numel()
    if bucket:
        yield bucket


class _CpuDistributedDataParallel(DistributedDataParallel):
    """torch DDP that drops ``device_ids``/``output_device`` for a module on the CPU (fairseq
    passes them unconditionally; torch accepts them only for GPU modules)."""

    def __init__(self, module, *args, **kwargs):
        first = next(module.parameters(), None)
        if first is not None and first.device.type == "cpu":
            kwargs.pop("device_ids", None)
            kwargs.pop("output_device", None)
        super().__init__(module, *args, **kwargs)


def _cpu_torchrun_init(original):
    def infer(cfg):
        if torch.cuda.device_count() > 0:
            return original(cfg)
        # torchrun on a machine without GPUs: same assignments, device 0 (the CPU)
        cfg.distributed_init_method = "env://"
        cfg.distributed_world_size = int(os.environ["WORLD_SIZE"])
        cfg.distributed_rank = int(os.environ["RANK"])
        cfg.device_id = 0
        cfg.distributed_no_spawn = True

    return infer


def install_cpu_shims() -> None:
    """Let fairseq's default ``pytorch_ddp`` backend and ``torchrun`` work in CPU processes.

    Installed when the plugin is imported (before fairseq-train starts distributed training);
    both shims act only without GPUs / on CPU modules and are installed once."""
    from fairseq.distributed import utils as dist_utils
    from fairseq.models import distributed_fairseq_model

    if distributed_fairseq_model.DistributedDataParallel is DistributedDataParallel:
        distributed_fairseq_model.DistributedDataParallel = _CpuDistributedDataParallel
    if not getattr(dist_utils._infer_torch_distributed_launch_init, "_comsl_cpu", False):
        shim = _cpu_torchrun_init(dist_utils._infer_torch_distributed_launch_init)
        shim._comsl_cpu = True
        dist_utils._infer_torch_distributed_launch_init = shim
