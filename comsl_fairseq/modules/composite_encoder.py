"""The composite encoder of ComSL: Whisper, adapter and the mBART-50 encoder.

The composite encoder of ComSL: Whisper -> adapter -> [src tag ; speech] ->
mBART-50 encoder for speech, the same mBART encoder for text and for the concatenation
[masked transcript ; speech] of cross-modality learning.

    wav --log-mel (per clip, on device)--> Whisper encoder (masked)     B x T/2 x Cw
        --adapter (2 strided GLU convs)-->                              B x T/8 x Cm
        --[src tag embedding ; adapter output]--> mBART-50 encoder      T x B x Cm (fairseq layout)
"""
import logging
from contextlib import nullcontext

import torch
from fairseq.models import FairseqEncoder
from fairseq.models.transformer import TransformerEncoder
from whisper.audio import N_SAMPLES_PER_TOKEN

from comsl_fairseq.modules.adapter import Adapter
from comsl_fairseq.modules.branches import CONCAT_SPEECH, CONCAT_TEXT, SPEECH, TEXT
from comsl_fairseq.modules.whisper_encoder import MaskedWhisperEncoder, append_silence, log_mel, pad_or_cut
from comsl_fairseq.modules.whisper_feature_cache import WhisperFeatureCache, cached_features, weights_fingerprint

logger = logging.getLogger(__name__)


# Without gradients, padding is handed to the mBART layers as a B*heads x T x T boolean attention
# mask (expanded: one T-long row per clip and head) while that mask stays this small, instead of a
# key-padding mask: torch's multi_head_attention_forward checks a key-padding mask with
# torch._check_with, whose first call imports sympy (about 32 MB resident, for the rest of the
# process). Both masks give the same attention, bit for bit (the mask is the same -inf where a
# key is padding). Larger batches, and training (the backward pass would keep the full float mask
# of every layer), keep the key-padding mask. So do other devices (the equality is tested on the
# CPU, where the memory matters) and fairseq's own attention paths (xformers, ONNX tracing,
# scripting, pruned dimensions), which add a 3-D mask instead of masking with it.
ATTN_MASK_MAX_ELEMENTS = 1 << 21  # 2 M elements: ~10 MB per layer as bool + float (a CPU batch of 16 heads needs 1.1 M)


def _takes_torch_attention(attn) -> bool:
    """Whether fairseq's MultiheadAttention ``attn`` hands a self-attention to
    torch.nn.functional.multi_head_attention_forward (where a bool 3-D mask masks)."""
    return not (getattr(attn, "use_xformers", False) or getattr(attn, "onnx_trace", False)
                or getattr(attn, "skip_embed_dim_check", False) or torch.jit.is_scripting())


