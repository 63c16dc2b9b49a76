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


def synthetic_data_folder(folder: Path, n_pretrained: int) -> Path:
    """A data folder the real task reads: a SentencePiece model (unused: the benchmark draws
    token ids), a dict.txt that with the ML50 tags and <mask> gives ``n_pretrained`` rows,
    and config.yaml."""
    from comsl_fairseq.vocab.languages import ML50_TAGS
    from comsl_fairseq.vocab.vocabulary import train_sentencepiece

    train_sentencepiece([f"w{i} w{i + 1} w{i + 2}" for i in range(300)], folder, vocab_size=60)
    n_words = n_pretrained - 4 - len(ML50_TAGS) - 1  # <s> <pad> </s> <unk>, tags, <mask>
    (folder / "dict.txt").write_text("".join(f"w{i} 1\n" for i in range(n_words)), encoding="utf-8")
    (folder / "config.yaml").write_text(
        "vocab_filename: dict.txt\nbpe_tokenizer: {bpe: sentencepiece, sentencepiece_model: sentence.bpe.model}\n",
        encoding="utf-8")
    return folder


def build(arch: str, pad_seconds: float, data: Path, device, stack_decoder_passes: bool = False):
    """Task, model and criterion as fairseq-train builds them, with the arch's dims put in
    the model config (as a trained model's are): random weights, no checkpoint read."""
    from omegaconf import open_dict

    from comsl_fairseq.training.fairseq_setup import build_task_and_model, train_cfg

    cfg = train_cfg([data, "--task", "comsl_speech_to_text", "--arch", f"whisper_mbart_composite_{arch}",
                     "--criterion", "comsl_multitask", "--whisper-pad-seconds", str(pad_seconds)]
                    + (["--stack-decoder-passes"] if stack_decoder_passes else []))
    whisper, mbart, _ = arch_dims(arch)
    with open_dict(cfg.model):
        cfg.model.whisper_dims, cfg.model.mbart_dims = whisper.to_cfg(), mbart.to_cfg()
    task, model = build_task_and_model(cfg)
    return model.to(device), task.build_criterion(cfg.criterion), task


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
    def __init__(self, name, pad_seconds, bucketed, extra_branches, stack_decoder_passes):
        self.name, self.pad_seconds, self.bucketed, self.extra_branches = name, pad_seconds, bucketed, extra_branches
        self.stack_decoder_passes = stack_decoder_passes


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_step(model, criterion, batch, opt, autocast, device) -> float:
    """One training step (forward, backward, optimizer step); its wall time in seconds."""
    sync(device)
    t0 = time.perf_counter()
    with autocast:
        loss, _, _ = criterion(model, batch)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - t0


def train_throughput(conf, args, data, device, utts, rng):
    model, criterion, task = build(args.arch, conf.pad_seconds, data, device, conf.stack_decoder_passes)
    d = task.target_dictionary
    if conf.extra_branches:
        base = criterion.branches
        criterion.branches = lambda: {**base(), **conf.extra_branches}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    model.train()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.bf16 else torch.autocast(device.type, enabled=False)
    batches = [to_device(collate(b, d, rng), device) for b in make_batches(utts, args.batch_size, conf.bucketed, rng)]
    flops = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, autocast:
            criterion(model, batches[0])[0].backward()
        flops = counter.get_total_flops() / batches[0]["nsentences"]
        opt.zero_grad(set_to_none=True)
    n_utt = audio_s = 0.0
    elapsed = 0.0
    for step, batch in enumerate(batches[: args.warmup + args.steps]):
        seconds = timed_step(model, criterion, batch, opt, autocast, device)
        if step >= args.warmup:
            elapsed += seconds
            n_utt += batch["nsentences"]
            audio_s += float(batch["net_input"]["src_lengths"].sum()) / SAMPLE_RATE
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    del model, opt, batches
    return {"utt_s": n_utt / elapsed, "audio_s": audio_s / elapsed, "peak_gb": peak, "flops_per_utt": flops}


def decode_throughput(conf, args, data, device, utts, rng):
    from fairseq.sequence_generator import SequenceGenerator

    model, _, task = build(args.arch, conf.pad_seconds, data, device)
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
    """Time both configurations with ``args`` (the ``comsl-benchmark`` options); print the table."""
    if args.smoke:
        args.steps, args.warmup, args.decode_batches, args.batch_size, args.decode_len = 1, 0, 1, 2, 3
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no GPU is available")
    torch.manual_seed(args.seed)
    torch.set_num_threads(torch.get_num_threads())


    tmp = tempfile.TemporaryDirectory(prefix="comsl_benchmark_")
    data = synthetic_data_folder(Path(tmp.name), arch_dims(args.arch)[2])
    rng = np.random.default_rng(args.seed)
    max_seconds = 3.0 if args.smoke else 15.0
    utts = utterances(args.batch_size * (args.warmup + args.steps), rng, max_seconds)
    dec_utts = utterances(args.batch_size * args.decode_batches, rng, max_seconds)
    configs = [Config("ours", 0.0, True, {}, args.stack_decoder_passes),
               Config("paper-style (11 s, 7 passes)", 11.0, False, original_unused_pass(), False)]
    results = {}
    for conf in configs:
        r = train_throughput(conf, args, data, device, utts, np.random.default_rng(args.seed))
        r["decode_utt_s"] = decode_throughput(conf, args, data, device, dec_utts, np.random.default_rng(args.seed))
        results[conf.name] = r

    mean_s = float(np.mean([u[0] for u in utts]))
    print(f"# ComSL benchmark: arch {args.arch}, device {device}, batch {args.batch_size}, "
          f"{args.steps} timed steps, mean clip {mean_s:.1f} s, bf16 {args.bf16}, torch {torch.__version__}")
    print("| config | train utt/s | train audio-s/s | decode utt/s (beam 5) | peak memory | MFU |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        peak = f"{r['peak_gb']:.1f} GB" if r["peak_gb"] is not None else \
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GB RSS (process)"
        mfu = "n/a"
        if r["flops_per_utt"] and args.peak_tflops:
            mfu = f"{100 * r['flops_per_utt'] * r['utt_s'] / (args.peak_tflops * 1e12):.1f} %"
        print(f"| {name} | {r['utt_s']:.2f} | {r['audio_s']:.1f} | {r['decode_utt_s']:.2f} | {peak} | {mfu} |")
    ours, paper = results["ours"], results[configs[1].name]
    print(f"decode_speedup_vs_fixed11: {ours['decode_utt_s'] / paper['decode_utt_s']:.2f}")
    print(f"speedup_vs_fixed11: {ours['utt_s'] / paper['utt_s']:.2f}")
    return 0

