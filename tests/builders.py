"""Tiny checkpoints and data in the real formats, built by the tests themselves.

- an openai-whisper ``.pt`` ({"dims", "model_state_dict"}, fp16 tensors as released);
- an mBART-50-style folder: ``sentence.bpe.model``, ``dict.txt`` (pieces, no tags) and a
  fairseq ``model.pt`` of a ``BARTModel`` (mbart_large layout, pre-norm) with
  dict + 52 ML50 tags + ``<mask>`` embedding rows, saved with its ``args`` Namespace;
- a speech data folder: wav/flac clips, manifests and ``config.yaml``;

and the helpers that tests share: the fairseq-train and fairseq-generate command lines and running them.
"""
import os
import random
import shutil
import socket
import subprocess
import sys
from argparse import Namespace
from dataclasses import asdict
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml

from comsl_fairseq.data.manifest import write_manifest
from comsl_fairseq.training import fairseq_setup

WORDS = {
    "fr": "le chat noir mange une pomme rouge dans la maison bleue avec mon ami petit grand".split(),
    "de": "der hund sieht einen roten apfel im blauen haus mit meinem freund klein gross".split(),
    "en": "the black cat eats a red apple in blue house with my friend small big dog sees".split(),
}


def sentences(lang: str, n: int, rng: random.Random) -> list:
    return [" ".join(rng.choice(WORDS[lang]) for _ in range(rng.randint(2, 7))) for _ in range(n)]


def write_sentencepiece(folder: Path, vocab_size: int = 120) -> None:
    """``sentence.bpe.model`` and a fairseq ``dict.txt`` of its pieces (no tags)."""
    from comsl_fairseq.vocab.vocabulary import train_sentencepiece

    rng = random.Random(0)
    train_sentencepiece([s for lang in WORDS for s in sentences(lang, 300, rng)], folder, vocab_size)


def mbart_args(dim=32, ffn=64, heads=2, layers=2) -> Namespace:
    from fairseq.models.bart.model import mbart_large_architecture

    args = Namespace(
        arch="mbart_large", task="translation_multi_simple_epoch", criterion="label_smoothed_cross_entropy",
        encoder_embed_dim=dim, decoder_embed_dim=dim, encoder_ffn_embed_dim=ffn, decoder_ffn_embed_dim=ffn,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_layers=layers,
        decoder_layers=layers, encoder_normalize_before=True, decoder_normalize_before=True,
        dropout=0.1, attention_dropout=0.1, share_all_embeddings=True,
    )
    mbart_large_architecture(args)
    return args


def build_bart(folder: Path, args: Namespace):
    """A fairseq BARTModel on the folder's dict.txt + tags + <mask> (mBART-50 rows)."""
    from fairseq.models.bart import BARTModel

    from comsl_fairseq.vocab.vocabulary import build_dictionary

    full, n_pretrained = build_dictionary(folder / "dict.txt")
    d = type(full)()  # the pretrained part only: what an mBART-50 checkpoint was trained with
    for i in range(full.nspecial, n_pretrained):
        d.add_symbol(full[i])
    assert len(d) == n_pretrained
    task = Namespace(source_dictionary=d, target_dictionary=d)
    return BARTModel.build_model(args, task)


def write_mbart_archive(folder: Path, seed: int = 0, **dims) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_sentencepiece(folder)
    torch.manual_seed(seed)
    args = mbart_args(**dims)
    model = build_bart(folder, args)
    history = [{"criterion_name": "LabelSmoothedCrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": 2.5}, "num_updates": 1000}]
    torch.save({"args": args, "model": model.state_dict(), "optimizer_history": history,
                "extra_state": {"epoch": 1, "train_iterator": {"epoch": 1}}, "last_optimizer_state": None},
               folder / "model.pt")
    return folder


def write_whisper_checkpoint(path: Path, n_mels=80, dim=64, heads=2, layers=2, seed=0) -> Path:
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(seed)
    dims = ModelDimensions(n_mels=n_mels, n_audio_ctx=1500, n_audio_state=dim, n_audio_head=heads,
                           n_audio_layer=layers, n_vocab=512, n_text_ctx=64, n_text_state=dim,
                           n_text_head=heads, n_text_layer=1)
    model = Whisper(dims)
    with torch.no_grad():  # random weights of speech-model scale, so that activations are not tiny
        model.decoder.positional_embedding.normal_(0, 0.02)  # openai-whisper leaves it torch.empty
        for p in model.encoder.parameters():
            if p.dim() > 1:
                p.normal_(0, p.size(-1) ** -0.5)
    state = {k: v.half() for k, v in model.state_dict().items()}  # released checkpoints are fp16
    torch.save({"dims": asdict(dims), "model_state_dict": state}, path)
    return path


