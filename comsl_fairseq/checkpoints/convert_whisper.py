"""Convert a Hugging Face or CTranslate2 Whisper model to the openai-whisper checkpoint format."""
import json
import logging
import re
import struct
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("convert_whisper")

# ------------------------------------------------------------------ Hugging Face

# HF module names -> openai-whisper names, inside one encoder / decoder layer
HF_LAYER = {"self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key", "self_attn.v_proj": "attn.value",
            "self_attn.out_proj": "attn.out", "self_attn_layer_norm": "attn_ln",
            "encoder_attn.q_proj": "cross_attn.query", "encoder_attn.k_proj": "cross_attn.key",
            "encoder_attn.v_proj": "cross_attn.value", "encoder_attn.out_proj": "cross_attn.out",
            "encoder_attn_layer_norm": "cross_attn_ln", "fc1": "mlp.0", "fc2": "mlp.2", "final_layer_norm": "mlp_ln"}
HF_TOP = {"encoder.conv1": "encoder.conv1", "encoder.conv2": "encoder.conv2",
          "encoder.embed_positions.weight": "encoder.positional_embedding", "encoder.layer_norm": "encoder.ln_post",
          "decoder.embed_tokens.weight": "decoder.token_embedding.weight",
          "decoder.embed_positions.weight": "decoder.positional_embedding", "decoder.layer_norm": "decoder.ln"}


def read_hf_state(folder: Path) -> dict:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        from comsl_fairseq.checkpoints.allowlist import load_weights_only

        return load_weights_only(folder / "pytorch_model.bin", "Hugging Face weights")
    raise SystemExit(f"error: {folder} has a Hugging Face config.json but neither model.safetensors nor "
                     "pytorch_model.bin (sharded checkpoints: merge them first)")


def hf_key(key: str) -> str | None:
    """openai-whisper name of a Hugging Face Whisper tensor; None for the tied output projection."""
    if key == "proj_out.weight":
        return None
    key = key.removeprefix("model.")
    for side, new_side in (("encoder.layers.", "encoder.blocks."), ("decoder.layers.", "decoder.blocks.")):
        if key.startswith(side):
            index, rest = key[len(side):].split(".", 1)
            module, param = rest.rsplit(".", 1)
            if module in HF_LAYER:
                return f"{new_side}{index}.{HF_LAYER[module]}.{param}"
    for old, new in HF_TOP.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    raise SystemExit(f"error: unknown Hugging Face Whisper tensor {key!r}")


def convert_hf(folder: Path) -> tuple:
    """(dims, state) from a Hugging Face WhisperForConditionalGeneration / WhisperModel folder."""
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    hf = read_hf_state(folder)
    state = {}
    for key, value in hf.items():
        new = hf_key(key)
        if new is not None:
            state[new] = value
    emb = state["decoder.token_embedding.weight"]
    if "proj_out.weight" in hf and not torch.equal(hf["proj_out.weight"], emb):
        raise SystemExit("error: proj_out.weight differs from the token embedding; openai-whisper ties them")
    dims = {"n_mels": cfg["num_mel_bins"], "n_audio_ctx": cfg["max_source_positions"],
            "n_audio_state": cfg["d_model"], "n_audio_head": cfg["encoder_attention_heads"],
            "n_audio_layer": cfg["encoder_layers"], "n_vocab": emb.size(0),
            "n_text_ctx": cfg["max_target_positions"], "n_text_state": cfg["d_model"],
            "n_text_head": cfg["decoder_attention_heads"], "n_text_layer": cfg["decoder_layers"]}
    return dims, state

# ------------------------------------------------------------------ CTranslate2


CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # 5: bfloat16, below
CT2_METADATA = {"activation", "alibi", "alignment_heads", "alignment_layer", "num_heads", "pre_norm",
                "scale_embeddings", "start_from_zero_embedding"}


