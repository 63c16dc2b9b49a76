"""The ComSL composite model: Whisper encoder -> conv adapter -> mBART-50 (SPEC §2).

    wav --log-mel (per clip, on device)--> Whisper encoder (masked)     B x T/2 x Cw
        --adapter (2 strided GLU convs)-->                              B x T/8 x Cm
        --[src tag embedding ; adapter output]--> mBART-50 encoder      T x B x Cm (fairseq layout)
        --> mBART-50 decoder, output projection tied to the shared token embedding

The same mBART encoder also reads text (H_x) and the concatenation [masked transcript ;
speech] (H_c, cross-modality learning), and the same decoder serves every branch. One
``forward`` computes every branch the criterion asks for, so that distributed data
parallel sees a single forward per step; the speech embeddings (Whisper + adapter) are
computed once and shared by the speech-only and concatenated passes.
"""
import dataclasses
import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import FairseqEncoder, FairseqEncoderDecoderModel, register_model, register_model_architecture
from fairseq.models.transformer import TransformerEncoder
from fairseq.modules import GradMultiply
from omegaconf import open_dict

from comsl_fairseq.checkpoints import (
    CheckpointError,
    load_mbart_checkpoint,
    load_strict,
    load_whisper_checkpoint,
    state_mismatch,
)
from comsl_fairseq.distributed import all_reduce_grads, broadcast_from_first_rank
from comsl_fairseq.modules.adapter import ADAPTER_ACTIVATIONS, HOP_LENGTH, Adapter
from comsl_fairseq.modules.mbart import MbartDims, build_mbart, load_mbart_weights
from comsl_fairseq.modules.whisper_encoder import MaskedWhisperEncoder, append_silence, log_mel, pad_or_cut
from comsl_fairseq.optim.adam_grouped import mark_no_weight_decay

logger = logging.getLogger(__name__)

WHISPER_DIMS = ("whisper_n_mels", "whisper_n_ctx", "whisper_dim", "whisper_heads", "whisper_layers")
MBART_DIMS = ("mbart_dim", "mbart_ffn_dim", "mbart_heads", "mbart_encoder_layers", "mbart_decoder_layers",
              "mbart_max_positions", "mbart_activation_fn")
DIMS_HELP = "read from the checkpoint (or the tiny preset) and saved with the model; do not set by hand"


