"""Whisper's front end and audio encoder on variable-length, padded batches.

openai-whisper's ``AudioEncoder.forward`` accepts exactly 30 s (3000 log-mel frames) and
its ``mask`` argument means *causal*. ComSL batches clips of different lengths, so this
module differs from upstream in three ways, and in nothing else:

1. the sinusoidal positional embedding is sliced to the input length;
2. self-attention takes a key-padding mask (we run attention ourselves over the block's
   own ``query/key/value/out`` weights, with the same scaled-dot-product arithmetic);
3. padded frames are re-zeroed between conv1 and the stride-2 conv2.

With a 30 s input and no padding the result equals ``AudioEncoder.forward`` on the same
weights (tests/test_whisper_encoder.py). The state-dict keys are upstream's, so an openai-whisper
checkpoint's ``encoder.*`` tensors load unchanged.

``log_mel`` computes Whisper's log-mel features for a padded batch of waveforms, each
clip exactly as ``whisper.audio.log_mel_spectrogram`` would compute it alone.
"""
import logging

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from whisper.audio import HOP_LENGTH, N_FFT, N_SAMPLES_PER_TOKEN, SAMPLE_RATE, mel_filters
from whisper.model import AudioEncoder, MultiHeadAttention

from comsl_fairseq.modules.lengths import conv_output_lengths, mel_frames, padding_mask

logger = logging.getLogger(__name__)


