"""Export a training checkpoint as a self-contained model folder.

    OUT/model.pt            fairseq checkpoint: the training cfg unchanged, the weights (optionally
                            fp16/bf16), no optimizer state
    OUT/dict.txt            the data config's dictionary, byte for byte
    OUT/sentence.bpe.model  its SentencePiece model
    OUT/vocab_keep.txt      the keep file of a model trained with a trimmed vocabulary (trim_vocab)
    OUT/config.yaml         a data config naming the two files above (what the task reads)
    OUT/model_info.json     machine-readable summary (architecture, language pairs trained on,
                            updates, scores)
    OUT/README.md           the model card

:class:`~comsl_fairseq.inference.translator.SpeechTranslator` and ``comsl-translate`` load
from this folder alone; ``fairseq-generate DATA --path OUT/model.pt`` works as with any
checkpoint. The checkpoint is read and written with torch's weights-only pickler. The folder is
built under a temporary name beside OUT and renamed when complete.
"""
import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import torch
import yaml

from comsl_fairseq.data.config import DataConfig
from comsl_fairseq.inference.languages import training_pairs
from comsl_fairseq.inference.translator import DATA_CONFIG_FILE, DTYPES, INFO_FILE, WEIGHTS_FILE
from comsl_fairseq.vocab.vocabulary import load_sentencepiece

logger = logging.getLogger(__name__)

FORMAT = "comsl_fairseq-export-1"
TRIM_FILE = "vocab_keep.txt"
PARTS = (("encoder.whisper.", "Whisper encoder"), ("encoder.adapter.", "adapter"),
         ("encoder.mbart.", "mBART encoder"), ("decoder.", "mBART decoder"))


class ExportError(ValueError):
    """A checkpoint or data folder that cannot be exported; the message names it."""


def export_model(checkpoint, out_dir, dtype: str = "fp32", data=None, score_logs=(), overwrite=False) -> Path:
    """Write the model folder ``out_dir`` for ``checkpoint``; returns its path.

    ``data``: the training data folder when it moved since training (its config.yaml names
    dict.txt and the SentencePiece model). ``score_logs``: fairseq-generate outputs whose
    hypotheses (D-) and references (T-) are scored with sacreBLEU for the card.
    """
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    checkpoint, out = Path(checkpoint), Path(out_dir)
    if not checkpoint.is_file():
        raise ExportError(f"checkpoint {checkpoint} not found")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; pass --overwrite to replace it")
    state = load_checkpoint(checkpoint)
    cfg = state.get("cfg") if isinstance(state, dict) else None
    if not cfg or "model" not in state:
        raise ExportError(f"{checkpoint} is not a fairseq checkpoint with a cfg (written by fairseq-train)")
    data_cfg = _data_config(cfg, data, checkpoint)
    load_sentencepiece(data_cfg.sentencepiece_model)  # a corrupt one is named here, not in the copy
    pairs = training_pairs(cfg, data)
    if not pairs:
        logger.warning("the training manifests of %s are not in %s: the model folder will not record its "
                       "languages (pass --data with the training data folder)", checkpoint,
                       data or (cfg.get("task") or {}).get("data"))
    with atomic_folder(out) as tmp:
        _write_folder(tmp, out.name, state, cfg, data_cfg, dtype, score_logs, checkpoint.name, pairs)
    logger.info("exported %s -> %s (%s, %.1f MB)", checkpoint, out, dtype,
                (out / WEIGHTS_FILE).stat().st_size / 1e6)
    return out


@contextlib.contextmanager
def atomic_folder(out: Path):
    """Yield an empty folder beside ``out`` to build in; when the block ends without an error it
    replaces ``out`` (an existing folder is swapped out first), otherwise it is removed. A
    failed or interrupted export so leaves no folder that looks like a model."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def load_checkpoint(checkpoint: Path) -> dict:
    """The checkpoint read with torch's weights-only unpickler; errors name the file."""
    from comsl_fairseq.checkpoints.allowlist import load_weights_only

    try:
        return load_weights_only(checkpoint)
    except ValueError as e:
        raise ExportError(str(e)) from None


