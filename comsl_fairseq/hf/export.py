"""Write a trained ComSL model as a Hugging Face ``transformers`` folder.

    OUT/config.json                 ComslConfig (Whisper + mBART sub-configs, language tags), auto_map
    OUT/model.safetensors           the weights under transformers' module names
    OUT/generation_config.json      beam 5, decoder start </s>, max_new_tokens = fairseq's max_len_b + 1
    OUT/preprocessor_config.json    the feature extractor (n_mels, fixed padding / trailing silence)
    OUT/processor_config.json       the processor (feature extractor + tokenizer)
    OUT/tokenizer_config.json, vocab.json, sentencepiece.bpe.model
                                    the training dictionary, id for id, and its SentencePiece model
                                    (a trimmed vocabulary: its rows, and the model segmenting with them)
    OUT/*_comsl.py                  the model, configuration, feature-extraction, tokenizer and
                                    processor code (transformers, torch, numpy, sentencepiece only)
    OUT/README.md                   model card with Hugging Face metadata

Loading needs transformers alone: ``AutoModelForSpeechSeq2Seq.from_pretrained(OUT,
trust_remote_code=True)`` and ``AutoProcessor.from_pretrained(OUT, trust_remote_code=True)``.
The fairseq training state (optimizer, schedule, criterion) is not carried: training
continues from the fairseq checkpoint.
"""
import json
import logging
import shutil
from pathlib import Path

import torch

from comsl_fairseq.checkpoints.pretrained import MbartDims
from comsl_fairseq.inference.export import ExportError, atomic_folder, score_log
from comsl_fairseq.inference.languages import training_pairs
from comsl_fairseq.inference.translator import recorded_pairs
from comsl_fairseq.modules.adapter import ADAPTER_ACTIVATIONS
from comsl_fairseq.vocab.languages import EXTRA_TAGS, ML50_TAGS, mbart_tag
from comsl_fairseq.vocab.trim import TrimmedDictionary

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
CODE_FILES = ("configuration_comsl.py", "modeling_comsl.py", "feature_extraction_comsl.py",
              "tokenization_comsl.py", "processing_comsl.py")
AUTO_MAP = {"AutoConfig": "configuration_comsl.ComslConfig",
            "AutoModelForSpeechSeq2Seq": "modeling_comsl.ComslForSpeechSeq2Seq",
            "AutoModel": "modeling_comsl.ComslForSpeechSeq2Seq"}
# openai-whisper's block names -> transformers' WhisperEncoderLayer names
_WHISPER_LAYER = {"attn.query.": "self_attn.q_proj.", "attn.key.": "self_attn.k_proj.",
                  "attn.value.": "self_attn.v_proj.", "attn.out.": "self_attn.out_proj.",
                  "attn_ln.": "self_attn_layer_norm.", "mlp.0.": "fc1.", "mlp.2.": "fc2.",
                  "mlp_ln.": "final_layer_norm."}
# fairseq activation names -> transformers' ACT2FN names (both the exact erf GELU)
_ACTIVATIONS = {"gelu": "gelu", "relu": "relu"}
DEFAULT_MAX_LEN_B = 200  # fairseq-generate's default --max-len-b


def hf_key(key: str) -> str | None:
    """Our fairseq state-dict key -> the exported model's key (None: not a weight, e.g. ``.version``)."""
    if key.endswith(".version") or key.endswith("._float_tensor"):
        return None
    if key == "decoder.output_projection.weight":
        return "lm_head.weight"
    if key.startswith("encoder.whisper."):
        rest = key[len("encoder.whisper."):]
        if rest == "positional_embedding":
            return "encoder.whisper.embed_positions.weight"
        if rest.startswith("ln_post."):
            return "encoder.whisper.layer_norm." + rest[len("ln_post."):]
        if rest.startswith("blocks."):
            _, i, sub = rest.split(".", 2)
            for old, new in _WHISPER_LAYER.items():
                if sub.startswith(old):
                    return f"encoder.whisper.layers.{i}.{new}{sub[len(old):]}"
            raise ExportError(f"unexpected Whisper weight {key}")
        return key  # conv1, conv2
    return key  # adapter, mBART encoder (encoder.mbart.*) and decoder keep fairseq's names


