"""Convert a Hugging Face mBART-50 folder into the fairseq layout the model loads."""
import json
import logging
import shutil
from argparse import Namespace
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

N_LANG_CODES = 52

# Hugging Face parameter names -> fairseq names, per layer (self-attention, cross-attention, FFN).
LAYER_RENAMES = {
    "self_attn.k_proj": "self_attn.k_proj", "self_attn.v_proj": "self_attn.v_proj",
    "self_attn.q_proj": "self_attn.q_proj", "self_attn.out_proj": "self_attn.out_proj",
    "self_attn_layer_norm": "self_attn_layer_norm",
    "encoder_attn.k_proj": "encoder_attn.k_proj", "encoder_attn.v_proj": "encoder_attn.v_proj",
    "encoder_attn.q_proj": "encoder_attn.q_proj", "encoder_attn.out_proj": "encoder_attn.out_proj",
    "encoder_attn_layer_norm": "encoder_attn_layer_norm",
    "fc1": "fc1", "fc2": "fc2", "final_layer_norm": "final_layer_norm",
}


class ConversionError(ValueError):
    pass


def load_hf_state(hf_dir: Path) -> dict:
    if (hf_dir / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(hf_dir / "model.safetensors"))
    if (hf_dir / "pytorch_model.bin").is_file():
        from comsl_fairseq.checkpoints.allowlist import load_weights_only

        return load_weights_only(hf_dir / "pytorch_model.bin", "Hugging Face weights")
    raise ConversionError(f"{hf_dir} has neither model.safetensors nor pytorch_model.bin")


def convert_state(hf: dict, config: dict) -> dict:
    """HF MBartForConditionalGeneration tensors -> fairseq BARTModel (mbart_large) tensors."""
    hf = {k[len("model."):] if k.startswith("model.") else k: v for k, v in hf.items()}
    bias = hf.pop("final_logits_bias", None)
    if bias is not None and bias.abs().max() > 0:
        raise ConversionError("final_logits_bias is non-zero; fairseq's mBART has no output bias")
    shared = hf.pop("shared.weight", None)
    if shared is None:
        shared = hf["encoder.embed_tokens.weight"]
    out = {}
    for side in ("encoder", "decoder"):
        out[f"{side}.embed_tokens.weight"] = shared
        out[f"{side}.embed_positions.weight"] = hf.pop(f"{side}.embed_positions.weight")
        for name in ("layernorm_embedding", "layer_norm"):
            for p in ("weight", "bias"):
                out[f"{side}.{name}.{p}"] = hf.pop(f"{side}.{name}.{p}")
        hf.pop(f"{side}.embed_tokens.weight", None)
        out[f"{side}.version"] = torch.tensor([3.0])
        n_layers = config[f"{side}_layers"]
        for i in range(n_layers):
            for src, dst in LAYER_RENAMES.items():
                for p in ("weight", "bias"):
                    key = f"{side}.layers.{i}.{src}.{p}"
                    if key in hf:
                        out[f"{side}.layers.{i}.{dst}.{p}"] = hf.pop(key)
    lm_head = hf.pop("lm_head.weight", None)
    if lm_head is not None and not torch.equal(lm_head, shared):
        raise ConversionError("lm_head is not tied to the shared embedding; ComSL needs tied embeddings")
    out["decoder.output_projection.weight"] = shared
    if hf:
        raise ConversionError(f"unconverted Hugging Face tensors: {sorted(hf)[:10]}")
    return out


def fairseq_args(config: dict) -> Namespace:
    from fairseq.models.bart.model import mbart_large_architecture

    if config.get("model_type") != "mbart":
        raise ConversionError(f"config.json model_type is {config.get('model_type')!r}, not 'mbart'")
    if not config.get("scale_embedding", False):
        raise ConversionError("config.json scale_embedding is false; mBART-50 scales embeddings")
    if config["encoder_ffn_dim"] != config["decoder_ffn_dim"]:
        raise ConversionError("encoder and decoder FFN widths differ")
    args = Namespace(
        arch="mbart_large", task="translation_multi_simple_epoch", criterion="label_smoothed_cross_entropy",
        encoder_embed_dim=config["d_model"], decoder_embed_dim=config["d_model"],
        encoder_ffn_embed_dim=config["encoder_ffn_dim"], decoder_ffn_embed_dim=config["decoder_ffn_dim"],
        encoder_layers=config["encoder_layers"], decoder_layers=config["decoder_layers"],
        encoder_attention_heads=config["encoder_attention_heads"],
        decoder_attention_heads=config["decoder_attention_heads"],
        max_source_positions=config["max_position_embeddings"], max_target_positions=config["max_position_embeddings"],
        activation_fn=config.get("activation_function", "gelu"), encoder_normalize_before=True,
        decoder_normalize_before=True, dropout=config.get("dropout", 0.1),
        attention_dropout=config.get("attention_dropout", 0.0), share_all_embeddings=True,
    )
    mbart_large_architecture(args)
    return args


def write_dict(spm_path: Path, out: Path, vocab_rows: int) -> int:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    n = sp.get_piece_size()
    specials = [sp.id_to_piece(i) for i in range(3)]
    if not (sp.is_unknown(0) and sp.is_control(1) and sp.is_control(2)):
        raise ConversionError(f"{spm_path}: pieces 0-2 are {specials}, expected <unk> <s> </s>")
    expected = n + 1 + N_LANG_CODES + 1  # HF ids: pieces shifted by one, then 52 codes and <mask>
    if vocab_rows != expected:
        raise ConversionError(f"embedding has {vocab_rows} rows, but {spm_path.name} with {n} pieces, the 52 "
                              f"language codes and <mask> give {expected}")
    from comsl_fairseq.vocab.vocabulary import write_fairseq_dict

    return write_fairseq_dict(spm_path, out / "dict.txt")  # pieces 3 .. n-1, in id order


def convert(hf_dir: Path, out: Path) -> Path:
    """Write OUT/model.pt, dict.txt and sentence.bpe.model from the Hugging Face folder; OUT."""
    hf_dir, out = Path(hf_dir).resolve(), Path(out)
    for name in ("config.json", "sentencepiece.bpe.model"):
        if not (hf_dir / name).is_file():
            raise ConversionError(f"{hf_dir / name} not found")
    from comsl_fairseq.checkpoints.pretrained import load_mbart_checkpoint

    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    try:
        state = convert_state(load_hf_state(hf_dir), config)
        model_args = fairseq_args(config)
        out.mkdir(parents=True, exist_ok=True)
        n_dict = write_dict(hf_dir / "sentencepiece.bpe.model", out, state["encoder.embed_tokens.weight"].size(0))
    except KeyError as e:
        raise ConversionError(f"cannot convert {hf_dir}: {e}") from None
    shutil.copy(hf_dir / "sentencepiece.bpe.model", out / "sentence.bpe.model")
    history = [{"criterion_name": "converted", "optimizer_name": "none", "lr_scheduler_state": {"best": None},
                "num_updates": 0}]
    torch.save({"args": model_args, "model": state, "optimizer_history": history, "extra_state": {"epoch": 1},
                "last_optimizer_state": None}, out / "model.pt")
    load_mbart_checkpoint(out / "model.pt")  # reads back as our loader will
    logger.info("wrote %s/model.pt (%d+%d layers, d=%d, %d rows), dict.txt (%d pieces), sentence.bpe.model", out,
                model_args.encoder_layers, model_args.decoder_layers, model_args.encoder_embed_dim,
                state["encoder.embed_tokens.weight"].size(0), n_dict)
    return out
