"""mBART-50 encoder-decoder built from fairseq's own transformer modules, its strict weight
loading (with the two tag rows ComSL adds), and the frozen MT teacher (SPEC §2, §4).
"""
import logging
from argparse import Namespace
from dataclasses import dataclass

import torch
from fairseq.models.bart.model import mbart_large_architecture
from fairseq.models.transformer import TransformerDecoder, TransformerEncoder
from torch import nn

from comsl_fairseq.checkpoints import CheckpointError, load_mbart_checkpoint, load_strict
from comsl_fairseq.data.languages import EXTRA_TAGS, ML50_TAGS, tag_symbol

logger = logging.getLogger(__name__)


@dataclass
class MbartDims:
    """mBART shape, read from a checkpoint (or the tiny preset)."""

    dim: int
    ffn_dim: int
    heads: int
    encoder_layers: int
    decoder_layers: int
    max_positions: int
    activation_fn: str

    @classmethod
    def from_hparams(cls, hp: dict, source) -> "MbartDims":
        """From :func:`load_mbart_checkpoint`'s hyper-parameters."""
        if hp["encoder_ffn_embed_dim"] != hp["decoder_ffn_embed_dim"] or \
                hp["encoder_attention_heads"] != hp["decoder_attention_heads"]:
            raise CheckpointError(f"{source}: encoder and decoder FFN widths or heads differ")
        return cls(hp["encoder_embed_dim"], hp["encoder_ffn_embed_dim"], hp["encoder_attention_heads"],
                   hp["encoder_layers"], hp["decoder_layers"],
                   min(hp["max_source_positions"], hp["max_target_positions"]), hp["activation_fn"])

    @classmethod
    def from_model_cfg(cls, cfg) -> "MbartDims":
        """From our model config's ``mbart_*`` fields."""
        return cls(cfg.mbart_dim, cfg.mbart_ffn_dim, cfg.mbart_heads, cfg.mbart_encoder_layers,
                   cfg.mbart_decoder_layers, cfg.mbart_max_positions, cfg.mbart_activation_fn)


def mbart_namespace(dims: MbartDims, dropout=0.1, attention_dropout=0.0, activation_dropout=0.0) -> Namespace:
    """fairseq's ``mbart_large`` hyper-parameters with these dims: pre-norm, learned
    positions, ``layernorm_embedding``, scaled embeddings, shared input/output embedding."""
    args = Namespace(
        encoder_embed_dim=dims.dim, decoder_embed_dim=dims.dim,
        encoder_ffn_embed_dim=dims.ffn_dim, decoder_ffn_embed_dim=dims.ffn_dim,
        encoder_attention_heads=dims.heads, decoder_attention_heads=dims.heads,
        encoder_layers=dims.encoder_layers, decoder_layers=dims.decoder_layers,
        max_source_positions=dims.max_positions, max_target_positions=dims.max_positions,
        activation_fn=dims.activation_fn, encoder_normalize_before=True, decoder_normalize_before=True,
        dropout=dropout, attention_dropout=attention_dropout, activation_dropout=activation_dropout,
    )
    mbart_large_architecture(args)
    return args


def build_mbart(dims: MbartDims, dictionary, **dropouts) -> tuple:
    """(TransformerEncoder, TransformerDecoder) sharing one token embedding, which is also
    the decoder's output projection."""
    args = mbart_namespace(dims, **dropouts)
    embed_tokens = nn.Embedding(len(dictionary), dims.dim, padding_idx=dictionary.pad())
    nn.init.normal_(embed_tokens.weight, mean=0, std=dims.dim ** -0.5)
    nn.init.constant_(embed_tokens.weight[dictionary.pad()], 0)
    return TransformerEncoder(args, dictionary, embed_tokens), TransformerDecoder(args, dictionary, embed_tokens)


EMBEDDING_KEYS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")


def load_mbart_weights(encoder, decoder, state: dict, source, n_pretrained_rows: int, dict_path) -> None:
    """Load ``encoder.*`` / ``decoder.*`` mBART weights strictly. A checkpoint with the
    mBART-50 rows (dict.txt + 52 tags + <mask>) gets the rows of ComSL's added tags
    initialised to the mean ML50 tag embedding; one that already has them loads as is."""
    d = decoder.dictionary
    emb = state["encoder.embed_tokens.weight"]
    rows = emb.size(0)
    if rows not in (n_pretrained_rows, len(d)):
        raise CheckpointError(
            f"{source} has {rows} embedding rows but {dict_path} + 52 ML50 tags + <mask> give "
            f"{n_pretrained_rows} (+{len(d) - n_pretrained_rows} ComSL tags): the dictionary and the "
            "checkpoint do not belong together")
    state = dict(state)
    if rows < len(d):
        tag_rows = emb[[d.index(tag_symbol(t)) for t in ML50_TAGS]]
        emb = torch.cat([emb, tag_rows.mean(dim=0, keepdim=True).expand(len(d) - rows, -1)], dim=0)
        logger.info("%s: %d embedding rows + %d new (%s) from the mean tag embedding", source, rows,
                    len(d) - rows, " ".join(tag_symbol(t) for t in EXTRA_TAGS))
    for key in EMBEDDING_KEYS:
        state[key] = emb
    holder = nn.Module()  # a view with the checkpoint's key layout: encoder.*, decoder.*
    holder.encoder, holder.decoder = encoder, decoder
    load_strict(holder, state, source, "mBART-50 encoder-decoder")


class MbartTeacher(nn.Module):
    """A frozen mBART translation model: p_teacher(y | x) for MT regularization.

    Always in eval mode (no dropout), never receives gradients, and is kept out of the
    criterion's and the model's state dicts (see ComslMultitaskCriterion).
    """

    def __init__(self, encoder, decoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # stays in eval mode whatever fairseq asks

    @torch.no_grad()
    def forward(self, src_text_tokens, prev_output_tokens):
        """Logits B x T x V of the translation given the transcript ``[src_tag] x </s>``."""
        encoder_out = self.encoder(src_text_tokens)
        return self.decoder(prev_output_tokens, encoder_out=encoder_out)[0]


def load_mt_teacher(path, dictionary, n_pretrained_rows: int, dict_path) -> MbartTeacher:
    """The teacher from a fairseq mBART ``model.pt`` (e.g. mBART-50 fine-tuned on the
    transcript -> translation pairs) or from one of our own checkpoints (its mBART part)."""
    from fairseq import checkpoint_utils

    try:
        ckpt = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"--mt-teacher {path} not found") from None
    if any(k.startswith("encoder.mbart.") for k in ckpt["model"]):  # a comsl_fairseq checkpoint
        dims = MbartDims.from_model_cfg(ckpt["cfg"]["model"])
        state = {k.replace("encoder.mbart.", "encoder.", 1): v for k, v in ckpt["model"].items()
                 if k.startswith(("encoder.mbart.", "decoder."))}
    else:
        hp, state = load_mbart_checkpoint(path)
        dims = MbartDims.from_hparams(hp, path)
    encoder, decoder = build_mbart(dims, dictionary)
    load_mbart_weights(encoder, decoder, state, path, n_pretrained_rows, dict_path)
    logger.info("MT teacher from %s: %d+%d layers, d=%d (frozen, eval mode)", path, dims.encoder_layers,
                dims.decoder_layers, dims.dim)
    return MbartTeacher(encoder, decoder)