def language_codes() -> dict:
    """Every accepted language code (``fr``, ``zh-CN``, ``fr_XX``) -> its mBART-50 tag."""
    tags = list(ML50_TAGS) + list(EXTRA_TAGS)
    candidates = set(tags) | {t.split("_")[0] for t in tags} | {t.replace("_", "-") for t in tags}
    codes = {}
    for code in sorted(candidates):
        try:
            codes[code] = mbart_tag(code)
        except KeyError:
            continue  # a prefix shared by two tags, or no code at all
    return codes


def build_config(model, dictionary, cfg):
    """ComslConfig of a loaded fairseq model (dims read from its modules) and its dictionary."""
    from transformers import MBartConfig, WhisperConfig

    from comsl_fairseq.hf.configuration_comsl import ComslConfig

    enc = model.encoder
    if enc.whisper is None:
        raise ExportError("a text-only (mbart50_text) model has no speech encoder to export")
    w = enc.whisper
    mbart_enc, dec = enc.mbart, model.decoder
    act_name = MbartDims.from_cfg(cfg.model).activation_fn
    if act_name not in _ACTIVATIONS:
        raise ExportError(f"mBART activation {act_name!r} has no transformers equivalent here "
                          f"(supported: {sorted(_ACTIVATIONS)})")
    adapter_act = next(name for name, fn in ADAPTER_ACTIVATIONS.items() if fn is enc.adapter.ffn_in.activation)
    layer0 = w.blocks[0]
    whisper = WhisperConfig(
        num_mel_bins=w.n_mels, d_model=w.n_state, encoder_layers=len(w.blocks),
        encoder_attention_heads=layer0.attn.n_head, encoder_ffn_dim=layer0.mlp[0].out_features,
        max_source_positions=w.n_ctx, activation_function="gelu", dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, scale_embedding=False)
    d = mbart_enc.embed_tokens.embedding_dim
    mbart = MBartConfig(
        vocab_size=len(dictionary), d_model=d, encoder_layers=len(mbart_enc.layers),
        decoder_layers=len(dec.layers), encoder_attention_heads=mbart_enc.layers[0].self_attn.num_heads,
        decoder_attention_heads=dec.layers[0].self_attn.num_heads, encoder_ffn_dim=mbart_enc.layers[0].fc1.out_features,
        decoder_ffn_dim=dec.layers[0].fc1.out_features, max_position_embeddings=mbart_enc.max_source_positions,
        activation_function=_ACTIVATIONS[act_name], scale_embedding=mbart_enc.embed_scale != 1.0,
        dropout=float(cfg.model.dropout), attention_dropout=float(cfg.model.attention_dropout),
        activation_dropout=float(cfg.model.activation_dropout), pad_token_id=dictionary.pad(),
        bos_token_id=dictionary.bos(), eos_token_id=dictionary.eos(), decoder_start_token_id=dictionary.eos(),
        forced_eos_token_id=None)
    if mbart_enc.embed_positions.weight.size(0) != mbart.max_position_embeddings + 2:
        raise ExportError("the mBART positional embedding does not have fairseq's max_positions + 2 rows")
    codes = language_codes()
    tags = {tag: dictionary.index(f"[{tag}]") for tag in sorted(set(codes.values()))}
    return ComslConfig(
        whisper_config=whisper, mbart_config=mbart, adapter_ffn_mult=enc.adapter.ffn_in.fc1.out_features // w.n_state,
        adapter_activation=adapter_act, language_tags=tags, language_codes=codes, vocab_size=len(dictionary),
        d_model=d, pad_token_id=dictionary.pad(), bos_token_id=dictionary.bos(), eos_token_id=dictionary.eos(),
        decoder_start_token_id=dictionary.eos(), architectures=["ComslForSpeechSeq2Seq"])


def convert_state(state: dict) -> dict:
    """Our fairseq state dict -> the exported model's (every tensor kept, contiguous fp32)."""
    out = {}
    for key, value in state.items():
        new = hf_key(key)
        if new is not None:
            out[new] = value.detach().float().contiguous()
    return out


