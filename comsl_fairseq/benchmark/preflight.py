"""Preflight of a training run: input checks, a few timed real training steps, estimates of time, memory and disk."""
import math
import resource
import time
from pathlib import Path

import torch

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


def padding(cfg, dataset, bucket_seconds: float) -> tuple:
    """(batches, padding fractions) of the training set as batched with --audio-bucket-seconds
    ``bucket_seconds`` and the run's --max-tokens / --batch-size."""
    from fairseq.data import data_utils
    from whisper.audio import SAMPLE_RATE

    saved = dataset.bucket_samples
    dataset.bucket_samples = int(bucket_seconds * SAMPLE_RATE)
    try:
        with data_utils.numpy_seed(cfg.common.seed):
            indices = dataset.ordered_indices()
        batches = dataset.batch_by_size(indices, max_tokens=cfg.dataset.max_tokens,
                                        max_sentences=cfg.dataset.batch_size,
                                        required_batch_size_multiple=cfg.dataset.required_batch_size_multiple)
    finally:
        dataset.bucket_samples = saved
    return batches, dataset.padding_fractions(batches)


def report_padding(cfg, task, report: Report, compare_seconds: float = 1.0) -> None:
    """The padding share of audio, transcripts and translations in the training batches, with
    this run's bucketing and, for comparison, with the other kind (audio alone or buckets of
    ``compare_seconds`` sorted by text)."""
    dataset = task.dataset(cfg.dataset.train_subset)
    ours = cfg.task.audio_bucket_seconds
    for seconds in (ours, compare_seconds if ours == 0 else 0.0):
        batches, frac = padding(cfg, dataset, seconds)
        how = f"--audio-bucket-seconds {seconds:g}" + (" (this run)" if seconds == ours else "")
        report.value(f"padding, {how}", f"audio {100 * frac['audio']:.1f} %, transcript "
                     f"{100 * frac['transcript']:.1f} %, translation {100 * frac['translation']:.1f} % of the "
                     f"batch tensors ({len(batches)} training batches)")


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
    cached = cached_epochs(cfg)
    if cached:
        whisper_s = whisper_forward_seconds(model, sample, trainer.device)
        saved = schedule.updates_per_epoch * update_freq * min(whisper_s, step_s) / 3600
        report.value("Whisper feature cache", f"epochs 2-{cached + 1} read the frozen Whisper outputs instead of "
                     f"computing them: {whisper_s:.3f} s less per batch, {hours_epoch - saved:.3g} hours per such "
                     f"epoch (disk: about {feature_cache_gb(task, model):.2f} GB)")
        report.value("hours for the run", f"{hours_epoch * epochs - saved * cached:.3g} "
                     f"({cfg.optimization.max_epoch} epochs, {cached} of them with cached Whisper outputs)")
    else:
        report.value("hours for the run", f"{hours_epoch * epochs:.3g} ({cfg.optimization.max_epoch} epochs)")
    report.value("peak memory per device", f"{peak:.2f} {unit}")
    report.value("disk for checkpoints", f"{ckpt_gb * (kept + 2):.2f} GB ({kept} epoch checkpoints + best + last, "
                 f"{ckpt_gb:.2f} GB each: {params:,} parameters x {CHECKPOINT_BYTES_PER_PARAM} B)")


def cached_epochs(cfg) -> int:
    """Epochs that read Whisper's outputs from --whisper-feature-cache: the frozen epochs but the
    first, which fills it (--freeze-whisper-epochs; a freeze counted in updates is not estimated)."""
    if not cfg.model.get("whisper_feature_cache"):
        return 0
    frozen = min(cfg.model.get("freeze_whisper_epochs", 0), cfg.optimization.max_epoch or 0)
    return max(frozen - 1, 0)


def whisper_forward_seconds(model, sample, device, repeats: int = 2) -> float:
    """Wall time of the frozen Whisper forward (no cache) on one training batch."""
    from fairseq import utils

    net = utils.move_to_cuda(sample, device)["net_input"] if device.type == "cuda" else sample["net_input"]
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.encoder._whisper_forward(net["src_tokens"], net["src_lengths"])
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return min(times)


