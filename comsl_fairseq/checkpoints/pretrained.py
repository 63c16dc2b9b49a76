"""Strict loading of the pretrained Whisper and mBART-50 checkpoints, and their dimensions.

Strict loading of the pretrained parts: an openai-whisper ``.pt`` and a fairseq
mBART-50 ``model.pt``, and their dimensions. Nothing is downloaded; every
mismatch is named.

Each part's shape is one small object, as whisper's ``ModelDimensions``:
:class:`WhisperDims` and :class:`MbartDims` are read from a pretrained checkpoint
(``from_checkpoint``), saved in our model's config (``to_cfg`` -> ``whisper_dims`` /
``mbart_dims``) and read back from it (``from_cfg``) when a trained model is rebuilt.

Both files are read with torch's weights-only unpickler (the default since torch 2.6);
fairseq checkpoints need the classes allowlisted in :mod:`comsl_fairseq.checkpoints.allowlist`.
"""
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)

# mBART hyper-parameters read from the checkpoint's saved args / cfg.model.
MBART_DIM_KEYS = ("encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_layers", "encoder_attention_heads",
                  "decoder_embed_dim", "decoder_ffn_embed_dim", "decoder_layers", "decoder_attention_heads",
                  "max_source_positions", "max_target_positions", "activation_fn")
# What makes a checkpoint mBART-shaped; anything else would load but compute something else.
MBART_REQUIRED = {"encoder_normalize_before": True, "decoder_normalize_before": True,
                  "layernorm_embedding": True, "no_scale_embedding": False}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what differs."""


def _saved(cfg, key: str):
    """A model-config entry (DictConfig, dict or Namespace); None when absent."""
    return cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)


@dataclass(frozen=True)
class WhisperDims:
    """The Whisper audio encoder's shape; field names are openai-whisper's ``ModelDimensions``."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int

    # flat fields of model configs saved before this object existed, in field order
    LEGACY_CFG = ("whisper_n_mels", "whisper_n_ctx", "whisper_dim", "whisper_heads", "whisper_layers")

    @classmethod
    def from_checkpoint(cls, dims: dict, source) -> "WhisperDims":
        """From an openai-whisper checkpoint's ``dims`` dict."""
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in dims]
        if missing:
            raise CheckpointError(f"{source}: 'dims' lacks {missing}")
        out = cls(**{f.name: int(dims[f.name]) for f in dataclasses.fields(cls)})
        if out.n_mels not in (80, 128):
            raise CheckpointError(f"{source}: n_mels={out.n_mels}; Whisper's front end supports 80 or 128")
        return out

    @classmethod
    def from_cfg(cls, cfg) -> Optional["WhisperDims"]:
        """From our model config's ``whisper_dims`` (or the flat fields of older checkpoints);
        None when the config holds none, i.e. the model is not being rebuilt."""
        saved = _saved(cfg, "whisper_dims")
        if saved is not None:
            return cls(**{f.name: int(saved[f.name]) for f in dataclasses.fields(cls)})
        if _saved(cfg, "whisper_dim") is not None:
            return cls(*(int(_saved(cfg, k)) for k in cls.LEGACY_CFG))
        return None

    def to_cfg(self) -> dict:
        """The entry saved as the model config's ``whisper_dims``."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MbartDims:
    """The mBART encoder-decoder's shape (encoder and decoder share width, FFN and heads)."""

    dim: int
    ffn_dim: int
    heads: int
    encoder_layers: int
    decoder_layers: int
    max_positions: int
    activation_fn: str

    LEGACY_CFG = ("mbart_dim", "mbart_ffn_dim", "mbart_heads", "mbart_encoder_layers", "mbart_decoder_layers",
                  "mbart_max_positions", "mbart_activation_fn")

    @classmethod
    def from_checkpoint(cls, hp: dict, source) -> "MbartDims":
        """From a fairseq mBART checkpoint's saved hyper-parameters (:data:`MBART_DIM_KEYS`)."""
        if hp["encoder_embed_dim"] != hp["decoder_embed_dim"]:
            raise CheckpointError(f"{source}: encoder and decoder widths differ; ComSL shares one embedding")
        if hp["encoder_ffn_embed_dim"] != hp["decoder_ffn_embed_dim"] or \
                hp["encoder_attention_heads"] != hp["decoder_attention_heads"]:
            raise CheckpointError(f"{source}: encoder and decoder FFN widths or heads differ")
        return cls(hp["encoder_embed_dim"], hp["encoder_ffn_embed_dim"], hp["encoder_attention_heads"],
                   hp["encoder_layers"], hp["decoder_layers"],
                   min(hp["max_source_positions"], hp["max_target_positions"]), hp["activation_fn"])

    @classmethod
    def from_cfg(cls, cfg) -> Optional["MbartDims"]:
        """From our model config's ``mbart_dims`` (or older flat fields); None when absent."""
        saved = _saved(cfg, "mbart_dims")
        if saved is not None:
            return cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls)})
        if _saved(cfg, "mbart_dim") is not None:
            return cls(*(_saved(cfg, k) for k in cls.LEGACY_CFG))
        return None

    def to_cfg(self) -> dict:
        """The entry saved as the model config's ``mbart_dims``."""
        return dataclasses.asdict(self)


