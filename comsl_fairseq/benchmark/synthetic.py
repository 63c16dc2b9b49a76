"""Synthetic-batch training and decoding throughput: our pass structure vs the original's."""
import math
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from whisper.audio import SAMPLE_RATE

MBART50_VOCABULARY_ROWS = 250_054  # mBART-50's embedding rows: 4 specials, 249,997 pieces, 52 tags, <mask>


def arch_dims(arch: str) -> tuple:
    """(WhisperDims, MbartDims, vocabulary rows of the pretrained mBART) of each arch's real
    shapes; the plugin itself reads them from checkpoints."""
    from comsl_fairseq.models.whisper_mbart_composite import ARCH_DIMS

    return (*ARCH_DIMS[f"whisper_mbart_composite_{arch}"], 8000 if arch == "tiny" else MBART50_VOCABULARY_ROWS)


TRIMMED_CONFIG = "config_trimmed.yaml"  # the synthetic data config of the trimmed-vocabulary row


def synthetic_data_folder(folder: Path, n_pretrained: int, keep_pieces: int = 0) -> Path:
    """A data folder the real task reads: a SentencePiece model (unused: the benchmark draws
    token ids), a dict.txt that with the ML50 tags and <mask> gives ``n_pretrained`` rows,
    and config.yaml; with ``keep_pieces`` also a keep file of that many pieces and
    :data:`TRIMMED_CONFIG`, the same config with ``trim_vocab`` naming it."""
    from comsl_fairseq.vocab.languages import ML50_TAGS
    from comsl_fairseq.vocab.trim import write_keep_file
    from comsl_fairseq.vocab.vocabulary import train_sentencepiece

    train_sentencepiece([f"w{i} w{i + 1} w{i + 2}" for i in range(300)], folder, vocab_size=60)
    n_words = n_pretrained - 4 - len(ML50_TAGS) - 1  # <s> <pad> </s> <unk>, tags, <mask>
    (folder / "dict.txt").write_text("".join(f"w{i} 1\n" for i in range(n_words)), encoding="utf-8")
    config = "vocab_filename: dict.txt\nbpe_tokenizer: {bpe: sentencepiece, sentencepiece_model: sentence.bpe.model}\n"
    (folder / "config.yaml").write_text(config, encoding="utf-8")
    if keep_pieces:
        write_keep_file(folder / "vocab_keep.txt", [f"w{i}" for i in range(min(keep_pieces, n_words))])
        (folder / TRIMMED_CONFIG).write_text(config + "trim_vocab: vocab_keep.txt\n", encoding="utf-8")
    return folder


# The recipe's optimizer (fairseq-train flags); the benchmark's learning rate is a placeholder.
RECIPE_OPTIMIZER = ["--optimizer", "adam_grouped", "--adam-betas", "(0.9, 0.98)", "--adam-eps", "1e-6",
                    "--weight-decay", "0.1", "--lr", "1e-5"]

# Each speed/memory switch of ours: (fairseq-train flags that turn it on, flags that turn it off).
# The benchmark times ours with every switch off, with each one on alone, and with the defaults
# (no switch flags: the fused output layer and the one embedding gradient are on for large
# vocabularies only).
SWITCHES = {
    "lean output layer": (["--output-layer", "lean"], ["--output-layer", "full"]),
    "fused output layer": (["--output-layer", "fused"], ["--output-layer", "full"]),
    "foreach Adam": ([], ["--no-foreach"]),
    "one embedding gradient": (["--embedding-grad", "rows"], ["--embedding-grad", "dense"]),
    "oneDNN CPU products": (["--cpu-matmul", "auto"], ["--cpu-matmul", "torch"]),
}