@dataclass
class WhisperMbartCompositeConfig(FairseqDataclass):
    whisper_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "openai-whisper .pt; its dims (n_mels 80 or 128) size the encoder"})
    mbart_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "fairseq mBART-50 model.pt; omitted = random init (tiny arch only)"})
    whisper_pad_seconds: float = field(
        default=0.0, metadata={"help": "0: pad to the longest clip in the batch and mask the padding; "
                                       "11: the paper's fixed 11 s; 30: Whisper's fixed window"})
    whisper_trailing_silence: float = field(
        default=0.0, metadata={"help": "with --whisper-pad-seconds 0: append this many seconds of silence to "
                                       "every clip, which the encoder reads (Whisper was pre-trained on 30 s "
                                       "windows ending in silence); 0 = none"})
    freeze_whisper_updates: int = field(
        default=0, metadata={"help": "run the Whisper encoder without gradients for the first N updates "
                                     "(paper: 5 of 15 epochs); its weights do not change meanwhile"})
    freeze_whisper_epochs: int = field(
        default=0, metadata={"help": "run the Whisper encoder without gradients during the first N epochs (the "
                                     "paper's unit: 5 of 15), decided at each epoch begin, whatever the number "
                                     "of GPUs; combines with --freeze-whisper-updates (frozen while either holds)"})
    enc_grad_mult: float = field(
        default=1.0, metadata={"help": "multiply gradients flowing into the speech-only (H_s) and text-only "
                                       "(H_x) mBART encoder outputs (paper: 2.0)"})
    stack_decoder_passes: bool = field(
        default=False, metadata={"help": "run the decoder passes that share a decoder input as one call, stacked "
                                         "along the batch (same result; fewer, larger kernels for launch-bound GPUs)"})
    checkpoint_activations: bool = field(
        default=False, metadata={"help": "recompute Whisper blocks and mBART layers in the backward pass instead "
                                         "of storing their activations (less memory, ~30 % more compute)"})
    autocast_bf16: bool = field(
        default=False, metadata={"help": "run the training forward under bf16 autocast (weights and optimizer "
                                         "stay fp32); fairseq's own --bf16 does not work here"})
    dropout: float = field(default=0.1, metadata={"help": "mBART dropout"})
    attention_dropout: float = field(default=0.0, metadata={"help": "mBART attention dropout"})
    activation_dropout: float = field(default=0.0, metadata={"help": "mBART FFN activation dropout"})
    adapter_dropout: float = field(default=0.0, metadata={
        "help": "dropout inside the adapter FFNs (original ComSL: none; ours before: 0.1)"})
    adapter_activation: ChoiceEnum(list(ADAPTER_ACTIVATIONS)) = field(default="relu", metadata={
        "help": "non-linearity of the adapter FFNs: relu (the original ComSL adapter) or gelu (ours before; "
                "checkpoints written without this option were trained with gelu and load as gelu)"})
    text_only_model: bool = field(default=False, metadata={
        "help": "build only the mBART encoder-decoder, no Whisper and no adapter (the MT stage); set by "
                "--arch mbart50_text, whose checkpoints hold no speech weights"})
    whisper_n_mels: Optional[int] = field(default=None, metadata={"help": DIMS_HELP})
    whisper_n_ctx: Optional[int] = field(default=None, metadata={"help": DIMS_HELP})
    whisper_dim: Optional[int] = field(default=None, metadata={"help": DIMS_HELP})
    whisper_heads: Optional[int] = field(default=None, metadata={"help": DIMS_HELP})
    whisper_layers: Optional[int] = field(default=None, metadata={"help": DIMS_HELP})
    mbart_dim: Optional[int] = field(default=None, metadata={"help": DIMS_HELP})
    mbart_ffn_dim: Optional[int] = field(default=None, metadata={"help": DIMS_HELP})
    mbart_heads: Optional[int] = field(default=None, metadata={"help": DIMS_HELP})
    mbart_encoder_layers: Optional[int] = field(default=None, metadata={"help": DIMS_HELP})
    mbart_decoder_layers: Optional[int] = field(default=None, metadata={"help": DIMS_HELP})
    mbart_max_positions: Optional[int] = field(default=None, metadata={"help": DIMS_HELP})
    mbart_activation_fn: Optional[str] = field(default=None, metadata={"help": DIMS_HELP})


