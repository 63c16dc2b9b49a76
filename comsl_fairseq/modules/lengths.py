"""Length arithmetic along the speech path: input lengths to output lengths and padding masks.

Length arithmetic along the speech path, in one place: input lengths -> output lengths
and padding masks. The Whisper wrapper and the adapter both use it.

Frame rates (16 kHz audio; the signal constants are upstream whisper's, whisper/audio.py):

    samples --HOP_LENGTH 160--> log-mel 100/s --Whisper conv2 s=2--> 50/s
            (N_SAMPLES_PER_TOKEN = 2 * HOP_LENGTH = 320 samples per Whisper frame)
            --adapter conv s=2--> 25/s --adapter conv s=2--> 12.5/s

Each stride-2 conv (kernel 3, padding 1) maps a length L to (L - 1) // 2 + 1. Its last
output reads one frame past the end of the clip; that frame is zero for a clip alone
(conv zero padding) and must also be zero for a clip padded inside a batch, which is
why the convs' callers re-zero padding with :func:`zero_padding` first.
"""
import torch
from whisper.audio import HOP_LENGTH


def conv_output_lengths(lengths: torch.Tensor, n_convs: int = 1, kernel: int = 3,
                        stride: int = 2, padding: int = 1) -> torch.Tensor:
    """Lengths after ``n_convs`` identical 1-D convolutions."""
    for _ in range(n_convs):
        lengths = torch.div(lengths + 2 * padding - kernel, stride, rounding_mode="floor") + 1
    return lengths


def mel_frames(n_samples: torch.Tensor) -> torch.Tensor:
    """Log-mel frames Whisper computes for a clip (its STFT drops the last frame)."""
    return torch.div(n_samples, HOP_LENGTH, rounding_mode="floor")


def speech_lengths(n_samples: torch.Tensor) -> dict:
    """Every length along the speech path, from audio samples: mel, Whisper, adapter."""
    mel = mel_frames(n_samples)
    whisper = conv_output_lengths(mel, 1)
    adapter = conv_output_lengths(whisper, 2)
    return {"mel": mel, "whisper": whisper, "adapter": adapter}


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """B x max_len bool mask, True at padded frames."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) >= lengths.unsqueeze(1)


def zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the padded frames of ``x`` (B x T x C) where ``mask`` (B x T) is True."""
    return x.masked_fill(mask.unsqueeze(-1), 0.0)