def build(arch: str, pad_seconds: float, data: Path, device, stack_decoder_passes: bool = False, flags=(),
          with_cfg: bool = False):
    """Task, model and criterion as fairseq-train builds them, with the arch's dims put in
    the model config (as a trained model's are): random weights, no checkpoint read.
    ``flags``: more fairseq-train flags; ``with_cfg``: also return the parsed configuration."""
    from omegaconf import open_dict

    from comsl_fairseq.training.fairseq_setup import build_task_and_model, train_cfg

    cfg = train_cfg([data, "--task", "comsl_speech_to_text", "--arch", f"whisper_mbart_composite_{arch}",
                     "--criterion", "comsl_multitask", "--whisper-pad-seconds", str(pad_seconds), *RECIPE_OPTIMIZER]
                    + (["--stack-decoder-passes"] if stack_decoder_passes else []) + list(flags))
    whisper, mbart, _ = arch_dims(arch)
    with open_dict(cfg.model):
        cfg.model.whisper_dims, cfg.model.mbart_dims = whisper.to_cfg(), mbart.to_cfg()
    task, model = build_task_and_model(cfg)
    built = (model.to(device), task.build_criterion(cfg.criterion), task)
    return (*built, cfg) if with_cfg else built


def recipe_optimizer(cfg, model):
    """The torch optimizer fairseq-train would step with these flags (adam_grouped)."""
    from fairseq import optim

    return optim.build_optimizer(cfg.optimizer, list(model.parameters())).optimizer


def original_unused_pass() -> dict:
    """The original code's seventh decoder pass, translation from H_c^x, which feeds no loss
    (the plugin never runs it): routed here only to time the original's pass structure."""
    from comsl_fairseq.modules.branches import CONCAT_TEXT, TRANSLATION, Branch

    return {"mt_from_concat": Branch(CONCAT_TEXT, TRANSLATION)}


def utterances(n: int, rng: np.random.Generator, max_seconds: float) -> list:
    """(seconds, transcript length, translation length): CoVoST 2-like, mean ~5 s in 1-15 s."""
    secs = np.clip(rng.lognormal(mean=math.log(4.6), sigma=0.45, size=n), 1.0, max_seconds)
    src = np.maximum(3, (secs * 3.2 + rng.normal(0, 2, n)).round()).astype(int)
    tgt = np.maximum(3, (secs * 3.0 + rng.normal(0, 2, n)).round()).astype(int)
    return list(zip(secs.tolist(), src.tolist(), tgt.tolist(), strict=True))


def collate(utts, d, rng):
    from comsl_fairseq.data.dataset import SpeechTextDataset

    ds = SpeechTextDataset("bench", [], Path("."), d, [], [], shuffle=False)
    words = np.arange(d.nspecial, d.nspecial + 100)
    fr, en = d.index("[fr_XX]"), d.index("[en_XX]")
    samples = []
    for i, (sec, ls, lt) in enumerate(utts):
        samples.append({
            "index": i, "utt_id": f"bench_{i}",
            "audio": torch.from_numpy(0.1 * rng.standard_normal(int(sec * SAMPLE_RATE)).astype(np.float32)),
            "src_text": torch.tensor([fr, *rng.choice(words, ls), d.eos()]),
            "tgt_text": torch.tensor([en, *rng.choice(words, lt), d.eos()]), "src_lang": fr})
    return ds.collater(samples)


def to_device(sample, device):
    from fairseq import utils

    return utils.move_to_cuda(sample, device) if device.type == "cuda" else sample


def make_batches(utts, batch_size: int, bucketed: bool, rng):
    order = np.argsort([u[0] for u in utts], kind="stable") if bucketed else rng.permutation(len(utts))
    batches = [[utts[i] for i in order[k:k + batch_size]] for k in range(0, len(utts), batch_size)]
    rng.shuffle(batches)
    return batches


