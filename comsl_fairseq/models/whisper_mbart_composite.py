"""The ComSL composite model: Whisper encoder -> conv adapter -> mBART-50.

    wav --log-mel (per clip, on device)--> Whisper encoder (masked)     B x T/2 x Cw
        --adapter (2 strided GLU convs)-->                              B x T/8 x Cm
        --[src tag embedding ; adapter output]--> mBART-50 encoder      T x B x Cm (fairseq layout)
        --> mBART-50 decoder, output projection tied to the shared token embedding

The same mBART encoder also reads text (H_x) and the concatenation [masked transcript ;
speech] (H_c, cross-modality learning), and the same decoder serves every branch
(modules/composite_encoder.py; the routing table is modules/branches.py). One
``forward`` computes every branch the criterion asks for, so that distributed data
parallel sees a single forward per step.
"""
import dataclasses
import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import FairseqEncoderDecoderModel, register_model, register_model_architecture
from fairseq.modules import GradMultiply
from omegaconf import open_dict

from comsl_fairseq.checkpoints.pretrained import (
    CheckpointError,
    MbartDims,
    WhisperDims,
    load_mbart_checkpoint,
    load_strict,
    load_whisper_checkpoint,
    state_mismatch,
)
from comsl_fairseq.modules.adapter import ADAPTER_ACTIVATIONS, Adapter
from comsl_fairseq.modules.branches import CONCAT_SPEECH, FRAMES, SPEECH, TEXT, TRANSCRIPT, TRANSLATION, branch_table
from comsl_fairseq.modules.composite_encoder import CompositeEncoder
from comsl_fairseq.modules.cpu_matmul import MIN_ELEMENTS, use_onednn
from comsl_fairseq.modules.mbart import build_mbart, load_mbart_weights
from comsl_fairseq.modules.tied_embedding import ROWS_MIN_ELEMENTS, embedding_grad_mode
from comsl_fairseq.modules.whisper_encoder import MaskedWhisperEncoder
from comsl_fairseq.optim.adam_grouped import mark_no_weight_decay
from comsl_fairseq.training.distributed import all_reduce_grads, broadcast_from_first_rank

logger = logging.getLogger(__name__)

DIMS_HELP = ("read from the checkpoint (or the tiny preset) and saved with the model, so that a trained model "
             "is rebuilt without the pretrained files; do not set by hand")


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
    whisper_feature_cache: Optional[str] = field(
        default=None, metadata={"help": "folder of a cache of Whisper encoder outputs, one entry per clip, keyed by "
                                        "the clip's samples, the Whisper weights and the input-length settings: "
                                        "used while Whisper is frozen, bypassed once it trains"})
    enc_grad_mult: float = field(
        default=1.0, metadata={"help": "multiply gradients flowing into the speech-only (H_s) and text-only "
                                       "(H_x) mBART encoder outputs (paper: 2.0)"})
    stack_decoder_passes: bool = field(
        default=False, metadata={"help": "run the decoder passes that share a decoder input as one call, stacked "
                                         "along the batch (same result; fewer, larger kernels for launch-bound GPUs)"})
    embedding_grad: ChoiceEnum(["auto", "rows", "dense"]) = field(
        default="auto", metadata={"help": "rows: every use of the shared token embedding in a training step (text "
                                          "inputs, tags, decoder inputs, the tied output layer) adds into one "
                                          "gradient buffer, lookups only the rows they read (same gradient to "
                                          "float rounding); dense: torch's embedding, a full vocabulary x width "
                                          "gradient per use (~18 per ComSL step, 1 GB each for mBART-50); auto: "
                                          f"rows for token matrices of {ROWS_MIN_ELEMENTS:,} values or more "
                                          "(mBART-50's, also trimmed to 40k rows), dense below (no difference "
                                          "measured at the tiny arch's 8k x 128; README, Speed)"})
    cpu_matmul: ChoiceEnum(["auto", "torch"]) = field(
        default="auto", metadata={"help": "auto: on x86 CPUs, fp32 products that take no gradient with matrices "
                                          f"of {MIN_ELEMENTS:,} values or more run through oneDNN's kernel, "
                                          "1.2-4x faster than torch's MKL one at few rows: the decoder's linear "
                                          "layers and tied output layer in beam search and validation, the chunked "
                                          "output layer's products in training (README, Speed); torch: torch's "
                                          "kernels everywhere. Results differ in the last bits; GPUs unaffected"})
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
        "help": "dropout inside the adapter FFNs (the original ComSL adapter has none)"})
    adapter_activation: ChoiceEnum(list(ADAPTER_ACTIVATIONS)) = field(default="relu", metadata={
        "help": "non-linearity of the adapter FFNs: relu (the original ComSL adapter) or gelu "
                "(a checkpoint saved without this option was trained with gelu and loads as gelu)"})
    text_only_model: bool = field(default=False, metadata={
        "help": "build only the mBART encoder-decoder, no Whisper and no adapter (the MT stage); set by "
                "--arch mbart50_text, whose checkpoints hold no speech weights"})
    whisper_dims: Any = field(default=None, metadata={"help": "Whisper encoder shape (WhisperDims); " + DIMS_HELP})
    mbart_dims: Any = field(default=None, metadata={"help": "mBART shape (MbartDims); " + DIMS_HELP})