def synth_clip(seconds: float, rng: np.random.Generator, sr: int = 16000) -> np.ndarray:
    """A speech-like test signal: a few harmonic glides with an amplitude envelope and noise."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = rng.uniform(90, 220) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 6))
    env = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    return (0.1 * env * x + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def write_speech_data(folder: Path, mbart_dir: Path, splits=(("train", 16), ("dev", 6), ("test", 6)),
                      seed: int = 0) -> Path:
    """Clips (mostly 16 kHz wav; some flac; one 44.1 kHz stereo wav) with fr/de transcripts
    and English translations; manifests ``{split}.tsv`` and ``config.yaml``."""
    rng = np.random.default_rng(seed)
    trng = random.Random(seed)
    clips = folder / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    n = 0
    for split, count in splits:
        rows = []
        for i in range(count):
            lang = "fr" if i % 2 == 0 else "de"
            seconds = float(rng.uniform(0.6, 2.5))
            wav = synth_clip(seconds, rng)
            uid = f"{split}_{i:03d}"
            if n % 7 == 3:
                name, sr = f"{uid}.wav", 44100  # resampled and down-mixed on reading
                up = np.interp(np.arange(int(seconds * sr)) / sr, np.arange(wav.size) / 16000, wav)
                sf.write(clips / name, np.stack([up, 0.5 * up], axis=1).astype(np.float32), sr)
            elif n % 3 == 1:
                name = f"{uid}.flac"
                sf.write(clips / name, wav, 16000)
            else:
                name = f"{uid}.wav"
                sf.write(clips / name, wav, 16000)
            n += 1
            src = sentences(lang, 1, trng)[0]
            tgt = sentences("en", 1, trng)[0]
            rows.append([uid, name, str(wav.size), src, tgt, lang, "en", "spk0"])
        write_manifest(folder / f"{split}.tsv", rows)
    cfg = {"vocab_filename": str(mbart_dir / "dict.txt"),
           "bpe_tokenizer": {"bpe": "sentencepiece", "sentencepiece_model": str(mbart_dir / "sentence.bpe.model")},
           "audio_root": "clips"}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return folder


def fairseq_cfg(data_dir: Path, *extra: str, arch: str = "whisper_mbart_composite_tiny"):
    """Parse a fairseq-train command line for our task, exactly as the CLI would."""
    from comsl_fairseq.training.fairseq_setup import train_cfg

    return train_cfg([data_dir, "--task", "comsl_speech_to_text", "--arch", arch, "--criterion", "comsl_multitask",
                      "--optimizer", "adam", "--lr", "1e-4", "--batch-size", "8", "--cpu", *extra])


def build_task_and_model(data_dir: Path, *extra: str, arch: str = "whisper_mbart_composite_tiny", **mbart):
    """(cfg, task, model) as fairseq-train builds them; keyword arguments replace fields of the
    arch's random-init MbartDims (e.g. ``max_positions=64``), as a checkpoint's dims would."""
    from dataclasses import replace

    from omegaconf import open_dict

    from comsl_fairseq.models.whisper_mbart_composite import RANDOM_INIT_DIMS
    from comsl_fairseq.training import fairseq_setup

    cfg = fairseq_cfg(data_dir, *extra, arch=arch)
    if mbart:
        with open_dict(cfg.model):
            cfg.model.mbart_dims = replace(RANDOM_INIT_DIMS[arch][1], **mbart).to_cfg()
    task, model = fairseq_setup.build_task_and_model(cfg)
    return cfg, task, model


def copy_data(data_dir: Path, dest: Path) -> Path:
    """A private copy of a (session) data folder, for tests that add manifests to it."""
    shutil.copytree(data_dir, dest, dirs_exist_ok=True)
    return dest


def self_contained_data(data_dir: Path, mbart_dir: Path, dest: Path) -> Path:
    """A private copy of a data folder that holds its own dict.txt and SentencePiece model (config.yaml
    names them relative to itself), so that the folder can move or be deleted after training."""
    data = copy_data(data_dir, dest)
    for name in ("dict.txt", "sentence.bpe.model"):
        shutil.copy(mbart_dir / name, data / name)
    cfg = yaml.safe_load((data / "config.yaml").read_text())
    cfg["vocab_filename"], cfg["bpe_tokenizer"]["sentencepiece_model"] = "dict.txt", "sentence.bpe.model"
    (data / "config.yaml").write_text(yaml.safe_dump(cfg))
    return data


BIN = Path(sys.executable).parent
USER_DIR = str(fairseq_setup.USER_DIR)


def run(tool, *args, cwd=None):
    """Run a console tool of the venv (fairseq-train, ...); its output, or an AssertionError."""
    proc = subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"{tool} failed ({proc.returncode}):\n{out[-4000:]}")
    return out


def train_cmd(data, whisper, mbart, save_dir, *extra):
    """The fairseq-train command line of the tiny arch."""
    return ["fairseq-train", data, "--user-dir", USER_DIR, "--task", "comsl_speech_to_text",
            "--config-yaml", "config.yaml", "--train-subset", "train", "--valid-subset", "dev",
            "--arch", "whisper_mbart_composite_tiny", "--whisper-checkpoint", whisper,
            "--mbart-checkpoint", mbart, "--criterion", "comsl_multitask", "--optimizer", "adam",
            "--lr", "1e-4", "--batch-size", "8", "--max-update", "3", "--save-dir", save_dir, "--cpu", *extra]


def generate_cmd(data, ckpt, *extra):
    """The fairseq-generate command line (beam 5, target tag forced)."""
    return ["fairseq-generate", data, "--user-dir", USER_DIR, "--task", "comsl_speech_to_text",
            "--config-yaml", "config.yaml", "--gen-subset", "test", "--path", ckpt, "--beam", "5",
            "--prefix-size", "1", "--batch-size", "8", "--scoring", "sacrebleu", "--cpu", *extra]


def fairseq_generate(data, ckpt, results: Path, *extra) -> str:
    """fairseq-generate's own main() on the tiny arch's command line; returns what it writes."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli import generate

    argv = generate_cmd(data, ckpt, *extra, "--results-path", results)[1:]
    generate.main(convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_generation_parser(), [str(a) for a in argv])))
    return (results / "generate-test.txt").read_text()