class Config:
    """One benchmarked setup. ``flags``: fairseq-train flags of ours (None: the paper-style
    setup, stepped with torch's AdamW as the original code is). ``feature_cache`` (timed with
    Whisper frozen only): None, "read" (each clip's features stored before the timed steps, as
    in the second and later frozen epochs) or "fill" (an empty cache: the first frozen epoch)."""

    def __init__(self, name, pad_seconds, bucketed, extra_branches, stack_decoder_passes, flags=None,
                 feature_cache=None):
        self.name, self.pad_seconds, self.bucketed, self.extra_branches = name, pad_seconds, bucketed, extra_branches
        self.stack_decoder_passes = stack_decoder_passes
        self.flags = flags
        self.feature_cache = feature_cache


PAPER_STYLE = "paper-style (11 s, 7 passes)"
TRIMMED = "ours + trimmed vocabulary"
FEATURE_CACHE = "ours + Whisper feature cache only"
FILLING = "ours, first frozen epoch (fills the feature cache)"
# With --frozen-whisper every row freezes Whisper for longer than any benchmark runs (the
# recipes freeze it by epochs; the benchmark has none).
FROZEN_UPDATES = 10 ** 9
# B x T x V log-probabilities, a dense embedding gradient per use and torch's CPU kernels, as the original
PAPER_STYLE_FLAGS = ["--output-layer", "full", "--embedding-grad", "dense", "--cpu-matmul", "torch"]


def configs(stack_decoder_passes: bool, names=None, trimmed: bool = False, frozen: bool = False) -> list:
    """Paper-style, ours with every switch off, each switch alone, ours with the defaults
    (the row ``speedup_vs_fixed11`` reads), and with ``trimmed`` ours with the defaults and a
    trimmed vocabulary (a data config switch, not a flag); ``names`` selects among them.
    ``frozen`` (Whisper frozen in every row): the Whisper feature cache is one more switch, on
    in ours and the trimmed row, and a row times ours while it fills the cache."""
    def ours(on: tuple) -> list:  # the "on" flags last: they win where two switches set one option
        return [f for name, (_, no) in SWITCHES.items() if name not in on for f in no] + \
            [f for name, (yes, _) in SWITCHES.items() if name in on for f in yes]

    cache = "read" if frozen else None
    rows = [Config(PAPER_STYLE, 11.0, False, original_unused_pass(), False),
            Config("ours, switches off", 0.0, True, {}, stack_decoder_passes, ours(()))]
    rows += [Config(f"ours + {name} only", 0.0, True, {}, stack_decoder_passes, ours((name,))) for name in SWITCHES]
    if frozen:
        rows.append(Config(FEATURE_CACHE, 0.0, True, {}, stack_decoder_passes, ours(()), feature_cache="read"))
    rows.append(Config("ours", 0.0, True, {}, stack_decoder_passes, [], feature_cache=cache))
    if frozen:
        rows.append(Config(FILLING, 0.0, True, {}, stack_decoder_passes, [], feature_cache="fill"))
    if trimmed:
        rows.append(Config(TRIMMED, 0.0, True, {}, stack_decoder_passes, ["--config-yaml", TRIMMED_CONFIG],
                           feature_cache=cache))
    return [c for c in rows if names is None or c.name in names or c.name == "ours"]


def row_flags(conf, args, data: Path) -> list:
    """A row's fairseq-train flags, with Whisper frozen and the row's feature cache folder
    under ``--frozen-whisper``: one folder that "read" rows share (its entries are keyed by
    clip, Whisper weights and input settings, the same in each row's process), a new empty one
    for a "fill" row."""
    flags = list(conf.flags if conf.flags is not None else PAPER_STYLE_FLAGS)
    if args.frozen_whisper:
        flags += ["--freeze-whisper-updates", str(FROZEN_UPDATES)]
        if conf.feature_cache == "read":
            flags += ["--whisper-feature-cache", str(data / "whisper_feature_cache")]
        elif conf.feature_cache == "fill":
            flags += ["--whisper-feature-cache", tempfile.mkdtemp(prefix="whisper_feature_cache_", dir=data)]
    return flags