def _load(path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} checkpoint {path} not found")
    from comsl_fairseq.checkpoints.allowlist import load_weights_only

    try:
        return load_weights_only(path, f"{what} checkpoint")
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def load_whisper_checkpoint(path) -> tuple:
    """Read an openai-whisper checkpoint. Returns (:class:`WhisperDims`, encoder_state),
    the latter the ``encoder.*`` tensors without their prefix."""
    ckpt = _load(path, "Whisper")
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not an openai-whisper checkpoint: expected keys 'dims' and "
                              f"'model_state_dict', found {keys}")
    dims = WhisperDims.from_checkpoint(ckpt["dims"], path)
    state = {k[len("encoder."):]: v for k, v in ckpt["model_state_dict"].items() if k.startswith("encoder.")}
    if not state:
        raise CheckpointError(f"{path}: model_state_dict has no encoder.* tensors")
    return dims, state


def load_mbart_checkpoint(path) -> tuple:
    """Read a fairseq mBART(-50) ``model.pt`` (or the mBART part of one of our checkpoints).
    Returns (:class:`MbartDims`, state_dict)."""
    from fairseq import checkpoint_utils

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"mBART checkpoint {path} not found")
    try:
        ckpt = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot load mBART checkpoint {path}: {type(e).__name__}: {e}") from None
    if any(k.startswith("encoder.mbart.") for k in ckpt.get("model", {})):
        return _mbart_part_of_comsl_checkpoint(ckpt)
    model_cfg = ckpt["cfg"]["model"] if ckpt.get("cfg") is not None else None
    if model_cfg is None:
        raise CheckpointError(f"{path} carries neither 'cfg' nor 'args'; not a fairseq checkpoint")

    def get(key):
        return getattr(model_cfg, key, None) if not isinstance(model_cfg, dict) else model_cfg.get(key)

    missing = [k for k in MBART_DIM_KEYS if get(k) is None]
    if missing:
        raise CheckpointError(f"{path}: saved model config lacks {missing}")
    wrong = {k: get(k) for k, v in MBART_REQUIRED.items() if bool(get(k)) != v}
    if wrong:
        raise CheckpointError(f"{path}: not an mBART-shaped model, expected {MBART_REQUIRED}, found {wrong}")
    dims = MbartDims.from_checkpoint({k: get(k) for k in MBART_DIM_KEYS}, path)
    state = ckpt["model"]
    emb = state.get("encoder.embed_tokens.weight")
    if emb is None:
        raise CheckpointError(f"{path}: no encoder.embed_tokens.weight; not an mBART checkpoint")
    for key in ("decoder.embed_tokens.weight", "decoder.output_projection.weight"):
        if key in state and not torch.equal(state[key], emb):
            raise CheckpointError(f"{path}: {key} differs from encoder.embed_tokens.weight; "
                                  "ComSL needs mBART's shared embeddings")
    return dims, state


def state_mismatch(own: dict, state: dict, limit: int = 20) -> list:
    """Lines naming every missing, unexpected or mis-shaped key of ``state`` against the
    module state ``own``; empty when they fit."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    lines = []
    for name, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
        if items:
            shown = items[:limit] + ([f"... {len(items) - limit} more"] if len(items) > limit else [])
            lines.append(f"  {name} ({len(items)}): " + ", ".join(shown))
    return lines


# Not a weight: where the state of a checkpoint trained with a trimmed vocabulary carries its
# row mapping (trimmed id -> full id), so that the loader can check it against its own.
TRIM_IDS_KEY = "vocabulary.trim.full_ids"


def _mbart_part_of_comsl_checkpoint(ckpt: dict) -> tuple:
    """(MbartDims, encoder.*/decoder.* state) of a comsl_fairseq checkpoint, e.g. the MT stage's;
    a trimmed one's state also holds its row mapping under :data:`TRIM_IDS_KEY`."""
    from comsl_fairseq.vocab.fingerprint import checkpoint_fingerprint

    dims = MbartDims.from_cfg(ckpt["cfg"]["model"])
    state = {k.replace("encoder.mbart.", "encoder.", 1): v for k, v in ckpt["model"].items()
             if k.startswith(("encoder.mbart.", "decoder."))}
    trim = (checkpoint_fingerprint(ckpt) or {}).get("trim")
    if trim is not None:
        state[TRIM_IDS_KEY] = torch.tensor(trim["full_ids"], dtype=torch.long)
    return dims, state


def load_strict(module: nn.Module, state: dict, source: str, what: str) -> None:
    """Copy ``state`` into ``module``; every missing, unexpected or mis-shaped key is
    named in one error (``source`` is the file, ``what`` the part being loaded)."""
    lines = state_mismatch(module.state_dict(), state)
    if lines:
        raise CheckpointError("\n".join([f"{source} does not fit the {what}:"] + lines))
    module.load_state_dict(state, strict=True)