@register_model("whisper_mbart_composite", dataclass=WhisperMbartCompositeConfig)
class WhisperMbartCompositeModel(FairseqEncoderDecoderModel):
    """Whisper audio encoder + conv adapter + mBART-50, fine-tuned multi-task (ComSL)."""

    def __init__(self, encoder, decoder, enc_grad_mult: float = 1.0, stack_decoder_passes: bool = False,
                 autocast_bf16: bool = False, embedding_grad: str = "rows"):
        super().__init__(encoder, decoder)
        self.embedding_grad = embedding_grad
        self.enc_grad_mult = enc_grad_mult
        self.stack_decoder_passes = stack_decoder_passes
        self.autocast_bf16 = autocast_bf16
        self._whisper_synced = False  # see all_reduce_grads

    @classmethod
    def build_model(cls, cfg, task):
        """Dims already in ``cfg`` mean the model is being rebuilt from its own checkpoint
        (fairseq-generate --path, resuming, the MT teacher): its weights follow from that
        checkpoint, so the pretrained files are not read again. Otherwise the dims come
        from --whisper-checkpoint / --mbart-checkpoint (or the tiny preset) and are saved
        in ``cfg``."""
        _fill_missing_defaults(cfg)
        if cfg.text_only_model and cfg.whisper_checkpoint:
            raise ValueError(f"--arch {cfg._name} has no speech encoder: drop --whisper-checkpoint")
        whisper_dims = whisper_state = None  # the text-only model (MT stage) has no speech path
        if not cfg.text_only_model:
            whisper_dims, whisper_state = _whisper_part(cfg)
        mbart_dims, mbart_state = _mbart_part(cfg)
        with open_dict(cfg):
            cfg.whisper_dims = whisper_dims.to_cfg() if whisper_dims is not None else None
            cfg.mbart_dims = mbart_dims.to_cfg()

        dictionary = task.target_dictionary
        d = whisper_dims
        whisper = adapter = None
        if d is not None:
            whisper = MaskedWhisperEncoder(d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head,
                                           d.n_audio_layer)
            whisper.checkpoint_activations = cfg.checkpoint_activations
            adapter = Adapter(d.n_audio_state, mbart_dims.dim, dropout=cfg.adapter_dropout,
                              activation=str(cfg.adapter_activation))
        mbart_encoder, decoder = build_mbart(mbart_dims, dictionary, dropout=cfg.dropout,
                                             attention_dropout=cfg.attention_dropout,
                                             activation_dropout=cfg.activation_dropout,
                                             checkpoint_activations=cfg.checkpoint_activations)
        encoder = CompositeEncoder(cfg, dictionary, whisper, adapter, mbart_encoder)
        model = cls(encoder, decoder, enc_grad_mult=cfg.enc_grad_mult,
                    stack_decoder_passes=cfg.stack_decoder_passes, autocast_bf16=cfg.autocast_bf16,
                    embedding_grad=embedding_grad_mode(str(cfg.embedding_grad), len(dictionary), mbart_dims.dim))
        if str(cfg.cpu_matmul) == "auto":
            use_onednn(decoder)  # its layers and the tied output layer; the encoders keep torch's kernels
        if whisper_state is not None:
            load_strict(whisper, whisper_state, cfg.whisper_checkpoint, "Whisper encoder")
            logger.info("loaded Whisper encoder from %s (%d layers, d=%d, %d mels)", cfg.whisper_checkpoint,
                        d.n_audio_layer, d.n_audio_state, d.n_mels)
        if mbart_state is not None:
            load_mbart_weights(mbart_encoder, decoder, mbart_state, cfg.mbart_checkpoint, task.n_pretrained_rows,
                               task.dictionary_path)
        counts = mark_no_weight_decay(model)  # obeyed by --optimizer adam_grouped
        logger.info("weight decay groups (adam_grouped): %d parameters decay, %d (biases, norms) do not",
                    counts["decay"], counts["no_decay"])
        return model

    def forward(self, src_tokens, src_lengths, src_lang_tags, prev_output_tokens,
                src_text_tokens=None, prev_transcript_tokens=None, cml_text_tokens=None,
                branches=("st",), erm_layer: int = 0, features_only: bool = False, **unused):
        """Every requested branch in one call.

        ``branches``: names of modules/branches.py's table (or a {name: Branch} mapping);
        ``cml_text_tokens`` is the masked transcript x~ of the concatenated pass. With
        ``erm_layer`` k > 0 the result also holds "erm": (layer-k output of the speech-only
        pass, of the speech part of the concatenated pass, speech padding mask B x T).
        Returns {branch: (logits B x T x V, extra)}; CTC's entry is (T x B x V, mask B x T).
        With ``features_only`` the decoder passes return their final states (B x T x C)
        instead of logits: the caller projects them (criterions/terms.py, chunked).
        """
        self.decoder.embed_tokens.begin_step(self.embedding_grad == "rows")  # read by every use below
        table = branch_table(branches)
        needed = {b.encoder_output for b in table.values()} | ({SPEECH, CONCAT_SPEECH} if erm_layer > 0 else set())
        device = (src_tokens if src_tokens is not None else src_text_tokens).device
        with torch.autocast(device.type, dtype=torch.bfloat16) if self.autocast_bf16 else nullcontext():
            h = self.encoder.branch_outputs(needed, src_tokens, src_lengths, src_lang_tags, src_text_tokens,
                                            cml_text_tokens, return_all_hiddens=erm_layer > 0)
            for name in (SPEECH, TEXT):  # --enc-grad-mult acts on H_s and H_x only
                if name in h:
                    h[name] = self._grad_mult(h[name])
            out = {}
            for name, branch in table.items():
                if branch.decoder_input == FRAMES:  # frame-wise vocabulary logits T x B x V, tied projection
                    eo = h[branch.encoder_output]
                    out[name] = (self.decoder.output_layer(eo["encoder_out"][0]), eo["encoder_padding_mask"][0])
            for inputs, prev in ((TRANSCRIPT, prev_transcript_tokens), (TRANSLATION, prev_output_tokens)):
                out.update(self._decode(prev, {name: h[branch.encoder_output] for name, branch in table.items()
                                               if branch.decoder_input == inputs}, features_only))
            if erm_layer > 0:
                n_layers = len(self.encoder.mbart.layers)
                if erm_layer > n_layers:
                    raise ValueError(f"--erm-layer {erm_layer} exceeds the mBART encoder's {n_layers} layers")
                out["erm"] = (h[SPEECH]["encoder_states"][erm_layer], h[CONCAT_SPEECH]["encoder_states"][erm_layer],
                              h[SPEECH]["encoder_padding_mask"][0])
        return out

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list:
        """Read by torch DDP when it wraps the model: with a freeze configured, Whisper stays out
        of DDP's reducer (see comsl_fairseq.training.distributed) and all_reduce_grads averages it."""
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
        self.encoder.whisper_fingerprint = None  # new weights: the feature cache hashes them again
        lines = state_mismatch(self.state_dict(), state_dict) if strict else []
        if lines:
            hint = _embedding_rows_hint(self.state_dict(), state_dict)
            raise CheckpointError("\n".join([f"the checkpoint does not fit this model{hint}:"] + lines))
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)

    def _decode(self, prev_tokens, encoder_outs: dict, features_only: bool = False) -> dict:
        """The decoder passes that read the same decoder input. With --stack-decoder-passes
        they run as one call: the encoder outputs (T_i x B x C) are padded to the longest,
        masked, and stacked along the batch; each pass sees exactly its own frames, so the
        result is the same. One large call instead of up to four small ones helps where the
        step is launch-bound (GPU); on 2 CPU cores it measured equal, so it is opt-in."""
        if not encoder_outs:
            return {}
        if len(encoder_outs) == 1 or not self.stack_decoder_passes:
            return {name: self.decoder(prev_tokens, encoder_out=eo, features_only=features_only)
                    for name, eo in encoder_outs.items()}
        T = max(eo["encoder_out"][0].size(0) for eo in encoder_outs.values())
        xs, masks = [], []
        for eo in encoder_outs.values():
            x, mask = eo["encoder_out"][0], eo["encoder_padding_mask"][0]  # T_i x B x C, B x T_i
            xs.append(F.pad(x, (0, 0, 0, 0, 0, T - x.size(0))))
            masks.append(F.pad(mask, (0, T - mask.size(1)), value=True))
        stacked = {"encoder_out": [torch.cat(xs, dim=1)], "encoder_padding_mask": [torch.cat(masks, dim=0)],
                   "encoder_embedding": [], "encoder_states": [], "src_tokens": [], "src_lengths": []}
        n = len(encoder_outs)
        logits, extra = self.decoder(prev_tokens.repeat(n, 1), encoder_out=stacked,
                                     features_only=features_only)  # nB x T x V (or C)
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
                f"this dictionary {own[key].size(0)}) or another trim_vocab keep file in the data config")
    return ""