def export_hf(path, out_dir, data=None, score_logs=(), overwrite: bool = False,
              max_len_b: int = DEFAULT_MAX_LEN_B, beam: int = 5) -> Path:
    """Write the transformers folder ``out_dir`` for a training checkpoint or an exported model
    folder ``path``; returns its path. ``data``: the training data folder if it moved.
    ``score_logs``: fairseq-generate outputs scored with sacreBLEU for the card's metrics.
    ``max_len_b`` / ``beam``: the decoding defaults written to generation_config.json."""
    try:
        from transformers import GenerationConfig
    except ImportError:
        raise ExportError("the Hugging Face export needs transformers: pip install 'comsl_fairseq[hf]'") from None

    from comsl_fairseq import SpeechTranslator
    from comsl_fairseq.hf.feature_extraction_comsl import ComslFeatureExtractor
    from comsl_fairseq.hf.modeling_comsl import ComslForSpeechSeq2Seq
    from comsl_fairseq.hf.processing_comsl import ComslProcessor
    from comsl_fairseq.hf.tokenization_comsl import ComslTokenizer

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; pass --overwrite to replace its files")
    translator = SpeechTranslator.from_pretrained(path, device="cpu", data=data)
    model, task, cfg = translator.model, translator.task, translator.cfg
    dictionary = task.target_dictionary
    config = build_config(model, dictionary, cfg)
    config.auto_map = dict(AUTO_MAP)
    hf_model = ComslForSpeechSeq2Seq(config).eval()
    state = convert_state(model.state_dict())
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    tied = {"encoder.mbart.embed_tokens.weight", "lm_head.weight"}
    if unexpected or set(missing) - tied:
        raise ExportError(f"weights do not map onto the transformers model: missing {sorted(set(missing) - tied)}, "
                          f"unexpected {sorted(unexpected)}")
    emb = state["decoder.embed_tokens.weight"]
    for key in ("encoder.mbart.embed_tokens.weight", "lm_head.weight"):
        if key in state and not torch.equal(state[key], emb):
            raise ExportError(f"{key} is not tied to the decoder's token embedding")
    hf_model.generation_config = GenerationConfig(
        decoder_start_token_id=dictionary.eos(), bos_token_id=dictionary.bos(), eos_token_id=dictionary.eos(),
        pad_token_id=dictionary.pad(), num_beams=beam, max_new_tokens=max_len_b + 1, length_penalty=1.0,
        early_stopping=True)
    folder = Path(path)
    pairs = (recorded_pairs(folder) if folder.is_dir() else None) or training_pairs(cfg, data)
    with atomic_folder(out) as tmp:
        hf_model.save_pretrained(tmp, safe_serialization=True)

        vocab = {dictionary[i]: i for i in range(len(dictionary))}
        (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        if isinstance(dictionary, TrimmedDictionary):
            # vocab.json holds the kept rows only, and the SentencePiece model must segment with
            # them only, as our tokenizer does: the copy in which every other piece is unused
            (tmp / "sentencepiece.bpe.model").write_bytes(task.tokenizer.sp.serialized_model_proto())
        else:
            shutil.copyfile(task.data_cfg.sentencepiece_model, tmp / "sentencepiece.bpe.model")
        tokenizer = ComslTokenizer(str(tmp / "vocab.json"), str(tmp / "sentencepiece.bpe.model"),
                                   language_codes=config.language_codes)
        extractor = ComslFeatureExtractor(feature_size=config.whisper_config.num_mel_bins,
                                          pad_seconds=float(model.encoder.pad_seconds),
                                          trailing_silence=float(model.encoder.trailing_silence))
        ComslFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
        ComslTokenizer.register_for_auto_class("AutoTokenizer")
        ComslProcessor.register_for_auto_class("AutoProcessor")
        processor = ComslProcessor(extractor, tokenizer)
        processor.save_pretrained(tmp)
        extractor.save_pretrained(tmp)  # preprocessor_config.json, also read by AutoFeatureExtractor
        for name in CODE_FILES:
            shutil.copyfile(HERE / name, tmp / name)
        _set_auto_map(tmp)

        from comsl_fairseq.hf.model_card import hf_model_card

        scores = [score_log(p) for p in score_logs]
        (tmp / "README.md").write_text(hf_model_card(out, cfg, pairs, scores, config), encoding="utf-8")
    logger.info("exported %s -> %s (transformers)", path, out)
    return out


def _set_auto_map(out: Path) -> None:
    """Point every saved component at its class in the copied code files (module-local names,
    so that nothing refers to comsl_fairseq)."""
    maps = {"tokenizer_config.json": {"AutoTokenizer": ["tokenization_comsl.ComslTokenizer", None],
                                      "AutoProcessor": "processing_comsl.ComslProcessor"},
            "preprocessor_config.json": {"AutoFeatureExtractor": "feature_extraction_comsl.ComslFeatureExtractor",
                                         "AutoProcessor": "processing_comsl.ComslProcessor"},
            "processor_config.json": {"AutoProcessor": "processing_comsl.ComslProcessor"}}
    for name, auto_map in maps.items():
        path = out / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            data["auto_map"] = auto_map
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
