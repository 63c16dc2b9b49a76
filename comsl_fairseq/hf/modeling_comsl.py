"""The ComSL speech translation model on transformers' own Whisper and mBART classes.

    log-mel B x n_mels x T (each clip at its own length, zero after it; mask B x T)
      --Whisper conv1, conv2 (stride 2), sinusoidal positions sliced to T/2, layers--> B x T/2 x Cw
      --adapter (two strided GLU convs)-->                                           B x T/8 x Cm
      --[embedding of the source-language tag ; adapter output]--> mBART-50 encoder  B x 1+T/8 x Cm
      --> mBART-50 decoder reading "</s> [target tag] y1 ... ym", output tied to the token embedding

transformers' ``WhisperEncoder``, ``MBartEncoder`` and ``MBartDecoder`` hold the weights and
run the layers; this file adds what they lack. ``WhisperEncoder.forward`` accepts only 30 s
(3000 frames) without a padding mask, so :class:`ComslSpeechEncoder` runs its modules over
each clip's own length: positions sliced to the input, padded frames re-zeroed before the
stride-2 conv, a key-padding mask in self-attention. The adapter, the tag-prefixed encoder
input and the fairseq decoding rules (:class:`FairseqStepRules`) are the only new parts.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, LogitsProcessor, LogitsProcessorList, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from transformers.models.mbart.modeling_mbart import MBartDecoder, MBartEncoder
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .configuration_comsl import ComslConfig

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def conv_output_lengths(lengths: torch.Tensor, n_convs: int = 1) -> torch.Tensor:
    """Lengths after ``n_convs`` 1-D convolutions of kernel 3, stride 2, padding 1."""
    for _ in range(n_convs):
        lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
    return lengths


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """B x max_len, True at padded frames."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) >= lengths.unsqueeze(1)


def encoder_lengths(mel_lengths: torch.Tensor) -> torch.Tensor:
    """mBART-encoder input length of each clip: the tag + mel frames / 8 (Whisper conv2, two adapter convs)."""
    return 1 + conv_output_lengths(mel_lengths, 3)