def _padding_masks(padding_mask: torch.Tensor, has_pads: bool, layers) -> tuple:
    """(encoder_padding_mask, attn_mask) for fairseq encoder layers, from a B x T padding mask."""
    if not has_pads:
        return None, None
    heads = layers[0].self_attn.num_heads if len(layers) else 1
    bsz, length = padding_mask.shape
    if (torch.is_grad_enabled() or padding_mask.device.type != "cpu"
            or bsz * heads * length * length > ATTN_MASK_MAX_ELEMENTS
            or not all(_takes_torch_attention(layer.self_attn) for layer in layers)):
        return padding_mask, None
    rows = padding_mask.view(bsz, 1, length).repeat_interleave(heads, dim=0)  # (B*heads) x 1 x T
    return None, rows.expand(bsz * heads, length, length)


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
        self.feature_cache = None
        cache_dir = getattr(cfg, "whisper_feature_cache", None)
        if cache_dir and whisper is not None:
            self.feature_cache = WhisperFeatureCache(cache_dir, {
                "pad_seconds": self.pad_seconds, "trailing_silence": self.trailing_silence,
                "n_mels": whisper.n_mels})
        self.whisper_fingerprint = None  # of the frozen weights the cache is read with; None = not yet hashed
        self._cache_bypassed = False

    def set_num_updates(self, num_updates):
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def freezes_whisper(self) -> bool:
        """Whether a freeze is configured at all (then DDP leaves Whisper to us: comsl_fairseq.training.distributed)."""
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
        """audio B x S (16 kHz) -> (B x 1+T/8 x C mBART-input embeddings, B x 1+T/8 padding mask):
        :meth:`whisper_features`, then :meth:`features_to_embeddings`."""
        h, h_lengths = self.whisper_features(audio, audio_lengths)  # B x T/2 x Cw
        return self.features_to_embeddings(h, h_lengths, lang_tags)

    def whisper_features(self, audio, audio_lengths) -> tuple:
        """audio B x S (16 kHz), lengths B -> (Whisper encoder output h B x T/2 x Cw, lengths B),
        under the configured input length: padded or cut to --whisper-pad-seconds (every frame
        valid, no mask), or each clip at its own length (+ --whisper-trailing-silence) with the
        batch padding masked. Runs without gradients while Whisper is frozen; then, with
        --whisper-feature-cache, each clip's output is read from the cache when there
        (modules/whisper_feature_cache.py) and computed only for the clips that are not."""
        if self.whisper is None:
            raise ValueError("this model has no speech encoder (a text-only MT-stage model, --arch mbart50_text): "
                             "train it with --text-only and only the MT term, decode it with --decode-task mt")
        cache = self.feature_cache_in_use()
        if cache is not None:
            return cached_features(cache, self.whisper_fingerprint, self._whisper_forward, audio, audio_lengths)
        return self._whisper_forward(audio, audio_lengths)

    def feature_cache_in_use(self):
        """The feature cache while Whisper is frozen (its weights hashed on first use), else None:
        once Whisper is no longer frozen the cache is bypassed for good, and the log says so."""
        if self.feature_cache is None:
            return None
        if not self.whisper_frozen:
            if not self._cache_bypassed:
                self._cache_bypassed = True
                logger.info("Whisper is not frozen at update %d (epoch %d): the Whisper feature cache %s is "
                            "bypassed from now on (%s so far)", self.num_updates, self.epoch,
                            self.feature_cache.folder, self.feature_cache.stats())
            self.whisper_fingerprint = None
            return None
        if self.whisper_fingerprint is None:
            self.whisper_fingerprint = weights_fingerprint(self.whisper)
            logger.info("Whisper feature cache %s: frozen Whisper weights %s, settings %s", self.feature_cache.folder,
                        self.whisper_fingerprint, self.feature_cache.settings)
        return self.feature_cache

    def _whisper_forward(self, audio, audio_lengths) -> tuple:
        """The uncached :meth:`whisper_features`."""
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
        return h, h_lengths

    def features_to_embeddings(self, h, h_lengths, lang_tags) -> tuple:
        """Whisper features h B x T x Cw (lengths B) and source-language tags B -> (mBART-input
        embeddings B x 1+T/4 x C, padding mask B x 1+T/4): [tag ; adapter(h)].

        The tag embedding is scaled by sqrt(d) like every token embedding; the adapter
        output enters unscaled."""
        speech, _, speech_mask = self.adapter(h, h_lengths)  # B x T/4 x Cm
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
        key_padding, attn_mask = _padding_masks(padding_mask, has_pads, m.layers)
        for layer in m.layers:
            x = layer(x, encoder_padding_mask=key_padding, attn_mask=attn_mask)
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

    def branch_outputs(self, needed: set, src_tokens, src_lengths, src_lang_tags, src_text_tokens,
                       cml_text_tokens, return_all_hiddens: bool = False) -> dict:
        """The encoder outputs (names of modules/branches.py) that ``needed`` asks for.

        The speech embeddings (Whisper + adapter) are computed once and shared by the
        speech-only pass H_s and the concatenated pass H_c = [emb(x~) ; speech], whose text
        and speech parts H_c^x, H_c^s the decoder reads separately. ``return_all_hiddens``
        keeps the layer outputs of the speech and concatenated passes (for ERM).
        """
        outs = {}
        concat = bool({CONCAT_SPEECH, CONCAT_TEXT} & needed)
        if SPEECH in needed or concat:
            speech, speech_mask = self.speech_embeddings(src_tokens, src_lengths, src_lang_tags)  # B x T x C
        if SPEECH in needed:
            outs[SPEECH] = self.encode(speech, speech_mask, return_all_hiddens)
        if TEXT in needed:
            outs[TEXT] = self.forward_text(src_text_tokens)
        if concat:
            if cml_text_tokens is None:
                raise ValueError("the cross-modality branches need cml_text_tokens (the masked transcript)")
            text, text_mask = self.text_embeddings(cml_text_tokens)  # B x Tx x C
            both = self.encode(torch.cat([text, speech.to(text.dtype)], dim=1),
                               torch.cat([text_mask, speech_mask], dim=1), return_all_hiddens)
            outs[CONCAT_TEXT] = self.part(both, 0, text.size(1))
            outs[CONCAT_SPEECH] = self.part(both, text.size(1))
        return outs

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
        return None if self.whisper is None else self.whisper.n_ctx * N_SAMPLES_PER_TOKEN