class CompositeEncoder(FairseqEncoder):
    """Speech path (Whisper -> adapter -> tag + mBART encoder) and text path (mBART encoder)."""

    def __init__(self, cfg, dictionary, whisper: MaskedWhisperEncoder, adapter: Adapter,
                 mbart: TransformerEncoder):
        super().__init__(dictionary)
        self.whisper = whisper
        self.adapter = adapter
        self.mbart = mbart
        self.pad_seconds = float(cfg.whisper_pad_seconds)
        self.trailing_silence = float(cfg.whisper_trailing_silence)
        if self.trailing_silence and self.pad_seconds:
            raise ValueError("--whisper-trailing-silence applies to --whisper-pad-seconds 0 only (a fixed "
                             "length already ends in silence)")
        self.padding_idx = dictionary.pad()
        self.n_cut = 0  # clips cut to the fixed padding length so far (fixed-padding mode only)
        self.freeze_whisper_updates = cfg.freeze_whisper_updates
        self.freeze_whisper_epochs = cfg.freeze_whisper_epochs
        self.num_updates = 0
        self.epoch = 0  # set by the task at each epoch begin (training only)

    def set_num_updates(self, num_updates):
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def freezes_whisper(self) -> bool:
        """Whether a freeze is configured at all (then DDP leaves Whisper to us: comsl_fairseq.distributed)."""
        return self.freeze_whisper_updates > 0 or self.freeze_whisper_epochs > 0

    @property
    def whisper_frozen(self) -> bool:
        """The one place that decides the freezing policy: no gradients reach Whisper while
        fewer than --freeze-whisper-updates updates are done or during the first
        --freeze-whisper-epochs epochs, so neither the optimizer step nor weight decay touches
        its weights (their .grad stays None)."""
        by_epoch = self.freeze_whisper_epochs > 0 and self.epoch <= self.freeze_whisper_epochs
        return self.num_updates < self.freeze_whisper_updates or by_epoch

    def speech_embeddings(self, audio, audio_lengths, lang_tags) -> tuple:
        """audio B x S (16 kHz) -> (B x 1+T/8 x C mBART-input embeddings, B x 1+T/8 padding mask).

        The tag embedding is scaled by sqrt(d) like every token embedding; the adapter
        output enters unscaled (SPEC §2)."""
        if self.whisper is None:
            raise ValueError("this model has no speech encoder (a text-only MT-stage model, --arch mbart50_text): "
                             "train it with --text-only and only the MT term, decode it with --decode-task mt")
        if self.pad_seconds > 0:
            audio, audio_lengths, n_cut = pad_or_cut(audio, audio_lengths, self.pad_seconds)
            if n_cut:
                self.n_cut += n_cut
                logger.warning("cut %d clip(s) to --whisper-pad-seconds %g (%d so far)",
                               n_cut, self.pad_seconds, self.n_cut)
        elif self.trailing_silence > 0:
            audio, audio_lengths = append_silence(audio, audio_lengths, self.trailing_silence, self.max_positions())
        with torch.no_grad() if self.whisper_frozen else nullcontext():
            mel, mel_lengths = log_mel(audio, audio_lengths, self.whisper.n_mels)  # B x n_mels x T
            h, h_lengths, _ = self.whisper(mel, mel_lengths)  # B x T/2 x Cw
        speech, _, speech_mask = self.adapter(h, h_lengths)  # B x T/8 x Cm
        tag = self.mbart.embed_scale * self.mbart.embed_tokens(lang_tags).unsqueeze(1)  # B x 1 x Cm
        x = torch.cat([tag.to(speech.dtype), speech], dim=1)
        mask = torch.cat([speech_mask.new_zeros(speech_mask.size(0), 1), speech_mask], dim=1)
        return x, mask

    def text_embeddings(self, tokens) -> tuple:
        """tokens B x T -> (scaled token embeddings B x T x C, padding mask B x T)."""
        return self.mbart.embed_scale * self.mbart.embed_tokens(tokens), tokens.eq(self.padding_idx)

    def encode(self, embeddings, padding_mask, return_all_hiddens: bool = False) -> dict:
        """Run the mBART encoder on input embeddings (token scale already applied).

        Mirrors ``TransformerEncoderBase.forward_scriptable`` from the embedding sum on,
        so any mix of token and speech embeddings can enter: learned positions are
        computed from the padding mask, then layernorm_embedding, dropout and the layers.
        embeddings: B x T x C  ->  fairseq encoder-out dict with T x B x C tensors.
        """
        m = self.mbart
        # Learned positions are looked up from token ids; only pad vs non-pad matters to them.
        pseudo_tokens = torch.full(padding_mask.shape, self.padding_idx + 1, dtype=torch.long,
                                   device=padding_mask.device).masked_fill(padding_mask, self.padding_idx)
        x = embeddings + m.embed_positions(pseudo_tokens)
        x = m.dropout_module(m.layernorm_embedding(x))
        has_pads = bool(padding_mask.any())
        if has_pads:
            x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
        x = x.transpose(0, 1)  # B x T x C -> T x B x C (fairseq layout from here on)
        states = [x] if return_all_hiddens else []
        for layer in m.layers:
            x = layer(x, encoder_padding_mask=padding_mask if has_pads else None)
            if return_all_hiddens:
                states.append(x)
        if m.layer_norm is not None:
            x = m.layer_norm(x)
        return {
            "encoder_out": [x],  # T x B x C
            "encoder_padding_mask": [padding_mask],  # B x T
            "encoder_embedding": [embeddings],  # B x T x C
            "encoder_states": states,  # [T x B x C] per layer input/output
            "src_tokens": [],
            "src_lengths": [(~padding_mask).sum(dim=1, dtype=torch.int32).reshape(-1, 1)],
        }

    @staticmethod
    def part(encoder_out: dict, start: int, end: int | None = None) -> dict:
        """Frames [start, end) of an encoder output, for the decoder to attend to (H_c^x, H_c^s)."""
        x, mask = encoder_out["encoder_out"][0][start:end], encoder_out["encoder_padding_mask"][0][:, start:end]
        return {"encoder_out": [x], "encoder_padding_mask": [mask], "encoder_embedding": [],
                "encoder_states": [s[start:end] for s in encoder_out["encoder_states"]], "src_tokens": [],
                "src_lengths": [(~mask).sum(dim=1, dtype=torch.int32).reshape(-1, 1)]}

    def forward(self, src_tokens, src_lengths, src_lang_tags=None, return_all_hiddens: bool = False,
                text_input: bool = False, **unused):
        """The speech path; ``src_tokens`` is the B x S waveform (see SpeechTextDataset). With
        ``text_input`` (MT decoding) ``src_tokens`` are transcript tokens for the text path."""
        if text_input:
            return self.forward_text(src_tokens, return_all_hiddens)
        x, mask = self.speech_embeddings(src_tokens, src_lengths, src_lang_tags)
        return self.encode(x, mask, return_all_hiddens)

    def forward_text(self, src_text_tokens, return_all_hiddens: bool = False):
        """The text path: ``[src_tag] x1..xn </s>`` -> mBART encoder output."""
        x, mask = self.text_embeddings(src_text_tokens)
        return self.encode(x, mask, return_all_hiddens)

    def reorder_encoder_out(self, encoder_out, new_order):
        return self.mbart.reorder_encoder_out(encoder_out, new_order)

    def max_positions(self):
        """Longest input in audio samples: Whisper's window (n_ctx frames at 50/s); no limit
        of the text-only model (its inputs are transcripts; the task limits their length)."""
        return None if self.whisper is None else self.whisper.n_ctx * 2 * HOP_LENGTH