class HalfStepFFN(nn.Module):
    """x + 0.5 * FFN(x), the macaron-style half-step feed-forward block."""

    def __init__(self, dim: int, ffn_dim: int, activation: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.activation = ACTIVATIONS[activation]

    def forward(self, x):
        return x + 0.5 * self.fc2(self.activation(self.fc1(x)))


class StridedGLUConv(nn.Module):
    """Conv1d(kernel 3, stride 2) to twice the output width, then GLU: halves the frame rate."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv = nn.Conv1d(in_dim, 2 * out_dim, kernel_size=3, stride=2, padding=1)

    def forward(self, x, lengths):
        # x: B x T x C_in with padding zeroed -> B x T/2 x C_out
        x = F.glu(self.conv(x.transpose(1, 2)), dim=1).transpose(1, 2)
        return x, conv_output_lengths(lengths)


class ComslAdapter(nn.Module):
    """Whisper width -> mBART width, 4x fewer frames:
    x + 0.5 FFN(x) -> LayerNorm -> strided GLU conv -> x + 0.5 FFN(x) -> LayerNorm -> strided GLU conv.
    Padding is re-zeroed before each conv, so no output depends on what else is in the batch."""

    def __init__(self, in_dim: int, out_dim: int, ffn_mult: int, activation: str):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"adapter_activation {activation!r}: choose one of {sorted(ACTIVATIONS)}")
        self.ffn_in = HalfStepFFN(in_dim, ffn_mult * in_dim, activation)
        self.ln_in = nn.LayerNorm(in_dim)
        self.conv1 = StridedGLUConv(in_dim, out_dim)
        self.ffn_mid = HalfStepFFN(out_dim, ffn_mult * out_dim, activation)
        self.ln_mid = nn.LayerNorm(out_dim)
        self.conv2 = StridedGLUConv(out_dim, out_dim)

    def forward(self, x, lengths):
        """x: B x T x Cw, lengths B -> (B x T/4 x Cm, lengths, padding mask B x T/4)."""
        x = self.ln_in(self.ffn_in(x))
        x, lengths = self.conv1(x.masked_fill(padding_mask(lengths, x.size(1)).unsqueeze(-1), 0.0), lengths)
        x = self.ln_mid(self.ffn_mid(x))
        x, lengths = self.conv2(x.masked_fill(padding_mask(lengths, x.size(1)).unsqueeze(-1), 0.0), lengths)
        mask = padding_mask(lengths, x.size(1))
        return x.masked_fill(mask.unsqueeze(-1), 0.0), lengths, mask


class ComslPreTrainedModel(PreTrainedModel):
    config: ComslConfig
    config_class = ComslConfig
    base_model_prefix = "comsl"
    main_input_name = "input_features"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    _no_split_modules = ["WhisperEncoderLayer", "MBartEncoderLayer", "MBartDecoderLayer"]


class ComslSpeechEncoder(nn.Module):
    """Whisper encoder -> adapter -> [tag embedding ; speech] -> mBART encoder, on padded batches."""

    main_input_name = "input_features"

    def __init__(self, config: ComslConfig):
        super().__init__()
        self.whisper = WhisperEncoder(config.whisper_config)
        self.adapter = ComslAdapter(config.whisper_config.d_model, config.mbart_config.d_model,
                                    config.adapter_ffn_mult, config.adapter_activation)
        self.mbart = MBartEncoder(config.mbart_config)

    def whisper_features(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> tuple:
        """mel B x n_mels x T -> (B x T/2 x Cw, lengths). Differs from ``WhisperEncoder.forward``
        only where variable lengths need it: positions sliced to T/2, padding zeroed between the
        convs and masked in self-attention."""
        w = self.whisper
        x = F.gelu(w.conv1(mel))  # B x Cw x T
        x = x.masked_fill(padding_mask(mel_lengths, x.size(-1)).unsqueeze(1), 0.0)
        x = F.gelu(w.conv2(x)).permute(0, 2, 1)  # B x T/2 x Cw
        T = x.size(1)
        if T > w.embed_positions.num_embeddings:
            raise ValueError(f"{T} encoder frames exceed Whisper's window of {w.embed_positions.num_embeddings} "
                             "(30 s); cut the audio into shorter segments")
        x = x + w.embed_positions.weight[:T]
        lengths = conv_output_lengths(mel_lengths)
        mask = create_bidirectional_mask(config=w.config, inputs_embeds=x,
                                         attention_mask=~padding_mask(lengths, T))
        for layer in w.layers:
            x = layer(x, mask)
        return w.layer_norm(x), lengths

    def forward(self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None,
                src_lang_ids: torch.Tensor | None = None, **kwargs) -> BaseModelOutput:
        """input_features B x n_mels x T, attention_mask B x T (1 = frame of the clip), src_lang_ids B
        -> mBART encoder output B x 1+T/8 x Cm (positions after a clip's end are padding)."""
        if src_lang_ids is None:
            raise ValueError("the source language is needed: processor(..., src_lang='fr') or "
                             "generate(..., src_lang='fr')")
        B, _, T = input_features.shape
        mel_lengths = (attention_mask.sum(-1) if attention_mask is not None
                       else torch.full((B,), T, device=input_features.device))
        h, h_lengths = self.whisper_features(input_features, mel_lengths)  # B x T/2 x Cw
        speech, _, speech_mask = self.adapter(h, h_lengths)  # B x T/8 x Cm
        tag = self.mbart.embed_tokens(src_lang_ids.view(B, 1))  # B x 1 x Cm, scaled by sqrt(d) like tokens
        x = torch.cat([tag.to(speech.dtype), speech], dim=1)  # the adapter output enters unscaled
        mask = torch.cat([speech_mask.new_zeros(B, 1), speech_mask], dim=1)
        out = self.mbart(inputs_embeds=x, attention_mask=(~mask).long())
        return BaseModelOutput(last_hidden_state=out.last_hidden_state)


class FairseqStepRules(LogitsProcessor):
    """The rules fairseq's beam search applies to each step's log-probabilities, so that
    ``generate`` finds the hypotheses ``fairseq-generate --prefix-size 1`` finds:

    - step 0: only the target-language tag, with its own log-probability (transformers'
      ``forced_bos_token_id`` would score it 0, which changes length-normalised scores);
    - padding is never chosen;
    - the last step (``max_new_tokens``) allows only ``</s>``, so every hypothesis ends with it.
    """

    def __init__(self, prefix_ids: torch.Tensor, pad_id: int, eos_id: int, last_step: int):
        self.prefix_ids = prefix_ids  # B
        self.pad_id, self.eos_id, self.last_step = pad_id, eos_id, last_step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[-1] - 1  # tokens generated so far; the decoder start token is not one
        scores = scores.clone()
        scores[:, self.pad_id] = -float("inf")
        keep = None
        if step >= self.last_step:
            keep = torch.full_like(scores[:, :1], self.eos_id, dtype=torch.long)
        elif step == 0:
            rows_per_item = scores.size(0) // self.prefix_ids.size(0)  # beams
            keep = self.prefix_ids.to(scores.device).repeat_interleave(rows_per_item).unsqueeze(1)
        if keep is not None:
            kept = scores.gather(1, keep)
            scores.fill_(-float("inf"))
            scores.scatter_(1, keep, kept)
        return scores


class ComslForSpeechSeq2Seq(ComslPreTrainedModel, GenerationMixin):
    """ComSL: speech -> text in the target language (translation) or the source language (ASR).

    ``generate(input_features, attention_mask, src_lang=..., tgt_lang=...)``: ``src_lang`` (or the
    processor's ``src_lang_ids``) is the spoken language, whose tag opens the encoder input;
    ``tgt_lang`` (or ``forced_bos_token_id``, a tag id) is the output language; for ASR give
    the source language again. Both accept a code per batch item.
    """

    _tied_weights_keys = {"encoder.mbart.embed_tokens.weight": "decoder.embed_tokens.weight",
                          "lm_head.weight": "decoder.embed_tokens.weight"}

    def __init__(self, config: ComslConfig):
        super().__init__(config)
        self.encoder = ComslSpeechEncoder(config)
        self.decoder = MBartDecoder(config.mbart_config)
        self.lm_head = nn.Linear(config.mbart_config.d_model, config.mbart_config.vocab_size, bias=False)
        self.post_init()

    def get_encoder(self):
        return self.encoder

    def get_decoder(self):
        return self.decoder

    def get_input_embeddings(self):
        return self.decoder.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_features=None, attention_mask=None, src_lang_ids=None, decoder_input_ids=None,
                decoder_attention_mask=None, encoder_outputs=None, cache=None, past_key_values=None,
                labels=None, use_cache=None, **kwargs) -> Seq2SeqLMOutput:
        """Logits B x T x V of the decoder input ``</s> [tgt tag] y1 ...`` (from ``labels``
        ``[tgt tag] y1 ... </s>`` when not given); ``attention_mask`` is the log-mel frame mask."""
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_features, attention_mask, src_lang_ids)
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs[0])
        hidden = encoder_outputs.last_hidden_state  # B x S x Cm
        B, S = hidden.shape[:2]
        if attention_mask is not None:
            enc_mask = ~padding_mask(encoder_lengths(attention_mask.sum(-1)), S)  # B x S, True = frame
        else:
            enc_mask = torch.ones(B, S, dtype=torch.bool, device=hidden.device)
        if decoder_input_ids is None and labels is not None:
            decoder_input_ids = self.shift_labels(labels)
            use_cache = False
        out = self.decoder(input_ids=decoder_input_ids, attention_mask=decoder_attention_mask,
                           encoder_hidden_states=hidden, encoder_attention_mask=enc_mask.long(),
                           cache=cache if cache is not None else past_key_values, use_cache=use_cache)
        logits = self.lm_head(out.last_hidden_state)  # B x T x V
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                                   ignore_index=-100)
        return Seq2SeqLMOutput(loss=loss, logits=logits, cache=out.cache,
                               encoder_last_hidden_state=hidden)

    def shift_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """``[tag] y </s>`` (padded with -100 or pad) -> decoder input ``</s> [tag] y``."""
        prev = labels.masked_fill(labels == -100, self.config.pad_token_id)
        start = prev.new_full((prev.size(0), 1), self.config.decoder_start_token_id)
        return torch.cat([start, prev[:, :-1]], dim=1)

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor):
        return self.shift_labels(labels)

    def language_ids(self, langs, batch_size: int) -> torch.Tensor:
        """Tag ids (B) of one language code for the whole batch or one code per item."""
        codes = [langs] * batch_size if isinstance(langs, str) else list(langs)
        if len(codes) != batch_size:
            raise ValueError(f"{len(codes)} language codes for a batch of {batch_size}")
        return torch.tensor([self.config.tag_id(c) for c in codes], device=self.device)

    def generate(self, input_features=None, src_lang=None, tgt_lang=None, generation_config=None,
                 logits_processor=None, **kwargs):
        """transformers' ``generate`` with the source tag in the encoder input and fairseq's
        decoding rules (:class:`FairseqStepRules`). ``tgt_lang`` or ``forced_bos_token_id``
        names the output language. ``max_new_tokens`` counts the tag and ``</s>`` (fairseq's
        ``--max-len-b`` + 1); the last one is always ``</s>``."""
        batch_size = input_features.shape[0]
        if src_lang is not None:
            if kwargs.get("src_lang_ids") is not None:
                raise ValueError("give src_lang or src_lang_ids, not both")
            kwargs["src_lang_ids"] = self.language_ids(src_lang, batch_size)
        gen = copy.deepcopy(generation_config if generation_config is not None else self.generation_config)
        forced = kwargs.pop("forced_bos_token_id", None) or gen.forced_bos_token_id
        if tgt_lang is not None:
            prefix = self.language_ids(tgt_lang, batch_size)
        elif forced is not None:
            prefix = torch.full((batch_size,), int(forced), device=self.device)
        else:
            raise ValueError("the output language is needed: generate(..., tgt_lang='en') or "
                             "forced_bos_token_id=<its tag id>; for ASR give the source language")
        gen.forced_bos_token_id = None
        if "max_length" in kwargs:
            kwargs["max_new_tokens"] = kwargs.pop("max_length") - 1
        max_new = kwargs.pop("max_new_tokens", None) or gen.max_new_tokens
        if not max_new:
            raise ValueError("set max_new_tokens (the generation_config.json of an export has it)")
        rules = FairseqStepRules(prefix, self.config.pad_token_id, self.config.eos_token_id, max_new - 1)
        processors = LogitsProcessorList([rules, *(logits_processor or [])])
        gen.max_new_tokens = max_new
        for key in [k for k in kwargs if hasattr(gen, k) and k not in ("src_lang_ids", "attention_mask")]:
            setattr(gen, key, kwargs.pop(key))  # num_beams=..., as transformers merges them
        return super().generate(input_features=input_features, generation_config=gen,
                                logits_processor=processors, **kwargs)

    def _update_finished_beams(self, sequences, topk_running_sequences, beam_scores, topk_log_probs, beam_indices,
                               topk_running_beam_indices, is_sent_finished, next_token_hits_stopping_criteria,
                               top_num_beam_mask, num_beams, cur_len, decoder_prompt_len, length_penalty, **kwargs):
        """fairseq's rule for finished hypotheses, in place of transformers' (called by its beam search).

        Both finish the candidates that end in ``</s>`` among the best ``num_beams`` of a step and
        stop a sentence once ``num_beams`` are finished. They differ at the step that fills the
        last slots: transformers keeps the best-scoring ``num_beams`` of the old and new ones
        (a longer hypothesis can push out a shorter one finished earlier); fairseq keeps every
        hypothesis already finished and fills the free slots with the new ones, best first.
        B: batch, K: ``num_beams``, 2K candidates per step.
        """
        just_finished = next_token_hits_stopping_criteria & top_num_beam_mask[None, :]  # B x 2K
        just_finished = just_finished & ~is_sent_finished.all(dim=-1, keepdim=True)  # a full sentence takes none
        new_scores = topk_log_probs / ((cur_len + 1 - decoder_prompt_len) ** length_penalty)
        merged_scores = torch.cat((beam_scores, new_scores.masked_fill(~just_finished, -1.0e9)), dim=1)
        merged_finished = torch.cat((is_sent_finished, just_finished), dim=1)
        # order of precedence: kept hypotheses, then new ones by score, then the unfinished fillers
        key = torch.cat((torch.where(is_sent_finished, 1.0e9, -3.0e9),
                         torch.where(just_finished, new_scores, -2.0e9)), dim=1)
        keep = torch.topk(key, k=num_beams, dim=1)[1]  # B x K
        keep = keep.gather(1, merged_scores.gather(1, keep).argsort(dim=1, descending=True))  # best first
        merged_sequences = torch.cat((sequences, topk_running_sequences), dim=1)
        merged_beam_indices = torch.cat((beam_indices, topk_running_beam_indices), dim=1)
        return (self._gather_beams(merged_sequences, keep), merged_scores.gather(1, keep),
                self._gather_beams(merged_beam_indices, keep), merged_finished.gather(1, keep))


__all__ = ["ComslForSpeechSeq2Seq", "ComslPreTrainedModel", "ComslSpeechEncoder", "FairseqStepRules"]