def fill_feature_cache(model, batches) -> None:
    """Each clip's frozen Whisper features into the model's cache (computed where absent),
    untimed: the state of the cache in the second and later frozen epochs."""
    with torch.no_grad():
        for batch in batches:
            model.encoder.whisper_features(batch["net_input"]["src_tokens"], batch["net_input"]["src_lengths"])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_step(model, criterion, batch, opt, autocast, device) -> float:
    """One training step (forward, backward, optimizer step unless ``opt`` is None); its
    wall time in seconds."""
    sync(device)
    t0 = time.perf_counter()
    with autocast:
        loss, _, _ = criterion(model, batch)
    loss.backward()
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)
    else:
        model.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - t0


def train_throughput(conf, args, data, device, utts, rng):
    model, criterion, task, cfg = build(args.arch, conf.pad_seconds, data, device, conf.stack_decoder_passes,
                                        row_flags(conf, args, data), with_cfg=True)
    d = task.target_dictionary
    if conf.extra_branches:
        base = criterion.branches
        criterion.branches = lambda: {**base(), **conf.extra_branches}
    if args.skip_optimizer:
        opt = None
    elif conf.flags is None:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    else:
        opt = recipe_optimizer(cfg, model)
    model.train()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.bf16 else torch.autocast(device.type, enabled=False)
    batches = [to_device(collate(b, d, rng), device) for b in make_batches(utts, args.batch_size, conf.bucketed, rng)]
    batches = batches[: args.warmup + args.steps]
    cache = model.encoder.feature_cache
    if conf.feature_cache == "read":
        fill_feature_cache(model, batches)
    flops = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if device.type == "cuda" and conf.feature_cache != "fill":  # (a counted pass would fill the cache)
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, autocast:
            criterion(model, batches[0])[0].backward()
        flops = counter.get_total_flops() / batches[0]["nsentences"]
        model.zero_grad(set_to_none=True)
    n_utt = audio_s = 0.0
    elapsed = 0.0
    profiler = op_profiler(device) if getattr(args, "profile_ops", 0) else None
    for step, batch in enumerate(batches):
        if step == args.warmup:
            counts = (cache.hits, cache.misses + cache.stale) if cache is not None else None
            if profiler is not None:
                profiler.__enter__()  # the timed steps only
        seconds = timed_step(model, criterion, batch, opt, autocast, device)
        if step >= args.warmup:
            elapsed += seconds
            n_utt += batch["nsentences"]
            audio_s += float(batch["net_input"]["src_lengths"].sum()) / SAMPLE_RATE
    top_ops = None
    if profiler is not None:
        profiler.__exit__(None, None, None)
        top_ops = top_self_time_ops(profiler, args.profile_ops, device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:  # this configuration's own process (see run)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    cache_use = None
    if cache is not None:  # what the timed steps found: "read" rows must read, "fill" rows compute
        cache_use = (cache.hits - counts[0], cache.misses + cache.stale - counts[1])  # (read, computed)
        if cache_use != ((int(n_utt), 0) if conf.feature_cache == "read" else (0, int(n_utt))):
            raise RuntimeError(f"{conf.name}: the Whisper feature cache read {cache_use[0]} clips and computed "
                               f"{cache_use[1]} over the timed steps, where every clip should be "
                               f"{'read' if conf.feature_cache == 'read' else 'computed'}")
    del model, opt, batches
    return {"utt_s": n_utt / elapsed, "audio_s": audio_s / elapsed, "peak_gb": peak, "flops_per_utt": flops,
            "step_s": elapsed / max(1, args.steps), "top_ops": top_ops, "cache_use": cache_use}


def op_profiler(device):
    """torch.profiler over the timed steps (CPU ops, and the GPU's kernels on cuda)."""
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else []))