def feature_cache_gb(task, model) -> float:
    """Disk the cache takes for the training set: one fp32 vector of Whisper's width per encoder
    frame (50 per second of audio) of every clip; padding and trailing silence come on top."""
    from whisper.audio import SAMPLE_RATE

    seconds = float(task.dataset(task.cfg.train_subset).n_samples.sum()) / SAMPLE_RATE
    width = model.encoder.whisper.ln_post.normalized_shape[0]
    return seconds * 50 * width * 4 / GB


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
    import tempfile

    from comsl_fairseq.benchmark.synthetic import arch_dims, build, recipe_optimizer, synthetic_data_folder, timed_step

    size = args.arch.rsplit("_", 1)[-1]
    if size not in ("tiny", "medium", "large"):
        report.check("arch", False, f"--arch {args.arch}: one of whisper_mbart_composite_{{tiny,medium,large}}")
        return
    device = torch.device(args.device)
    tmp = tempfile.TemporaryDirectory(prefix="comsl_preflight_")
    data = synthetic_data_folder(Path(tmp.name), arch_dims(size)[2])
    model, criterion, task, cfg = build(size, 0.0, data, device, flags=args.flags, with_cfg=True)
    d = task.target_dictionary
    table = parameter_table(model)
    for name, n in table.items():
        report.value(f"parameters, {name}", f"{n:,}")
    report.value("static training memory", f"{table['total'] * TRAIN_BYTES_PER_PARAM / GB:.2f} GB "
                 f"(fp32 weights + gradients + Adam moments, {TRAIN_BYTES_PER_PARAM} B/parameter; activations extra)")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    model.train()
    if args.max_memory_gb:  # before any optimizer step: on CPU the peak RSS only grows
        largest_batches(model, criterion, d, args, device, autocast, table["total"], report)
    if args.steps <= 0:
        return
    batch = utterance_batch(d, args.batch_size, args.seconds, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    opt = recipe_optimizer(cfg, model)
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


def utterance_batch(d, batch_size: int, seconds: float, device):
    """``batch_size`` synthetic utterances of ``seconds`` each (CoVoST-like text lengths)."""
    import numpy as np

    from comsl_fairseq.benchmark.synthetic import collate, to_device

    n_text = max(3, round(seconds * 3.2))
    return to_device(collate([(seconds, n_text, n_text)] * batch_size, d, np.random.default_rng(0)), device)


def forward_backward_peak(model, criterion, batch, autocast, device) -> float:
    """Peak memory (GB) of one forward + backward pass (no optimizer step)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with autocast:
        loss = criterion(model, batch)[0]
    loss.backward()
    model.zero_grad(set_to_none=True)
    return peak_memory_gb(device)[0]


def largest_batches(model, criterion, d, args, device, autocast, n_params: int, report: Report) -> None:
    """The largest batch of --seconds clips that fits each --max-memory-gb budget: peak
    memory of forward + backward measured at --batch-size b and 2b (smaller first: on CPU the
    peak RSS only grows), a straight line through both, plus Adam's two fp32 moments
    (8 B/parameter), which these passes do not allocate."""
    b = args.batch_size
    peaks = [forward_backward_peak(model, criterion, utterance_batch(d, n, args.seconds, device), autocast, device)
             for n in (b, 2 * b)]
    per_utt = (peaks[1] - peaks[0]) / b
    if per_utt <= 0:
        report.value("largest batch", f"not measurable: the peak did not grow from batch {b} to {2 * b} "
                     f"({peaks[0]:.2f} / {peaks[1]:.2f} GB); use a larger --batch-size")
        return
    adam = n_params * 8 / GB
    fixed = peaks[0] - per_utt * b + adam
    unit = peak_memory_gb(device)[1]
    report.value("memory model", f"{fixed:.2f} GB + {per_utt:.3f} GB per utterance of {args.seconds:g} s "
                 f"({unit}, forward + backward at batch {b} / {2 * b}: {peaks[0]:.2f} / {peaks[1]:.2f} GB; "
                 f"+ {adam:.2f} GB of Adam moments)")
    for budget in args.max_memory_gb:
        n = math.floor((budget - fixed) / per_utt)
        report.value(f"largest batch in {budget:g} GB", f"{max(n, 0)} utterances of {args.seconds:g} s"
                     + ("" if n > 0 else " (the model and optimizer alone do not fit)"))


def run(args, rest: list) -> int:
    """The checks, timings and estimates of ``comsl-preflight`` (``rest``: DATA and fairseq-train flags)."""
    from comsl_fairseq.training.fairseq_setup import train_cfg

    report = Report()
    torch.manual_seed(0)
    if args.random_weights:
        if args.arch is None:
            raise SystemExit("error: --random-weights needs --arch whisper_mbart_composite_{tiny,medium,large}")
        args.batch_size = args.batch_size or 8
        args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        args.flags = rest  # e.g. --output-layer full
        random_weights(args, report)
        return 1 if report.failed else 0
    rest += ["--arch", args.arch] if args.arch else []
    rest += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    cfg = train_cfg(rest)
    if args.world_size is None:
        args.world_size = 1 if cfg.common.cpu or visible_devices() == 0 else visible_devices()
    check_config(cfg, args.world_size, report)
    inputs = load_inputs(cfg, report, args.sample_clips)
    if inputs is not None:
        report_padding(cfg, inputs[0], report)
    if inputs is not None and not report.failed and args.steps > 0:
        time_training(cfg, *inputs, args, report)
    print("preflight: " + ("FAILED: " + ", ".join(report.failed) if report.failed else "all checks passed"))
    return 1 if report.failed else 0

