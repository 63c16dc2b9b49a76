"""mBART-50 encoder-decoder from fairseq's transformer modules, its weight loading and the MT teacher.

mBART-50 encoder-decoder built from fairseq's own transformer modules, its strict weight
loading (with the two tag rows ComSL adds), and the frozen MT teacher.
"""
import logging
from argparse import Namespace

import torch
import torch.utils.checkpoint
from fairseq.models import FairseqEncoderDecoderModel
from fairseq.models.bart.model import mbart_large_architecture
from fairseq.models.transformer import TransformerDecoder, TransformerEncoder
from torch import nn

from comsl_fairseq.checkpoints.pretrained import (
    TRIM_IDS_KEY,
    CheckpointError,
    MbartDims,
    load_mbart_checkpoint,
    load_strict,
)
from comsl_fairseq.modules.tied_embedding import SharedTokenEmbedding, TiedOutputProjection
from comsl_fairseq.vocab.languages import EXTRA_TAGS, ML50_TAGS, tag_symbol
from comsl_fairseq.vocab.trim import TrimmedDictionary

logger = logging.getLogger(__name__)


def mbart_namespace(dims: MbartDims, dropout=0.1, attention_dropout=0.0, activation_dropout=0.0,
                    checkpoint_activations=False) -> Namespace:
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
        checkpoint_activations=checkpoint_activations,
    )
    mbart_large_architecture(args)
    return args


def build_mbart(dims: MbartDims, dictionary, **dropouts) -> tuple:
    """(TransformerEncoder, TransformerDecoder) sharing one token embedding, which is also
    the decoder's output projection (modules/tied_embedding.py: one gradient buffer per
    training step when the model opens steps, else torch's embedding)."""
    checkpoint = dropouts.pop("checkpoint_activations", False)
    args = mbart_namespace(dims, **dropouts)  # fairseq's own (re-entrant) checkpoint wrapper stays off
    embed_tokens = SharedTokenEmbedding(len(dictionary), dims.dim, padding_idx=dictionary.pad())
    nn.init.normal_(embed_tokens.weight, mean=0, std=dims.dim ** -0.5)
    nn.init.constant_(embed_tokens.weight[dictionary.pad()], 0)
    encoder = TransformerEncoder(args, dictionary, embed_tokens)
    decoder = TransformerDecoder(args, dictionary, embed_tokens)
    decoder.output_projection = TiedOutputProjection(embed_tokens)  # fairseq's tied nn.Linear, same key
    if checkpoint:
        recompute_in_backward(encoder.layers)
        recompute_in_backward(decoder.layers)
    return encoder, decoder


