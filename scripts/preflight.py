#!/usr/bin/env python3
"""Before a multi-day job: check that the inputs fit, time a few real training steps, estimate.

    python scripts/preflight.py [--world-size N] [--steps 3] DATA [the row's fairseq-train flags]
    PREFLIGHT=1 bash examples/covost2/ablations/row7_cml.sh     # the same, with the recipe's exact flags
    python scripts/preflight.py --random-weights --arch whisper_mbart_composite_medium --batch-size 8

With data, in order (each check prints ``[ok]`` or ``[FAIL]`` with what to change):
  DDP backend against freezing, visible devices against the world size, the data config and
  dictionary, every manifest (rows kept / skipped and why), the checkpoints against ``--arch``
  and the dictionary (strict loading), a random sample of clips decoded; then a few real
  training steps through fairseq's Trainer with the row's flags on this machine, and
  estimates: updates per epoch for the world size, hours per epoch and for the run, peak
  memory per device, disk for the checkpoints the run keeps.

``--random-weights`` builds the real shapes of ``--arch`` (published Whisper / mBART-50 sizes,
no checkpoint files), prints parameter counts and the static memory of training (weights,
gradients, Adam state), and with ``--steps`` > 0 times training steps at ``--batch-size``
utterances of ``--seconds`` each and reports the measured peak memory.
The estimates leave out validation and gradient communication between processes.
"""
import argparse
import logging
import math
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GB = 2**30
# Bytes per parameter in training: fp32 weight + gradient + Adam's two moments.
TRAIN_BYTES_PER_PARAM = 4 + 4 + 8
# A fairseq checkpoint holds the fp32 weights and the Adam moments.
CHECKPOINT_BYTES_PER_PARAM = 4 + 8


class Report:
    def __init__(self):
        self.failed = []

    def check(self, name: str, ok: bool, detail: str) -> bool:
        print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)
        if not ok:
            self.failed.append(name)
        return ok

    @staticmethod
    def value(name: str, text: str) -> None:
        print(f"{name}: {text}", flush=True)


def peak_memory_gb(device: torch.device) -> tuple:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GB, "GB allocated on the GPU"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "GB peak RSS of this process"


def visible_devices() -> int:
    return torch.cuda.device_count()


# ------------------------------------------------------------------ data mode
def fairseq_cfg(argv: list):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    if "--user-dir" not in argv:
        argv = [*argv, "--user-dir", str(ROOT / "comsl_fairseq")]
    parser = options.get_training_parser()
    return convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, argv))


def check_config(cfg, world_size: int, report: Report) -> None:
    freezes = cfg.model.get("freeze_whisper_updates", 0) > 0 or cfg.model.get("freeze_whisper_epochs", 0) > 0
    backend = cfg.distributed_training.ddp_backend
    supported = {"pytorch_ddp", "c10d", "legacy_ddp", "no_c10d"}
    report.check("DDP backend vs freezing", backend in supported or not freezes or world_size == 1,
                 f"--ddp-backend {backend}, Whisper freeze {'on' if freezes else 'off'}"
                 + ("" if backend in supported or not freezes else
                    ": use pytorch_ddp (default) or legacy_ddp; fully_sharded flattens parameters, so the frozen "
                    "Whisper weights cannot be kept out of the optimizer step"))
    if freezes and cfg.common.fp16:
        report.check("precision vs freezing", False, "--fp16 keeps flattened fp32 master weights that weight decay "
                     "moves even while Whisper is frozen: use --amp or --memory-efficient-fp16")
    gpus = visible_devices()
    if cfg.common.cpu or gpus == 0:
        report.check("devices vs world size", True, f"CPU run, {world_size} process(es) on this machine")
    else:
        report.check("devices vs world size", gpus >= min(world_size, gpus) and world_size % gpus == 0
                     or world_size < gpus, f"{gpus} visible GPU(s) on this node, world size {world_size}"
                     + ("" if world_size % gpus == 0 or world_size < gpus else
                        ": the world size should be a multiple of the GPUs per node"))