def read_ctranslate2_bin(path: Path) -> tuple:
    """(spec name, {variable name: torch tensor}, {alias: variable}) of a CTranslate2 model.bin."""
    data = path.read_bytes()
    pos = 0

    def need(n: int) -> None:
        if pos + n > len(data):
            raise SystemExit(f"error: {path}: ends at byte {len(data)} inside the data; truncated (split files "
                             "must be concatenated first)")

    def take(fmt: str):
        nonlocal pos
        need(struct.calcsize("<" + fmt))
        value = struct.unpack_from("<" + fmt, data, pos)[0]
        pos += struct.calcsize("<" + fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("H")
        need(n)
        text = data[pos:pos + n - 1].decode("utf-8")  # n counts the trailing NUL
        pos += n
        return text

    version = take("I")
    if version != 6:
        raise SystemExit(f"error: {path}: CTranslate2 binary version {version}; this reader knows version 6")
    spec, _revision, n_vars = string(), take("I"), take("I")
    variables = {}
    for _ in range(n_vars):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype_id, n_bytes = take("B"), take("I")
        need(n_bytes)
        raw = data[pos:pos + n_bytes]
        pos += n_bytes
        if dtype_id == 5:  # bfloat16: the high half of a float32
            bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif dtype_id in CT2_DTYPES:
            array = np.frombuffer(raw, dtype=CT2_DTYPES[dtype_id])
        else:
            raise SystemExit(f"error: {path}: variable {name} has unknown dtype id {dtype_id}")
        variables[name] = torch.from_numpy(array.copy()).reshape(shape)
    aliases = {string(): string() for _ in range(take("I"))}
    if pos != len(data):
        raise SystemExit(f"error: {path}: {len(data) - pos} bytes left after the aliases; truncated or not "
                         "a CTranslate2 model.bin (split files must be concatenated first)")
    return spec, variables, aliases


def _ct2_attention(v: dict, src: str, dst: str, fused: int, state: dict) -> None:
    """A CTranslate2 attention block -> openai-whisper query/key/value/out. ``fused`` is 3
    for self-attention (linear_0 = q|k|v) and 2 for cross-attention (linear_1 = k|v)."""
    names = ["query", "key", "value"]
    first = 0 if fused == 3 else 1
    w, b = v.pop(f"{src}/linear_{first}/weight"), v.pop(f"{src}/linear_{first}/bias")
    if fused == 2:
        state[f"{dst}.query.weight"] = v.pop(f"{src}/linear_0/weight")
        state[f"{dst}.query.bias"] = v.pop(f"{src}/linear_0/bias")
        names = names[1:]
    for name, wi, bi in zip(names, w.chunk(fused), b.chunk(fused), strict=True):
        state[f"{dst}.{name}.weight"] = wi
        if name == "key":
            if bi.abs().max() > 0:
                raise SystemExit(f"error: {src}: non-zero key bias; openai-whisper's key projection has none")
        else:
            state[f"{dst}.{name}.bias"] = bi
    out = 1 if fused == 3 else 2  # the output projection follows the fused one
    state[f"{dst}.out.weight"] = v.pop(f"{src}/linear_{out}/weight")
    state[f"{dst}.out.bias"] = v.pop(f"{src}/linear_{out}/bias")
    _ct2_layer_norm(v, f"{src}/layer_norm", f"{dst}_ln", state)  # attn_ln / cross_attn_ln


def _ct2_layer_norm(v: dict, src: str, dst: str, state: dict) -> None:
    state[f"{dst}.weight"], state[f"{dst}.bias"] = v.pop(f"{src}/gamma"), v.pop(f"{src}/beta")



def convert_ctranslate2(folder: Path) -> tuple:
    """(dims, state) from a CTranslate2 Whisper folder (model.bin + config.json)."""
    spec, v, aliases = read_ctranslate2_bin(folder / "model.bin")
    if spec != "WhisperSpec":
        raise SystemExit(f"error: {folder / 'model.bin'} holds a {spec}, not a WhisperSpec")
    quantized = [k for k in v if k.endswith("weight_scale")]
    if quantized:
        raise SystemExit(f"error: {folder} is quantized ({quantized[0]}, ...); convert the model with "
                         "--quantization float16 or float32 for this script")
    heads = {side: int(v.pop(f"{side}/num_heads")) for side in ("encoder", "decoder")}
    for key in [k for k in v if k.split("/")[-1] in CT2_METADATA]:
        del v[key]
    state, n_layers = {}, {}
    for side in ("encoder", "decoder"):
        n_layers[side] = len({m.group(1) for k in v for m in [re.match(rf"{side}/layer_(\d+)/", k)] if m})
        for i in range(n_layers[side]):
            src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            _ct2_attention(v, f"{src}/self_attention", f"{dst}.attn", 3, state)
            if side == "decoder":
                _ct2_attention(v, f"{src}/attention", f"{dst}.cross_attn", 2, state)
            _ct2_layer_norm(v, f"{src}/ffn/layer_norm", f"{dst}.mlp_ln", state)
            for j, k in ((0, 0), (1, 2)):
                state[f"{dst}.mlp.{k}.weight"] = v.pop(f"{src}/ffn/linear_{j}/weight")
                state[f"{dst}.mlp.{k}.bias"] = v.pop(f"{src}/ffn/linear_{j}/bias")
    for conv in ("conv1", "conv2"):
        for p in ("weight", "bias"):
            state[f"encoder.{conv}.{p}"] = v.pop(f"encoder/{conv}/{p}")
    state["encoder.positional_embedding"] = v.pop("encoder/position_encodings/encodings")
    _ct2_layer_norm(v, "encoder/layer_norm", "encoder.ln_post", state)
    state["decoder.token_embedding.weight"] = v.pop("decoder/embeddings/weight")
    state["decoder.positional_embedding"] = v.pop("decoder/position_encodings/encodings")
    _ct2_layer_norm(v, "decoder/layer_norm", "decoder.ln", state)
    if v:
        raise SystemExit(f"error: {folder}: CTranslate2 variables not converted: {sorted(v)[:10]}")
    if aliases and aliases != {"decoder/projection/weight": "decoder/embeddings/weight"}:
        logger.warning("aliases other than the tied output projection ignored: %s", aliases)
    conv1, enc_pos, dec_pos = state["encoder.conv1.weight"], state["encoder.positional_embedding"], \
        state["decoder.positional_embedding"]
    dims = {"n_mels": conv1.size(1), "n_audio_ctx": enc_pos.size(0), "n_audio_state": enc_pos.size(1),
            "n_audio_head": heads["encoder"], "n_audio_layer": n_layers["encoder"],
            "n_vocab": state["decoder.token_embedding.weight"].size(0), "n_text_ctx": dec_pos.size(0),
            "n_text_state": dec_pos.size(1), "n_text_head": heads["decoder"], "n_text_layer": n_layers["decoder"]}
    return dims, state

# ------------------------------------------------------------------ common


def detect(src: Path) -> str:
    """'hf' or 'ctranslate2', from the folder's files."""
    if not src.is_dir():
        raise SystemExit(f"error: {src} is not a folder")
    if (src / "model.bin").is_file():
        return "ctranslate2"
    config = src / "config.json"
    if config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("model_type") == "whisper":
        return "hf"
    raise SystemExit(f"error: {src} is neither a Hugging Face Whisper folder (config.json with model_type "
                     "'whisper' and model.safetensors / pytorch_model.bin) nor a CTranslate2 one (model.bin)")


def check_and_pack(dims: dict, state: dict) -> dict:
    """The openai-whisper checkpoint, after checking every key against whisper.model.Whisper."""
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(**{k: int(x) for k, x in dims.items()})
    own = Whisper(dims).state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(set(own) & set(state))
              if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise SystemExit(f"error: converted weights do not fit Whisper{asdict(dims)}: missing {missing[:10]}, "
                         f"unexpected {unexpected[:10]}, mis-shaped {shapes[:10]}")
    return {"dims": asdict(dims), "model_state_dict": {k: state[k].contiguous() for k in own}}


def convert(src: Path, out: Path) -> dict:
    kind = detect(src)
    dims, state = convert_hf(src) if kind == "hf" else convert_ctranslate2(src)
    ckpt = check_and_pack(dims, state)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out)
    logger.info("%s Whisper %s -> %s: %s, %d tensors", kind, src, out, ckpt["dims"], len(ckpt["model_state_dict"]))
    return ckpt