def top_self_time_ops(profiler, n: int, device) -> list:
    """The ``n`` operators with the most self time (on the GPU for cuda, else on the CPU), as
    (name, calls, self seconds, share of all operators' self time)."""
    field = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in profiler.key_averages() if getattr(e, field, 0) > 0]
    total = sum(getattr(e, field) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, field), reverse=True)
    return [(e.key, e.count, getattr(e, field) / 1e6, getattr(e, field) / total) for e in events[:n]]


def train_in_own_process(conf, args, data, device, utts, seed: int) -> dict:
    """train_throughput in a fresh process, so that its peak RSS is this configuration's
    alone (on CPU there is no allocator statistic to reset between configurations)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_train_child, (conf, args, str(data), device.type, utts, seed))


def _train_child(conf, args, data, device_type, utts, seed):
    torch.manual_seed(seed)  # (fairseq's --user-dir registers our components in this fresh process)
    return train_throughput(conf, args, Path(data), torch.device(device_type), utts, np.random.default_rng(seed))


def decode_throughput(conf, args, data, device, utts, rng):
    from fairseq.sequence_generator import SequenceGenerator

    # (the trimmed row's flags: its data config)
    model, _, task = build(args.arch, conf.pad_seconds, data, device, flags=row_flags(conf, args, data))
    d = task.target_dictionary
    model.eval()
    max_len = args.decode_len
    generator = SequenceGenerator([model], d, beam_size=5, max_len_b=max_len, min_len=max_len,
                                  symbols_to_strip_from_output=task.tag_ids)
    batches = [to_device(collate(b, d, rng), device)
               for b in make_batches(utts, args.batch_size, conf.bucketed, rng)][: args.decode_batches]
    n = 0
    sync(device)
    t0 = time.perf_counter()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.bf16 else torch.autocast(device.type, enabled=False)
    with torch.no_grad(), autocast:
        for batch in batches:
            generator.generate([model], batch, prefix_tokens=batch["target"][:, :1])
            n += batch["nsentences"]
    sync(device)
    return n / (time.perf_counter() - t0)


def run(args) -> int:
    """Time the configurations with ``args`` (the ``comsl-benchmark`` options); print the table."""
    if args.smoke:
        args.steps, args.warmup, args.decode_batches, args.batch_size, args.decode_len = 1, 0, 1, 2, 3
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no GPU is available")
    torch.manual_seed(args.seed)

    tmp = tempfile.TemporaryDirectory(prefix="comsl_benchmark_")
    data = synthetic_data_folder(Path(tmp.name), arch_dims(args.arch)[2], args.trim_pieces)
    rng = np.random.default_rng(args.seed)
    max_seconds = 3.0 if args.smoke else 15.0
    utts = utterances(args.batch_size * (args.warmup + args.steps), rng, max_seconds)
    dec_utts = utterances(args.batch_size * args.decode_batches, rng, max_seconds)
    frozen = args.frozen_whisper
    rows = configs(args.stack_decoder_passes, args.configs, trimmed=args.trim_pieces > 0, frozen=frozen)
    results = {}
    for conf in rows:
        if device.type == "cpu" and not args.smoke:
            r = train_in_own_process(conf, args, data, device, utts, args.seed)
        else:
            r = train_throughput(conf, args, data, device, utts, np.random.default_rng(args.seed))
        # the flags leave decoding; freezing changes training only
        if conf.name in ("ours", PAPER_STYLE, TRIMMED) and args.decode_batches > 0 and not frozen:
            r["decode_utt_s"] = decode_throughput(conf, args, data, device, dec_utts,
                                                  np.random.default_rng(args.seed))
        results[conf.name] = r
    print_table(args, device, utts, results)
    return 0


def print_table(args, device, utts, results: dict) -> None:
    """One row per configuration, then the ratios of ours (the defaults) to paper-style."""
    mean_s = float(np.mean([u[0] for u in utts]))
    what = "forward + backward (no optimizer step)" if args.skip_optimizer else "forward + backward + optimizer"
    memory = "peak GPU memory allocated" if device.type == "cuda" else "peak RSS of the configuration's own process"
    print(f"# ComSL benchmark: arch {args.arch}, device {device}, batch {args.batch_size}, "
          f"{args.steps} timed steps of {what}, mean clip {mean_s:.1f} s, bf16 {args.bf16}, torch {torch.__version__}; "
          f"memory: {memory}")
    frozen = args.frozen_whisper
    if frozen:
        print("# Whisper frozen in every row (--frozen-whisper: the recipes' first epochs): paper-style runs its "
              "forward at every step, as the original does; ours reads each clip's features from the Whisper "
              f"feature cache, filled before the timed steps (the second and later frozen epochs); '{FILLING}' "
              "starts from an empty cache")
    if getattr(args, "profile_ops", 0):
        print("# the timed steps ran under the profiler (--profile-ops): their times include its overhead, "
              "most with many small operators; quote speed figures from a run without it")
    print("| config | train utt/s | train audio-s/s | step s | decode utt/s (beam 5) | peak memory | MFU |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        mfu = "n/a"
        if r["flops_per_utt"] and args.peak_tflops:
            mfu = f"{100 * r['flops_per_utt'] * r['utt_s'] / (args.peak_tflops * 1e12):.1f} %"
        decode = f"{r['decode_utt_s']:.2f}" if "decode_utt_s" in r else "-"
        print(f"| {name} | {r['utt_s']:.2f} | {r['audio_s']:.1f} | {r['step_s']:.2f} | {decode} | "
              f"{r['peak_gb']:.2f} GB | {mfu} |")
    for name, r in results.items():
        if r.get("cache_use"):
            print(f"# {name}: Whisper feature cache over the timed steps: {r['cache_use'][0]} clips read, "
                  f"{r['cache_use'][1]} computed and stored")
    for name, r in results.items():
        if r.get("top_ops"):
            where = "GPU" if device.type == "cuda" else "CPU"
            print(f"\n{name}: top {len(r['top_ops'])} operators by {where} self time over the timed steps "
                  "(under the profiler)")
            print("| operator | calls | self s | share |")
            print("|---|---|---|---|")
            for op, calls, seconds, share in r["top_ops"]:
                print(f"| `{op}` | {calls} | {seconds:.3f} | {100 * share:.1f} % |")
    ours, paper = results.get("ours"), results.get(PAPER_STYLE)
    if ours is None or paper is None:
        return
    pre = "frozen_" if frozen else ""  # the frozen phase's ratios are named as such
    filling = results.get(FILLING)
    if filling is not None:
        print(f"{pre}fill_memory_vs_fixed11: {filling['peak_gb'] / paper['peak_gb']:.2f}")
        print(f"{pre}fill_speedup_vs_fixed11: {filling['utt_s'] / paper['utt_s']:.2f}")
    trimmed = results.get(TRIMMED)
    if trimmed is not None:
        print(f"{pre}trimmed_memory_vs_fixed11: {trimmed['peak_gb'] / paper['peak_gb']:.2f}")
        if "decode_utt_s" in trimmed and "decode_utt_s" in paper:
            print(f"trimmed_decode_speedup_vs_fixed11: {trimmed['decode_utt_s'] / paper['decode_utt_s']:.2f}")
        print(f"{pre}trimmed_speedup_vs_fixed11: {trimmed['utt_s'] / paper['utt_s']:.2f}")
    print(f"{pre}memory_vs_fixed11: {ours['peak_gb'] / paper['peak_gb']:.2f}")
    if "decode_utt_s" in ours and "decode_utt_s" in paper:
        print(f"decode_speedup_vs_fixed11: {ours['decode_utt_s'] / paper['decode_utt_s']:.2f}")
    print(f"{pre}speedup_vs_fixed11: {ours['utt_s'] / paper['utt_s']:.2f}")