@register_model("whisper_mbart_composite", dataclass=WhisperMbartCompositeConfig)
class WhisperMbartCompositeModel(FairseqEncoderDecoderModel):
    """Whisper audio encoder + conv adapter + mBART-50, fine-tuned multi-task (ComSL)."""

    # "mt_from_concat" (H_c^x -> translation) feeds no loss: the original computes it anyway,
    # and scripts/benchmark.py requests it only to time the original's pass structure.
    BRANCHES = ("st", "asr", "mt", "stm_st", "stm_asr", "mtp", "ctc", "mt_from_concat")

    def __init__(self, encoder, decoder, enc_grad_mult: float = 1.0, stack_decoder_passes: bool = False,
                 autocast_bf16: bool = False):
        super().__init__(encoder, decoder)
        self.enc_grad_mult = enc_grad_mult
        self.stack_decoder_passes = stack_decoder_passes
        self.autocast_bf16 = autocast_bf16
        self._whisper_synced = False  # see all_reduce_grads

    @classmethod
    def build_model(cls, cfg, task):
        # When fairseq rebuilds a trained model (fairseq-generate --path, the MT teacher),
        # its weights come from that checkpoint: the pretrained files are not read again.
        from_checkpoint = getattr(task, "building_from_checkpoint", False)
        _fill_missing_defaults(cfg)
        whisper_state = mbart_state = None
        if cfg.text_only_model and cfg.whisper_checkpoint:
            raise ValueError(f"--arch {cfg._name} has no speech encoder: drop --whisper-checkpoint")
        if cfg.whisper_checkpoint and not from_checkpoint:
            dims, whisper_state = load_whisper_checkpoint(cfg.whisper_checkpoint)
            with open_dict(cfg):
                cfg.whisper_n_mels, cfg.whisper_n_ctx = dims["n_mels"], dims["n_audio_ctx"]
                cfg.whisper_dim, cfg.whisper_heads = dims["n_audio_state"], dims["n_audio_head"]
                cfg.whisper_layers = dims["n_audio_layer"]
            _check_arch_size(cfg)  # before reading a large mBART file
        if cfg.mbart_checkpoint and not from_checkpoint:
            hp, mbart_state = load_mbart_checkpoint(cfg.mbart_checkpoint)
            dims = MbartDims.from_hparams(hp, cfg.mbart_checkpoint)
            with open_dict(cfg):
                cfg.mbart_dim, cfg.mbart_ffn_dim, cfg.mbart_heads = dims.dim, dims.ffn_dim, dims.heads
                cfg.mbart_encoder_layers, cfg.mbart_decoder_layers = dims.encoder_layers, dims.decoder_layers
                cfg.mbart_max_positions, cfg.mbart_activation_fn = dims.max_positions, dims.activation_fn
        parts = ((MBART_DIMS, "--mbart-checkpoint"),)
        if not cfg.text_only_model:
            parts = ((WHISPER_DIMS, "--whisper-checkpoint"),) + parts
        for names, flag in parts:
            unset = [n for n in names if getattr(cfg, n) is None]
            if unset:
                raise ValueError(f"--arch {cfg._name}: {flag} is required (only "
                                 "whisper_mbart_composite_tiny has random-init shapes)")

        dictionary = task.target_dictionary
        whisper = adapter = None  # the text-only model (MT stage) has no speech path
        if not cfg.text_only_model:
            whisper = MaskedWhisperEncoder(cfg.whisper_n_mels, cfg.whisper_n_ctx, cfg.whisper_dim,
                                           cfg.whisper_heads, cfg.whisper_layers)
            whisper.checkpoint_activations = cfg.checkpoint_activations
            adapter = Adapter(cfg.whisper_dim, cfg.mbart_dim, dropout=cfg.adapter_dropout,
                              activation=str(cfg.adapter_activation))
        mbart_encoder, decoder = build_mbart(MbartDims.from_model_cfg(cfg), dictionary, dropout=cfg.dropout,
                                             attention_dropout=cfg.attention_dropout,
                                             activation_dropout=cfg.activation_dropout,
                                             checkpoint_activations=cfg.checkpoint_activations)
        encoder = CompositeEncoder(cfg, dictionary, whisper, adapter, mbart_encoder)
        model = cls(encoder, decoder, enc_grad_mult=cfg.enc_grad_mult,
                    stack_decoder_passes=cfg.stack_decoder_passes, autocast_bf16=cfg.autocast_bf16)
        if whisper_state is not None:
            load_strict(whisper, whisper_state, cfg.whisper_checkpoint, "Whisper encoder")
            logger.info("loaded Whisper encoder from %s (%d layers, d=%d, %d mels)", cfg.whisper_checkpoint,
                        cfg.whisper_layers, cfg.whisper_dim, cfg.whisper_n_mels)
        if mbart_state is not None:
            load_mbart_weights(mbart_encoder, decoder, mbart_state, cfg.mbart_checkpoint, task.n_pretrained_rows,
                               task.dictionary_path)
        counts = mark_no_weight_decay(model)  # obeyed by --optimizer adam_grouped
        logger.info("weight decay groups (adam_grouped): %d parameters decay, %d (biases, norms) do not",
                    counts["decay"], counts["no_decay"])
        return model

    def forward(self, src_tokens, src_lengths, src_lang_tags, prev_output_tokens,
                src_text_tokens=None, prev_transcript_tokens=None, cml_text_tokens=None,
                branches=("st",), erm_layer: int = 0, **unused):
        """Every requested branch in one call.

        Branches (encoder output -> decoder input):
            st      H_s   -> translation      asr     H_s   -> transcript
            mt      H_x   -> translation      stm_st  H_c^s -> translation
            stm_asr H_c^s -> transcript       mtp     H_c^x -> transcript
            ctc     H_s frame-wise through the output projection (our optional auxiliary loss)
        ``cml_text_tokens`` is the masked transcript x~ of the concatenated pass. With
        ``erm_layer`` k > 0 the result also holds "erm": (layer-k output of the speech-only
        pass, of the speech part of the concatenated pass, speech padding mask B x T).
        Returns {branch: (logits B x T x V, extra)}.
        """
        unknown = set(branches) - set(self.BRANCHES)
        if unknown:
            raise ValueError(f"unknown branches {sorted(unknown)}; known: {self.BRANCHES}")
        autocast = nullcontext()
        if self.autocast_bf16:
            device = (src_tokens if src_tokens is not None else src_text_tokens).device.type
            autocast = torch.autocast(device, dtype=torch.bfloat16)
        with autocast:
            return self._forward_branches(src_tokens, src_lengths, src_lang_tags, prev_output_tokens,
                                          src_text_tokens, prev_transcript_tokens, cml_text_tokens, branches,
                                          erm_layer)

    def _forward_branches(self, src_tokens, src_lengths, src_lang_tags, prev_output_tokens, src_text_tokens,
                          prev_transcript_tokens, cml_text_tokens, branches, erm_layer):
        enc = self.encoder
        speech_only = bool({"st", "asr", "ctc"} & set(branches)) or erm_layer > 0
        concat = bool({"stm_st", "stm_asr", "mtp", "mt_from_concat"} & set(branches)) or erm_layer > 0
        encoder_outs = {}
        if speech_only or concat:
            speech, speech_mask = enc.speech_embeddings(src_tokens, src_lengths, src_lang_tags)  # shared
        if speech_only:
            encoder_outs["speech"] = self._grad_mult(enc.encode(speech, speech_mask, erm_layer > 0))
        if "mt" in branches:
            encoder_outs["text"] = self._grad_mult(enc.forward_text(src_text_tokens))
        if concat:
            if cml_text_tokens is None:
                raise ValueError("the cross-modality branches need cml_text_tokens (the masked transcript)")
            text, text_mask = enc.text_embeddings(cml_text_tokens)  # B x Tx x C
            both = enc.encode(torch.cat([text, speech.to(text.dtype)], dim=1),
                              torch.cat([text_mask, speech_mask], dim=1), erm_layer > 0)
            encoder_outs["concat_text"] = enc.part(both, 0, text.size(1))
            encoder_outs["concat_speech"] = enc.part(both, text.size(1))
        source = {"st": "speech", "asr": "speech", "mt": "text", "stm_st": "concat_speech",
                  "stm_asr": "concat_speech", "mtp": "concat_text", "mt_from_concat": "concat_text"}
        transcript_input = {"asr", "stm_asr", "mtp"}
        out = {}
        if "ctc" in branches:  # frame-wise vocabulary logits of H_s (T x B x V), tied output projection
            h = encoder_outs["speech"]
            out["ctc"] = (self.decoder.output_layer(h["encoder_out"][0]), h["encoder_padding_mask"][0])
        for inputs, names in (("transcript", [b for b in branches if b in transcript_input]),
                              ("translation", [b for b in branches if b not in transcript_input and b != "ctc"])):
            prev = prev_transcript_tokens if inputs == "transcript" else prev_output_tokens
            out.update(self._decode(prev, {name: encoder_outs[source[name]] for name in names}))
        if erm_layer > 0:
            n_layers = len(enc.mbart.layers)
            if erm_layer > n_layers:
                raise ValueError(f"--erm-layer {erm_layer} exceeds the mBART encoder's {n_layers} layers")
            out["erm"] = (encoder_outs["speech"]["encoder_states"][erm_layer],
                          encoder_outs["concat_speech"]["encoder_states"][erm_layer], speech_mask)
        return out

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list:
        """Read by torch DDP when it wraps the model: with a freeze configured, Whisper stays out
        of DDP's reducer (see comsl_fairseq.distributed) and all_reduce_grads averages it."""
        if not self.encoder.freezes_whisper:
            return []
        return [f"encoder.whisper.{name}" for name, _ in self.encoder.whisper.named_parameters()]

    def all_reduce_grads(self) -> None:
        """Called by fairseq's trainer once per update, after the backward passes, when this
        model is not under legacy_ddp (which reduces everything itself): average the gradients
        DDP was told to ignore, i.e. Whisper's once it is no longer frozen."""
        if not self.encoder.freezes_whisper:
            return
        params = list(self.encoder.whisper.parameters())
        if not self._whisper_synced:  # DDP copies rank 0's values only for the parameters it manages
            broadcast_from_first_rank(params)
            self._whisper_synced = True
        if not self.encoder.whisper_frozen:
            all_reduce_grads(params)

    def set_epoch(self, epoch: int) -> None:
        """Epoch number for --freeze-whisper-epochs (the task calls this at each epoch begin)."""
        self.encoder.set_epoch(epoch)

    def frozen_parameters(self) -> list:
        """Parameters that must not change at this update (Whisper while it is frozen)."""
        whisper = self.encoder.whisper
        return list(whisper.parameters()) if whisper is not None and self.encoder.whisper_frozen else []

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """fairseq's loading (resume, --path), with every missing, unexpected or mis-shaped
        key named in one error rather than a bare torch size-mismatch traceback."""
        lines = state_mismatch(self.state_dict(), state_dict) if strict else []
        if lines:
            hint = _embedding_rows_hint(self.state_dict(), state_dict)
            raise CheckpointError("\n".join([f"the checkpoint does not fit this model{hint}:"] + lines))
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)

    def _decode(self, prev_tokens, encoder_outs: dict) -> dict:
        """The decoder passes that read the same decoder input. With --stack-decoder-passes
        they run as one call: the encoder outputs (T_i x B x C) are padded to the longest,
        masked, and stacked along the batch; each pass sees exactly its own frames, so the
        result is the same. One large call instead of up to four small ones helps where the
        step is launch-bound (GPU); on 2 CPU cores it measured equal, so it is opt-in."""
        if not encoder_outs:
            return {}
        if len(encoder_outs) == 1 or not self.stack_decoder_passes:
            return {name: self.decoder(prev_tokens, encoder_out=eo) for name, eo in encoder_outs.items()}
        T = max(eo["encoder_out"][0].size(0) for eo in encoder_outs.values())
        xs, masks = [], []
        for eo in encoder_outs.values():
            x, mask = eo["encoder_out"][0], eo["encoder_padding_mask"][0]  # T_i x B x C, B x T_i
            xs.append(F.pad(x, (0, 0, 0, 0, 0, T - x.size(0))))
            masks.append(F.pad(mask, (0, T - mask.size(1)), value=True))
        stacked = {"encoder_out": [torch.cat(xs, dim=1)], "encoder_padding_mask": [torch.cat(masks, dim=0)],
                   "encoder_embedding": [], "encoder_states": [], "src_tokens": [], "src_lengths": []}
        n = len(encoder_outs)
        logits, extra = self.decoder(prev_tokens.repeat(n, 1), encoder_out=stacked)  # nB x T x V
        return {name: (chunk, extra) for name, chunk in zip(encoder_outs, logits.chunk(n, dim=0), strict=True)}

    def _grad_mult(self, encoder_out: dict) -> dict:
        """Scale the gradient flowing into H_s / H_x by --enc-grad-mult (identity forward)."""
        if self.enc_grad_mult != 1.0 and torch.is_grad_enabled():
            encoder_out["encoder_out"] = [GradMultiply.apply(encoder_out["encoder_out"][0], self.enc_grad_mult)]
        return encoder_out

    def max_positions(self):
        return (self.encoder.max_positions(), self.decoder.max_positions())