def decoded_lines(data, ckpt) -> list:
    """fairseq-generate on DATA's test split with short outputs: its H-, D- and P- lines, sorted."""
    log = run(*generate_cmd(data, ckpt, "--max-len-a", "0", "--max-len-b", "8"))
    return sorted(line for line in log.splitlines() if line.startswith(("H-", "D-", "P-")))


ABLATIONS = Path(__file__).resolve().parents[1] / "examples" / "covost2" / "ablations"


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCH_VARIABLES = ("NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "UPDATE_FREQ",
                    "GLOBAL_BATCH", "SLURM_NNODES", "SLURM_NODEID", "SLURM_JOB_ID", "SLURM_JOB_NODELIST")


def recipe_env(data_dir, whisper_pt, mbart_dir, save_dir, **extra) -> dict:
    """The environment of an ablation recipe run on the tiny fixture (launcher variables of the caller removed)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env.update(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1",
               DATA=str(data_dir), SAVE_DIR=str(save_dir), ARCH="whisper_mbart_composite_tiny",
               WHISPER=str(whisper_pt), MBART=str(mbart_dir / "model.pt"), MT_TEACHER=str(mbart_dir / "model.pt"))
    env.update(extra)
    return env


def inner_args(data, save_dir, *extra):
    """A fairseq-train command line that saves every 3 updates (resume and crash tests)."""
    return ["fairseq-train", data, "--user-dir", USER_DIR, "--task", "comsl_speech_to_text",
            "--train-subset", "train", "--valid-subset", "dev", "--arch", "whisper_mbart_composite_tiny",
            "--criterion", "comsl_multitask", "--erm-layer", "2", "--optimizer", "adam", "--lr", "1e-3",
            "--batch-size", "4", "--save-dir", save_dir, "--cpu", "--log-interval", "1", "--log-format", "simple",
            "--seed", "7", "--save-interval-updates", "3", "--no-epoch-checkpoints", *extra]