def recompute_in_backward(layers) -> None:
    """Activation checkpointing per layer with torch's non-re-entrant implementation (state
    dict keys unchanged). fairseq's --checkpoint-activations wrapper is re-entrant: a layer used
    by several passes of one forward (ComSL runs the mBART encoder up to 3 times, the decoder
    up to 6) then reports its parameters ready several times per backward, which torch DDP
    (--ddp-backend pytorch_ddp) refuses: "Expected to mark a variable ready only once"."""
    for layer in layers:
        def forward(*args, _forward=layer.forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return torch.utils.checkpoint.checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        layer.forward = forward


EMBEDDING_KEYS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")


def load_mbart_weights(encoder, decoder, state: dict, source, n_pretrained_rows: int, dict_path) -> None:
    """Load ``encoder.*`` / ``decoder.*`` mBART weights strictly. A checkpoint with the
    mBART-50 rows (dict.txt + 52 tags + <mask>) gets the rows of ComSL's added tags
    initialised to the mean ML50 tag embedding; one that already has them loads as is. A
    trimmed dictionary takes its rows out of a full checkpoint, or loads a trimmed one of
    ours if that was trained with the same rows."""
    d = decoder.dictionary
    state = dict(state)
    saved_ids = state.pop(TRIM_IDS_KEY, None)  # a checkpoint of ours trained trimmed
    emb = state["encoder.embed_tokens.weight"]
    rows = emb.size(0)
    full_rows = d.full_size if isinstance(d, TrimmedDictionary) else len(d)
    if saved_ids is not None:
        if not isinstance(d, TrimmedDictionary) or not torch.equal(saved_ids, d.full_ids):
            now = f"{len(d)} rows of {d.keep_file}" if isinstance(d, TrimmedDictionary) else "the full vocabulary"
            raise CheckpointError(f"{source} was trained with a trimmed vocabulary of {len(saved_ids)} rows, this "
                                  f"task has {now}: use the trim_vocab keep file it was trained with")
    elif rows not in (n_pretrained_rows, full_rows):
        raise CheckpointError(
            f"{source} has {rows} embedding rows but {dict_path} + 52 ML50 tags + <mask> give "
            f"{n_pretrained_rows} (+{full_rows - n_pretrained_rows} ComSL tags): the dictionary and the "
            "checkpoint do not belong together")
    if saved_ids is None and rows < full_rows:
        ml50 = [n_pretrained_rows - 1 - len(ML50_TAGS) + i for i in range(len(ML50_TAGS))]  # before <mask>
        tag_rows = emb[ml50]
        emb = torch.cat([emb, tag_rows.mean(dim=0, keepdim=True).expand(full_rows - rows, -1)], dim=0)
        logger.info("%s: %d embedding rows + %d new (%s) from the mean tag embedding", source, rows,
                    full_rows - rows, " ".join(tag_symbol(t) for t in EXTRA_TAGS))
    if saved_ids is None and isinstance(d, TrimmedDictionary):
        emb = emb[d.full_ids]  # the kept rows, in the trimmed dictionary's order
        logger.info("%s: %d of %d embedding rows kept (trim_vocab %s)", source, len(d), full_rows, d.keep_file)
    for key in EMBEDDING_KEYS:
        state[key] = emb
    holder = nn.Module()  # a view with the checkpoint's key layout: encoder.*, decoder.*
    holder.encoder, holder.decoder = encoder, decoder
    load_strict(holder, state, source, "mBART-50 encoder-decoder")


class MbartTextModel(FairseqEncoderDecoderModel):
    """mBART as a plain text-to-text translation model on fairseq's own modules.

    Used as the frozen MT teacher (``freeze()``: eval mode for good, no gradients, and the
    criterion keeps it out of every state dict) and to translate transcripts into pseudo
    speech-translation targets (examples/covost2/make_pseudo_st.py).
    """

    def __init__(self, encoder, decoder):
        super().__init__(encoder, decoder)
        self.frozen = False

    def freeze(self) -> "MbartTextModel":
        self.frozen = True
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True):
        return super().train(mode and not self.frozen)  # a frozen teacher never runs dropout

    def forward(self, src_tokens, src_lengths=None, prev_output_tokens=None, features_only=False, **unused):
        """``[src_tag] x </s>`` and ``</s> [tgt_tag] y`` -> (logits B x T x V, extra), or with
        ``features_only`` the final decoder states (B x T x C) instead of logits."""
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths)
        return self.decoder(prev_output_tokens, encoder_out=encoder_out, features_only=features_only)


def load_mbart_text_model(path, dictionary, n_pretrained_rows: int, dict_path) -> MbartTextModel:
    """A translation model from a fairseq mBART ``model.pt`` (e.g. mBART-50 fine-tuned on the
    transcript -> translation pairs) or from one of our checkpoints (its mBART part)."""
    dims, state = load_mbart_checkpoint(path)
    encoder, decoder = build_mbart(dims, dictionary)
    load_mbart_weights(encoder, decoder, state, path, n_pretrained_rows, dict_path)
    logger.info("mBART text model from %s: %d+%d layers, d=%d", path, dims.encoder_layers, dims.decoder_layers,
                dims.dim)
    return MbartTextModel(encoder, decoder)