def _embedding_rows_hint(own: dict, state: dict) -> str:
    """Suggest another dict.txt only when the token embedding rows differ, not for other widths."""
    key = "decoder.embed_tokens.weight"
    if key in own and key in state and own[key].size(0) != state[key].size(0):
        return (f" (trained with another dict.txt? the checkpoint has {state[key].size(0)} token embedding rows, "
                f"this dictionary {own[key].size(0)})")
    return ""


# Whisper width expected of each named size; a mismatching checkpoint is a user error.
_ARCH_WHISPER_DIM = {"whisper_mbart_composite_medium": 1024, "whisper_mbart_composite_large": 1280}


def _check_arch_size(cfg) -> None:
    expected = _ARCH_WHISPER_DIM.get(cfg._name)
    if expected is not None and cfg.whisper_dim != expected:
        raise CheckpointError(f"--arch {cfg._name} expects a Whisper encoder of width {expected}, but "
                              f"{cfg.whisper_checkpoint} has {cfg.whisper_dim}")


# Options whose default changed when they were introduced: a checkpoint written before
# the option existed was trained with this value, not with today's default.
_LEGACY_DEFAULTS = {"adapter_activation": "gelu"}


def _fill_missing_defaults(cfg) -> None:
    """Give options added since a checkpoint was written their defaults, in place (fairseq
    merges dataclass defaults only for configs named after the model, not its archs)."""
    with open_dict(cfg):
        for f in dataclasses.fields(WhisperMbartCompositeConfig):
            if f.name not in cfg:
                setattr(cfg, f.name, _LEGACY_DEFAULTS.get(f.name, f.default))