def _whisper_part(cfg) -> tuple:
    """(WhisperDims, encoder state or None): saved dims (rebuilding: no file read), else the
    --whisper-checkpoint's, else the arch's random-init preset."""
    dims = WhisperDims.from_cfg(cfg)
    if dims is not None:
        return dims, None
    if cfg.whisper_checkpoint:
        dims, state = load_whisper_checkpoint(cfg.whisper_checkpoint)
        # the Whisper width of a named size; a mismatching checkpoint is a user error
        expected = ARCH_DIMS[cfg._name][0].n_audio_state if cfg._name in PUBLISHED_ARCHS else None
        if expected is not None and dims.n_audio_state != expected:  # before reading a large mBART file
            raise CheckpointError(f"--arch {cfg._name} expects a Whisper encoder of width {expected}, but "
                                  f"{cfg.whisper_checkpoint} has {dims.n_audio_state}")
        return dims, state
    return _random_init_preset(cfg, "--whisper-checkpoint")[0], None


def _mbart_part(cfg) -> tuple:
    """(MbartDims, encoder-decoder state or None), by the same rule as :func:`_whisper_part`."""
    dims = MbartDims.from_cfg(cfg)
    if dims is not None:
        return dims, None
    if cfg.mbart_checkpoint:
        return load_mbart_checkpoint(cfg.mbart_checkpoint)
    return _random_init_preset(cfg, "--mbart-checkpoint")[1], None