def _write_folder(out: Path, name: str, state: dict, cfg: dict, data_cfg: DataConfig, dtype: str,
                  score_logs, source: str, pairs: dict) -> None:
    shutil.copyfile(data_cfg.vocab_filename, out / "dict.txt")
    shutil.copyfile(data_cfg.sentencepiece_model, out / "sentence.bpe.model")
    if data_cfg.trim_vocab is not None:
        shutil.copyfile(data_cfg.trim_vocab, out / TRIM_FILE)
    _write_data_config(out, data_cfg)
    weights = cast_state(state["model"], DTYPES[dtype])
    slim = {k: v for k, v in state.items() if k not in ("model", "last_optimizer_state")}
    slim["model"], slim["last_optimizer_state"] = weights, None
    slim["optimizer_history"] = [{k: v for k, v in h.items() if k != "optimizer"}
                                 for h in state.get("optimizer_history", [])][-1:]
    torch.save(slim, out / WEIGHTS_FILE)
    info = model_info(state, cfg, data_cfg, dtype, [score_log(p) for p in score_logs], source, pairs)
    info["parameters"] = count_parameters(out)
    (out / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    from comsl_fairseq.inference.model_card import model_card

    (out / "README.md").write_text(model_card(info, out, name), encoding="utf-8")


def _data_config(cfg: dict, data, checkpoint: Path) -> DataConfig:
    task = cfg.get("task") or {}
    folder = Path(data) if data is not None else Path(str(task.get("data", "")))
    config = Path(str(task.get("config_yaml") or DATA_CONFIG_FILE))
    path = config if config.is_absolute() else folder / config
    if not path.is_file():
        raise ExportError(f"{checkpoint} was trained on the data config {path}, which is not there; pass "
                          "--data with the data folder that holds it (for dict.txt and sentence.bpe.model)")
    return DataConfig.load(path)


def _write_data_config(out: Path, data_cfg: DataConfig) -> None:
    config = {"vocab_filename": "dict.txt",
              "bpe_tokenizer": {"bpe": "sentencepiece", "sentencepiece_model": "sentence.bpe.model"},
              "audio_root": ".", "max_audio_seconds": data_cfg.max_audio_seconds,
              "min_audio_seconds": data_cfg.min_audio_seconds, "max_text_tokens": data_cfg.max_text_tokens}
    if data_cfg.trim_vocab is not None:
        config["trim_vocab"] = TRIM_FILE
    (out / DATA_CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def cast_state(state: dict, dtype) -> dict:
    """Floating tensors cast to ``dtype`` (None: unchanged). Tensors that share memory in the
    checkpoint (the tied mBART embeddings) still share it after the cast, so it is stored once."""
    if dtype is None:
        return state
    done, out = {}, {}
    for k, v in state.items():
        if not (torch.is_tensor(v) and v.is_floating_point()):
            out[k] = v
            continue
        key = (v.data_ptr(), tuple(v.shape), tuple(v.stride()))
        if key not in done:
            done[key] = v.to(dtype)
        out[k] = done[key]
    return out


def count_parameters(folder: Path) -> dict:
    """Learned parameters per part (tied embeddings counted once) and in total, counted on
    the model rebuilt from the exported folder -- which also proves that the folder loads."""
    from fairseq import checkpoint_utils

    models, _, _ = checkpoint_utils.load_model_ensemble_and_task(
        [str(folder / WEIGHTS_FILE)], arg_overrides={"data": str(folder.resolve()), "config_yaml": DATA_CONFIG_FILE,
                                                     "eval_bleu": False})
    counts = Counter()
    for name, p in models[0].named_parameters():  # shared tensors are listed once
        counts[next((part for prefix, part in PARTS if name.startswith(prefix)), "other")] += p.numel()
    return {**{part: counts[part] for _, part in PARTS if counts[part]}, "total": sum(counts.values())}


def score_log(path) -> dict:
    """sacreBLEU of a fairseq-generate output (D- hypotheses against T- references): score,
    signature, subset and beam as printed by fairseq, number of sentences."""
    from comsl_fairseq.evaluation.logs import read_generate_header, read_generate_log
    from comsl_fairseq.evaluation.scoring import corpus_scores

    hyps, refs = read_generate_log(path)
    subset, beam = read_generate_header(path)
    ids = sorted(set(hyps) & set(refs))
    if not ids or len(ids) != len(refs):
        raise ExportError(f"{path}: {len(ids)} scored hypotheses for {len(refs)} references; expected "
                          "a complete fairseq-generate output (D- and T- lines)")
    scores = corpus_scores([hyps[i] for i in ids], [refs[i] for i in ids])
    return {"log": Path(path).name, "subset": subset, "beam": beam, "sentences": len(ids),
            "bleu": scores["bleu"], "signature": scores["bleu_signature"]}


def model_info(state: dict, cfg: dict, data_cfg: DataConfig, dtype: str, scores: list, source: str,
               pairs: dict) -> dict:
    model_cfg, ckpt_cfg = cfg.get("model") or {}, cfg.get("checkpoint") or {}
    extra = state.get("extra_state") or {}
    history = state.get("optimizer_history") or [{}]
    dims = {k: model_cfg.get(k) for k in model_cfg if k.startswith(("whisper_", "mbart_"))
            and not k.endswith("_checkpoint") and k != "whisper_pad_seconds"}
    return {
        "format": FORMAT,
        "source_checkpoint": source,
        "arch": model_cfg.get("_name") or model_cfg.get("arch"),
        "dims": dims,
        "whisper_pad_seconds": model_cfg.get("whisper_pad_seconds"),
        "dtype": dtype,
        "num_updates": history[-1].get("num_updates"),
        "epoch": (extra.get("train_iterator") or {}).get("epoch"),
        "training_data": {"folder": Path(str((cfg.get("task") or {}).get("data", ""))).name,
                          "train_subset": (cfg.get("dataset") or {}).get("train_subset"),
                          "pairs": pairs},
        "criterion": {k: v for k, v in (cfg.get("criterion") or {}).items() if k.endswith(("_weight", "_alpha"))},
        "validation": {"metric": ckpt_cfg.get("best_checkpoint_metric"), "value": _plain(extra.get("val_loss")),
                       "best": _plain(extra.get("best"))},
        "scores": scores,
        "max_audio_seconds": data_cfg.max_audio_seconds,
    }


def _plain(value):
    """A float for JSON (checkpoints keep numpy scalars), or None."""
    try:
        return None if value is None else round(float(value), 4)
    except (TypeError, ValueError):
        return None