def _default(cfg, name, value) -> None:
    if getattr(cfg, name, None) is None:
        setattr(cfg, name, value)


@register_model_architecture("whisper_mbart_composite", "whisper_mbart_composite_medium")
def whisper_mbart_composite_medium(cfg):
    """Whisper medium encoder + mBART-50 large (~0.95 B); dims come from the checkpoints."""


@register_model_architecture("whisper_mbart_composite", "whisper_mbart_composite_large")
def whisper_mbart_composite_large(cfg):
    """Whisper large-v2 encoder + mBART-50 large (~1.28 B); dims come from the checkpoints."""


@register_model_architecture("whisper_mbart_composite", "whisper_mbart_composite_tiny")
def whisper_mbart_composite_tiny(cfg):
    """For tests and the demo. Shapes below apply only to a part without a checkpoint
    (random init); a given checkpoint's dims always win."""
    if not getattr(cfg, "whisper_checkpoint", None):
        for name, value in (("whisper_n_mels", 80), ("whisper_n_ctx", 1500), ("whisper_dim", 128),
                            ("whisper_heads", 2), ("whisper_layers", 3)):
            _default(cfg, name, value)
    if not getattr(cfg, "mbart_checkpoint", None):
        for name, value in (("mbart_dim", 128), ("mbart_ffn_dim", 512), ("mbart_heads", 2),
                            ("mbart_encoder_layers", 2), ("mbart_decoder_layers", 2),
                            ("mbart_max_positions", 1024), ("mbart_activation_fn", "gelu")):
            _default(cfg, name, value)


@register_model_architecture("whisper_mbart_composite", "mbart50_text")
def mbart50_text(cfg):
    """The MT stage: the mBART-50 encoder-decoder alone (dims from --mbart-checkpoint), no
    Whisper and no adapter, so its checkpoint holds no speech weights. It initialises the
    ComSL rows (--mbart-checkpoint), is their MT teacher (--mt-teacher) and writes the
    pseudo labels, all of which read only its mBART part."""
    cfg.text_only_model = True