def _random_init_preset(cfg, flag: str) -> tuple:
    preset = RANDOM_INIT_DIMS.get(cfg._name)
    if preset is None:
        raise ValueError(f"--arch {cfg._name}: {flag} is required (only the _tiny archs have "
                         "random-init shapes)")
    return preset


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


@register_model_architecture("whisper_mbart_composite", "whisper_mbart_composite_medium")
def whisper_mbart_composite_medium(cfg):
    """Whisper medium encoder + mBART-50 large (~0.95 B); dims come from the checkpoints."""


@register_model_architecture("whisper_mbart_composite", "whisper_mbart_composite_large")
def whisper_mbart_composite_large(cfg):
    """Whisper large-v2 encoder + mBART-50 large (~1.28 B); dims come from the checkpoints."""


@register_model_architecture("whisper_mbart_composite", "whisper_mbart_composite_tiny")
def whisper_mbart_composite_tiny(cfg):
    """For tests and the demo: a part without a checkpoint gets the shapes of
    :data:`RANDOM_INIT_DIMS` (random init); a given checkpoint's dims always win."""


@register_model_architecture("whisper_mbart_composite", "mbart50_text")
def mbart50_text(cfg):
    """The MT stage: the mBART-50 encoder-decoder alone (dims from --mbart-checkpoint), no
    Whisper and no adapter, so its checkpoint holds no speech weights. It initialises the
    ComSL rows (--mbart-checkpoint), is their MT teacher (--mt-teacher) and writes the
    pseudo labels, all of which read only its mBART part."""
    cfg.text_only_model = True