def _reflect_pad_each(audio: torch.Tensor, lengths: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflect-pad every clip by ``pad`` samples at both of its own ends (torch.stft's
    ``center=True`` padding, applied per clip rather than to the padded batch).

    audio: B x S, lengths: B  ->  B x (S + 2 pad), zero after each clip's padded end.
    """
    B, S = audio.shape
    pos = torch.arange(S + 2 * pad, device=audio.device)  # position in the padded signal
    src = (pos - pad).abs().unsqueeze(0).expand(B, -1)  # reflect at the start
    last = (lengths - 1).unsqueeze(1)
    src = torch.where(src > last, 2 * last - src, src)  # reflect at each clip's end
    valid = pos.unsqueeze(0) < (lengths + 2 * pad).unsqueeze(1)
    return audio.gather(1, src.clamp(0, S - 1)) * valid


def log_mel(audio: torch.Tensor, lengths: torch.Tensor, n_mels: int) -> tuple:
    """Whisper log-mel features of a zero-padded batch of 16 kHz waveforms.

    audio: B x S float, lengths: B samples  ->  (mel B x n_mels x T, mel_lengths B), with
    T = max(lengths) // 160 and zeros after each clip's frames. Each clip's frames equal
    ``whisper.audio.log_mel_spectrogram(clip)``: reflection padding, the 8-decade floor
    and the normalisation all use that clip alone, never the batch.
    """
    audio = audio.float()
    padded = _reflect_pad_each(audio, lengths, N_FFT // 2)
    window = torch.hann_window(N_FFT, device=audio.device)
    stft = torch.stft(padded, N_FFT, HOP_LENGTH, window=window, center=False, return_complex=True)
    power = stft[..., :-1].abs() ** 2  # B x (N_FFT/2+1) x T; Whisper drops the last frame
    mel = mel_filters(audio.device, n_mels) @ power  # B x n_mels x T
    log_spec = torch.clamp(mel, min=1e-10).log10()
    frames = mel_frames(lengths)
    pad = padding_mask(frames, log_spec.size(-1)).unsqueeze(1)  # B x 1 x T
    clip_max = log_spec.masked_fill(pad, float("-inf")).amax(dim=(1, 2), keepdim=True)
    log_spec = torch.maximum(log_spec, clip_max - 8.0)
    log_spec = (log_spec + 4.0) / 4.0
    return log_spec.masked_fill(pad, 0.0), frames


def append_silence(audio: torch.Tensor, lengths: torch.Tensor, seconds: float, max_samples: int) -> tuple:
    """Each clip followed by ``seconds`` of digital silence that the encoder reads as input
    (its length grows; capped at ``max_samples``, Whisper's window). Whisper was pre-trained on
    30 s windows that mostly end in silence; a clip cut at its last word loses most there.
    Returns (audio B x N', lengths)."""
    extra = int(round(seconds * SAMPLE_RATE))
    new_lengths = torch.clamp(lengths + extra, max=max_samples)
    audio = F.pad(audio, (0, max(0, int(new_lengths.max()) - audio.size(1))))
    audio = audio * (torch.arange(audio.size(1), device=audio.device) < lengths.unsqueeze(1))  # zeros after each clip
    return audio, new_lengths


def pad_or_cut(audio: torch.Tensor, lengths: torch.Tensor, seconds: float) -> tuple:
    """The fixed-length input of the original recipe (11 s) or of Whisper (30 s): every
    clip is cut or zero-padded to ``seconds`` and the silence counts as input (no mask).
    Returns (audio B x N, lengths, number of clips that were cut)."""
    n = int(round(seconds * SAMPLE_RATE))
    n_cut = int((lengths > n).sum())
    audio = F.pad(audio, (0, max(0, n - audio.size(1))))[:, :n]
    audio = audio * (torch.arange(n, device=audio.device) < lengths.unsqueeze(1))  # drop batch padding
    return audio, torch.full_like(lengths, n), n_cut


class MaskedWhisperEncoder(AudioEncoder):
    """openai-whisper's ``AudioEncoder`` with sliced positions and a key-padding mask."""

    def __init__(self, n_mels: int, n_ctx: int, n_state: int, n_head: int, n_layer: int):
        super().__init__(n_mels, n_ctx, n_state, n_head, n_layer)
        self.n_mels, self.n_ctx, self.n_state = n_mels, n_ctx, n_state
        self.checkpoint_activations = False  # recompute each block in the backward pass

    @staticmethod
    def _self_attention(attn: MultiHeadAttention, x: torch.Tensor, attend: torch.Tensor | None):
        # x: B x T x C; attend: B x 1 x 1 x T (True = may attend) or None
        B, T, C = x.shape
        q, k, v = (proj(x).view(B, T, attn.n_head, -1).transpose(1, 2)  # B x H x T x C/H
                   for proj in (attn.query, attn.key, attn.value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)  # scale (C/H)^-0.5 as Whisper
        return attn.out(out.transpose(1, 2).reshape(B, T, C))

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> tuple:
        """mel: B x n_mels x T (zero after each clip) -> (B x T/2 x C, lengths, padding mask).

        Whisper is batch-first throughout; the layout switches to fairseq's T x B x C
        only at the mBART encoder output.
        """
        if mel.size(1) != self.n_mels:
            raise ValueError(f"features have {mel.size(1)} mel bins, the Whisper encoder expects {self.n_mels}")
        x = F.gelu(self.conv1(mel))  # B x C x T
        x = x.masked_fill(padding_mask(mel_lengths, x.size(-1)).unsqueeze(1), 0.0)
        x = F.gelu(self.conv2(x)).permute(0, 2, 1)  # B x T' x C
        lengths = conv_output_lengths(mel_lengths)
        T = x.size(1)
        if T > self.n_ctx:
            raise ValueError(f"input of {T * N_SAMPLES_PER_TOKEN / SAMPLE_RATE:.1f} s exceeds the Whisper "
                             f"encoder's {self.n_ctx * N_SAMPLES_PER_TOKEN / SAMPLE_RATE:.0f} s window")
        x = (x + self.positional_embedding[:T]).to(x.dtype)
        mask = padding_mask(lengths, T)  # B x T, True at padding
        attend = None if not mask.any() else ~mask[:, None, None, :]
        for block in self.blocks:
            if self.checkpoint_activations and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(self._block, block, x, attend, use_reentrant=False)
            else:
                x = self._block(block, x, attend)
        return self.ln_post(x), lengths, mask

    def _block(self, block, x, attend):
        x = x + self._self_attention(block.attn, block.attn_ln(x), attend)
        return x + block.mlp(block.mlp_ln(x))
