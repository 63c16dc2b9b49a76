"""Unit tests (in-process, seconds) of the pieces the multi-process recipe tests rely on.

Unit tests (in-process, seconds) for the pieces the multi-process recipe tests rely on:
the measured schedule, the LR scheduler over it, the CPU DDP shim, Whisper kept out of DDP's
reducer, and mBART activation checkpointing that recomputes in the backward pass.
"""
import socket

import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from comsl_fairseq.lr_schedulers.epoch_polynomial_decay import EpochPolynomialDecayConfig, EpochPolynomialDecaySchedule
from comsl_fairseq.training import schedule as training_schedule
from comsl_fairseq.training.schedule import MeasuredSchedule
from tests.builders import build_task_and_model


def schedule(**kw) -> MeasuredSchedule:
    base = dict(world_size=2, batches_per_epoch=5, batch_size=4, update_freq=2, skip_remainder_batch=False,
                max_epoch=3, max_update=0)
    return MeasuredSchedule(**{**base, **kw})


def test_measured_schedule_arithmetic():
    s = schedule()
    assert s.updates_per_epoch == 3 and s.total_updates == 9 and s.global_batch == 16  # ceil(5 / 2)
    assert schedule(skip_remainder_batch=True).updates_per_epoch == 2
    assert schedule(max_update=7).total_updates == 7 and schedule(max_epoch=0, max_update=0).total_updates is None
    assert s.unfreeze_update(freeze_updates=0, freeze_epochs=2) == 6 and s.unfreeze_update(10, 2) == 10
    assert "world size 2" in s.describe(0, 2) and "unfreeze update 6" in s.describe(0, 2)


def make_scheduler(total=0):
    from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig

    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = FairseqAdam(OmegaConf.structured(FairseqAdamConfig(lr=[1e-3], tpu=False)), params)
    cfg = OmegaConf.structured(EpochPolynomialDecayConfig(warmup_updates=2, end_learning_rate=1e-7, power=2.0,
                                                          total_num_update=total, lr=[1e-3]))
    return EpochPolynomialDecaySchedule(cfg, opt)


def test_lr_decays_over_the_measured_length(monkeypatch):
    monkeypatch.setattr(training_schedule, "_measured", None)
    sched = make_scheduler()
    with pytest.raises(ValueError, match="decay length is unknown"):
        sched.step_begin_epoch(1)
    training_schedule.publish(schedule())  # 9 updates in all
    sched.step_begin_epoch(1)
    assert sched.step_update(1) == pytest.approx(5e-4)  # warm-up
    lrs = [sched.step_update(n) for n in range(2, 10)]
    assert lrs[0] == pytest.approx(1e-3) and all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] == pytest.approx(1e-7) and sched.step_update(8) > 1e-7  # the end is update 9, no earlier
    assert make_scheduler(total=20).step_update(9) > 1e-5  # an explicit --total-num-update wins


@pytest.fixture
def one_process_group():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=1, rank=0)
    yield
    dist.destroy_process_group()


def test_fairseq_pytorch_ddp_wraps_a_cpu_model_and_leaves_frozen_whisper_out(data_dir, one_process_group):
    from fairseq.models import DistributedFairseqModel

    _, _, model = build_task_and_model(data_dir, "--freeze-whisper-epochs", "1")
    args = OmegaConf.create({"tpu": False, "ddp_backend": "pytorch_ddp", "device_id": 1, "broadcast_buffers": False,
                             "bucket_cap_mb": 25, "find_unused_parameters": False, "gradient_as_bucket_view": False,
                             "ddp_comm_hook": "none", "heartbeat_timeout": -1})
    wrapped = DistributedFairseqModel(args, model, process_group=None, device=torch.device("cpu"))  # device_ids=[1]
    ddp = wrapped.module
    whisper = {f"encoder.whisper.{n}" for n, _ in model.encoder.whisper.named_parameters()}
    assert whisper and ddp.parameters_to_ignore == whisper
    assert hasattr(wrapped, "all_reduce_grads")  # the trainer finds the model's own reduction
    _, _, plain = build_task_and_model(data_dir)
    assert plain._ddp_params_and_buffers_to_ignore == []  # no freeze: DDP manages everything


def test_mbart_layers_recompute_in_backward_with_checkpoint_activations(data_dir):
    counts = []
    for flags in ((), ("--checkpoint-activations",)):
        cfg, task, model = build_task_and_model(data_dir, "--erm-layer", "2", *flags)
        calls = []
        model.encoder.mbart.layers[0].fc1.register_forward_hook(lambda *a, calls=calls: calls.append(1))
        task.load_dataset("test")
        ds = task.dataset("test")
        task.build_criterion(cfg.criterion)(model.train(), ds.collater([ds[0], ds[1]]))[0].backward()
        counts.append(len(calls))
    assert counts[1] == 2 * counts[0] > 0  # every encoder pass runs again in the backward