@register_model_architecture("whisper_mbart_composite", "mbart50_text_tiny")
def mbart50_text_tiny(cfg):
    """The MT stage of the toy demo and the tests: :func:`mbart50_text` with the tiny random-init
    mBART shape of :data:`RANDOM_INIT_DIMS` when no --mbart-checkpoint is given."""
    cfg.text_only_model = True


# The shapes of each arch, in one table: the published Whisper and mBART-50 sizes of the
# medium and large archs (their checkpoints are checked against them; the benchmark builds
# them), and the tiny arch's, which it takes for any part built without a checkpoint.
_MBART50_LARGE = MbartDims(dim=1024, ffn_dim=4096, heads=16, encoder_layers=12, decoder_layers=12,
                           max_positions=1024, activation_fn="gelu")
ARCH_DIMS = {
    "whisper_mbart_composite_tiny": (
        WhisperDims(n_mels=80, n_audio_ctx=1500, n_audio_state=128, n_audio_head=2, n_audio_layer=3),
        MbartDims(dim=128, ffn_dim=512, heads=2, encoder_layers=2, decoder_layers=2, max_positions=1024,
                  activation_fn="gelu"),
    ),
    "whisper_mbart_composite_medium": (
        WhisperDims(n_mels=80, n_audio_ctx=1500, n_audio_state=1024, n_audio_head=16, n_audio_layer=24),
        _MBART50_LARGE,
    ),
    "whisper_mbart_composite_large": (
        WhisperDims(n_mels=80, n_audio_ctx=1500, n_audio_state=1280, n_audio_head=20, n_audio_layer=32),
        _MBART50_LARGE,
    ),
}
PUBLISHED_ARCHS = ("whisper_mbart_composite_medium", "whisper_mbart_composite_large")
# Archs whose parts may be built without a checkpoint (random init; tests and the demo).
RANDOM_INIT_DIMS = {name: ARCH_DIMS[name] for name in ("whisper_mbart_composite_tiny",)}
RANDOM_INIT_DIMS["mbart50_text_tiny"] = RANDOM_INIT_DIMS["whisper_mbart_composite_tiny"]