def load_inputs(cfg, report: Report, n_clips: int):
    """Task, datasets, model (strict checkpoint loading), criterion; None where a check failed."""
    from fairseq import tasks

    try:
        task = tasks.setup_task(cfg.task)
    except (OSError, ValueError, KeyError) as e:
        report.check("data config and dictionary", False, str(e))
        return None
    report.check("data config and dictionary", True, f"{len(task.target_dictionary)} symbols")
    for split in [cfg.dataset.train_subset, *cfg.dataset.valid_subset.split(",")]:
        try:
            task.load_dataset(split)
        except (OSError, ValueError) as e:
            report.check(f"manifest {split}", False, str(e))
            return None
        ds = task.dataset(split)
        skipped = ", ".join(f"{n} {why}" for why, n in ds.skipped.items()) or "none"
        report.check(f"manifest {split}", True, f"{len(ds)} rows kept; skipped: {skipped}")
    try:
        model = task.build_model(cfg.model)
    except (OSError, ValueError, RuntimeError) as e:  # CheckpointError is a ValueError
        report.check("checkpoints vs --arch and dictionary", False, str(e))
        return None
    from comsl_fairseq.checkpoints.pretrained import MbartDims, WhisperDims

    w, mb = WhisperDims.from_cfg(cfg.model), MbartDims.from_cfg(cfg.model)  # filled in by build_model
    speech = f"Whisper {w.n_audio_layer} layers d={w.n_audio_state} {w.n_mels} mels; " if w is not None else ""
    report.check("checkpoints vs --arch and dictionary", True,
                 f"--arch {cfg.model._name}: {speech}mBART {mb.encoder_layers}+{mb.decoder_layers} layers "
                 f"d={mb.dim}; {model.decoder.embed_tokens.weight.size(0)} embedding rows")
    train = task.dataset(cfg.dataset.train_subset)
    picks = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n_clips].tolist()
    bad = [train.rows[i].id for i in picks if train[i] is None]
    report.check("clips decode", not bad, f"{len(picks) - len(bad)} of {len(picks)} sampled clips read"
                 + (f"; unreadable: {bad[:5]}" if bad else ""))
    return task, model, task.build_criterion(cfg.criterion)


def time_training(cfg, task, model, criterion, args, report: Report) -> None:
    from fairseq.trainer import Trainer

    from comsl_fairseq.training.schedule import MeasuredSchedule

    trainer = Trainer(cfg, task, model, criterion)
    epoch_itr = trainer.get_train_iterator(epoch=1, load_dataset=False)
    update_freq = cfg.optimization.update_freq[0]
    schedule = MeasuredSchedule(
        world_size=args.world_size, batches_per_epoch=math.ceil(len(epoch_itr) / args.world_size),
        batch_size=cfg.dataset.batch_size, update_freq=update_freq,
        skip_remainder_batch=cfg.optimization.skip_remainder_batch, max_epoch=cfg.optimization.max_epoch,
        max_update=cfg.optimization.max_update)
    trainer.begin_epoch(1)
    times = []
    for i, sample in enumerate(epoch_itr.next_epoch_itr(shuffle=True)):
        if i >= args.warmup_steps + args.steps:
            break
        t0 = time.perf_counter()
        trainer.train_step([sample])
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup_steps:
            times.append(time.perf_counter() - t0)
    if not times:
        report.check("timed steps", False, "the training set has fewer batches than --warmup-steps + 1")
        return
    step_s = sum(times) / len(times)
    hours_epoch = schedule.updates_per_epoch * update_freq * step_s / 3600
    peak, unit = peak_memory_gb(trainer.device)
    params = sum(p.numel() for p in model.parameters())
    kept = cfg.checkpoint.keep_last_epochs if cfg.checkpoint.keep_last_epochs > 0 else cfg.optimization.max_epoch
    ckpt_gb = params * CHECKPOINT_BYTES_PER_PARAM / GB
    report.value("device", f"{trainer.device} ({visible_devices()} visible GPU(s))")
    report.value("step time", f"{step_s:.3f} s per batch of <= {cfg.dataset.batch_size} utterances "
                 f"({len(times)} timed after {args.warmup_steps} warm-up)")
    report.value("schedule", schedule.describe(cfg.model.get("freeze_whisper_updates", 0),
                                               cfg.model.get("freeze_whisper_epochs", 0)))
    report.value("updates per epoch", str(schedule.updates_per_epoch))
    report.value("hours per epoch", f"{hours_epoch:.3g} (world size {args.world_size}, validation excluded)")
    epochs = cfg.optimization.max_epoch or float("nan")
    report.value("hours for the run", f"{hours_epoch * epochs:.3g} ({cfg.optimization.max_epoch} epochs)")
    report.value("peak memory per device", f"{peak:.2f} {unit}")
    report.value("disk for checkpoints", f"{ckpt_gb * (kept + 2):.2f} GB ({kept} epoch checkpoints + best + last, "
                 f"{ckpt_gb:.2f} GB each: {params:,} parameters x {CHECKPOINT_BYTES_PER_PARAM} B)")


