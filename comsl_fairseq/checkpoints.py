"""Strict loading of the pretrained parts: an openai-whisper ``.pt`` and a fairseq
mBART-50 ``model.pt`` (SPEC §2). Nothing is downloaded; every mismatch is named.

Both files are read with torch's weights-only unpickler (the default since torch 2.6);
fairseq checkpoints need the classes allowlisted in :mod:`comsl_fairseq.safe_globals`.
"""
import logging
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

WHISPER_DIM_KEYS = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer")

# mBART hyper-parameters read from the checkpoint's saved args / cfg.model.
MBART_DIM_KEYS = ("encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_layers", "encoder_attention_heads",
                  "decoder_embed_dim", "decoder_ffn_embed_dim", "decoder_layers", "decoder_attention_heads",
                  "max_source_positions", "max_target_positions", "activation_fn")
# What makes a checkpoint mBART-shaped; anything else would load but compute something else.
MBART_REQUIRED = {"encoder_normalize_before": True, "decoder_normalize_before": True,
                  "layernorm_embedding": True, "no_scale_embedding": False}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what differs."""


def _load(path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} checkpoint {path} not found")
    try:
        return torch.load(path, map_location="cpu")  # weights_only=True by default (torch >= 2.6)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError ... for bad files
        raise CheckpointError(f"cannot load {what} checkpoint {path}: {type(e).__name__}: {e}") from None


def load_whisper_checkpoint(path) -> tuple:
    """Read an openai-whisper checkpoint. Returns (dims, encoder_state) where ``dims``
    has the keys of :data:`WHISPER_DIM_KEYS` and ``encoder_state`` the ``encoder.*``
    tensors without their prefix."""
    ckpt = _load(path, "Whisper")
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not an openai-whisper checkpoint: expected keys 'dims' and "
                              f"'model_state_dict', found {keys}")
    missing = [k for k in WHISPER_DIM_KEYS if k not in ckpt["dims"]]
    if missing:
        raise CheckpointError(f"{path}: 'dims' lacks {missing}")
    dims = {k: int(ckpt["dims"][k]) for k in WHISPER_DIM_KEYS}
    if dims["n_mels"] not in (80, 128):
        raise CheckpointError(f"{path}: n_mels={dims['n_mels']}; Whisper's front end supports 80 or 128")
    state = {k[len("encoder."):]: v for k, v in ckpt["model_state_dict"].items() if k.startswith("encoder.")}
    if not state:
        raise CheckpointError(f"{path}: model_state_dict has no encoder.* tensors")
    return dims, state


def load_mbart_checkpoint(path) -> tuple:
    """Read a fairseq mBART(-50) ``model.pt``. Returns (hparams, state_dict): ``hparams``
    holds :data:`MBART_DIM_KEYS` from the saved args or cfg."""
    from fairseq import checkpoint_utils

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"mBART checkpoint {path} not found")
    try:
        ckpt = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    except Exception as e:
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
    if get("encoder_embed_dim") != get("decoder_embed_dim"):
        raise CheckpointError(f"{path}: encoder and decoder widths differ; ComSL shares one embedding")
    hparams = {k: get(k) for k in MBART_DIM_KEYS}
    state = ckpt["model"]
    emb = state.get("encoder.embed_tokens.weight")
    if emb is None:
        raise CheckpointError(f"{path}: no encoder.embed_tokens.weight; not an mBART checkpoint")
    for key in ("decoder.embed_tokens.weight", "decoder.output_projection.weight"):
        if key in state and not torch.equal(state[key], emb):
            raise CheckpointError(f"{path}: {key} differs from encoder.embed_tokens.weight; "
                                  "ComSL needs mBART's shared embeddings")
    return hparams, state


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


def _mbart_part_of_comsl_checkpoint(ckpt: dict) -> tuple:
    """(hparams, encoder.*/decoder.* state) of a comsl_fairseq checkpoint, e.g. the MT stage's."""
    cfg = ckpt["cfg"]["model"]
    hparams = {"encoder_embed_dim": cfg.mbart_dim, "decoder_embed_dim": cfg.mbart_dim,
               "encoder_ffn_embed_dim": cfg.mbart_ffn_dim, "decoder_ffn_embed_dim": cfg.mbart_ffn_dim,
               "encoder_layers": cfg.mbart_encoder_layers, "decoder_layers": cfg.mbart_decoder_layers,
               "encoder_attention_heads": cfg.mbart_heads, "decoder_attention_heads": cfg.mbart_heads,
               "max_source_positions": cfg.mbart_max_positions, "max_target_positions": cfg.mbart_max_positions,
               "activation_fn": cfg.mbart_activation_fn}
    state = {k.replace("encoder.mbart.", "encoder.", 1): v for k, v in ckpt["model"].items()
             if k.startswith(("encoder.mbart.", "decoder."))}
    return hparams, state


def load_strict(module: nn.Module, state: dict, source: str, what: str) -> None:
    """Copy ``state`` into ``module``; every missing, unexpected or mis-shaped key is
    named in one error (``source`` is the file, ``what`` the part being loaded)."""
    lines = state_mismatch(module.state_dict(), state)
    if lines:
        raise CheckpointError("\n".join([f"{source} does not fit the {what}:"] + lines))
    module.load_state_dict(state, strict=True)