# -------------------------------------------------------- random-weights mode
def parameter_table(model) -> dict:
    enc = model.encoder
    shared = enc.mbart.embed_tokens.weight
    mbart_enc = sum(p.numel() for p in enc.mbart.parameters()) - shared.numel()
    dec = sum(p.numel() for p in model.decoder.parameters()) - shared.numel()
    return {"whisper encoder": sum(p.numel() for p in enc.whisper.parameters()),
            "adapter": sum(p.numel() for p in enc.adapter.parameters()),
            "mBART encoder (without token embeddings)": mbart_enc, "mBART decoder (without token embeddings)": dec,
            "shared token embeddings": shared.numel(), "total": sum(p.numel() for p in model.parameters())}


def random_weights(args, report: Report) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import tempfile

    import numpy as np
    from benchmark import arch_dims, build, collate, synthetic_data_folder, timed_step

    import comsl_fairseq  # noqa: F401

    size = args.arch.rsplit("_", 1)[-1]
    if size not in ("tiny", "medium", "large"):
        report.check("arch", False, f"--arch {args.arch}: one of whisper_mbart_composite_{{tiny,medium,large}}")
        return
    device = torch.device(args.device)
    tmp = tempfile.TemporaryDirectory(prefix="comsl_preflight_")
    data = synthetic_data_folder(Path(tmp.name), arch_dims(size)[2])
    model, criterion, task = build(size, 0.0, data, device)
    d = task.target_dictionary
    table = parameter_table(model)
    for name, n in table.items():
        report.value(f"parameters, {name}", f"{n:,}")
    report.value("static training memory", f"{table['total'] * TRAIN_BYTES_PER_PARAM / GB:.2f} GB "
                 f"(fp32 weights + gradients + Adam moments, {TRAIN_BYTES_PER_PARAM} B/parameter; activations extra)")
    if args.steps <= 0:
        return
    rng = np.random.default_rng(0)
    n_text = max(3, round(args.seconds * 3.2))
    batch = collate([(args.seconds, n_text, n_text)] * args.batch_size, d, rng)
    if device.type == "cuda":
        from fairseq import utils

        batch = utils.move_to_cuda(batch, device)
        torch.cuda.reset_peak_memory_stats(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    model.train()
    times = []
    for step in range(args.warmup_steps + args.steps):
        seconds = timed_step(model, criterion, batch, opt, autocast, device)
        if step >= args.warmup_steps:
            times.append(seconds)
    step_s = sum(times) / len(times)
    peak, unit = peak_memory_gb(device)
    report.value("step time", f"{step_s:.3f} s at batch {args.batch_size} x {args.seconds:g} s clips "
                 f"(full ComSL objective, bf16 autocast {args.bf16}, {device})")
    report.value("utterances/s", f"{args.batch_size / step_s:.2f}")
    report.value("peak memory", f"{peak:.2f} {unit}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                                epilog="Other arguments: DATA and the fairseq-train flags of the run to check.")
    p.add_argument("--random-weights", action="store_true", help="the arch's real shapes without checkpoint files")
    p.add_argument("--arch", default=None, help="model architecture (with data: passed on to fairseq)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="utterances per step (random weights: default 8; with data: passed on to fairseq)")
    p.add_argument("--world-size", type=int, default=None,
                   help="processes the run will use (default: visible GPUs, 1 on CPU); sizes updates per epoch")
    p.add_argument("--steps", type=int, default=3, help="timed training steps (0: checks / counts only)")
    p.add_argument("--warmup-steps", type=int, default=1, help="untimed steps first")
    p.add_argument("--sample-clips", type=int, default=16, help="training clips decoded as a check")
    p.add_argument("--seconds", type=float, default=5.5, help="random weights: clip length (CoVoST 2 mean ~5.5 s)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="random weights: default cuda if present")
    p.add_argument("--bf16", action="store_true", help="random weights: bf16 autocast (the recipe's GPU setting)")
    args, rest = p.parse_known_args(argv)
    report = Report()
    torch.manual_seed(0)
    if args.random_weights:
        if args.arch is None:
            p.error("--random-weights needs --arch whisper_mbart_composite_{tiny,medium,large}")
        args.batch_size = args.batch_size or 8
        args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        random_weights(args, report)
        return 1 if report.failed else 0
    rest += ["--arch", args.arch] if args.arch else []
    rest += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    cfg = fairseq_cfg(rest)
    if args.world_size is None:
        args.world_size = 1 if cfg.common.cpu or visible_devices() == 0 else visible_devices()
    check_config(cfg, args.world_size, report)
    inputs = load_inputs(cfg, report, args.sample_clips)
    if inputs is not None and not report.failed and args.steps > 0:
        time_training(cfg, *inputs, args, report)
    print("preflight: " + ("FAILED: " + ", ".join(report.failed) if report.failed else "all checks passed"))
    return 1 if report.failed else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    sys.exit(main())
