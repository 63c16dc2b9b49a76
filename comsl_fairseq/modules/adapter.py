"""The convolutional length adapter between Whisper and mBART (SPEC §2), and the one
helper that turns input lengths into output lengths and padding masks.

Frame rates along the speech path (16 kHz audio):

    samples --hop 160--> log-mel 100/s --Whisper conv2 s=2--> 50/s
            --adapter conv s=2--> 25/s --adapter conv s=2--> 12.5/s

Each stride-2 conv (kernel 3, padding 1) maps a length L to (L - 1) // 2 + 1. Its last
output reads one frame past the end of the clip; that frame is zero for a clip alone
(conv zero padding) and must also be zero for a clip padded inside a batch, so every
conv input has its padding re-zeroed first. Then no output depends on batch padding.
"""
import torch
import torch.nn.functional as F
from torch import nn

HOP_LENGTH = 160  # audio samples per log-mel frame (Whisper: 10 ms at 16 kHz)


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


# The FFN non-linearity: the original ComSL adapter uses ReLU; GELU was our first choice.
ADAPTER_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class HalfStepFFN(nn.Module):
    """x + 0.5 * FFN(x), the macaron-style half-step feed-forward block."""

    def __init__(self, dim: int, ffn_dim: int, dropout: float, activation: str = "relu"):
        super().__init__()
        if activation not in ADAPTER_ACTIVATIONS:
            raise ValueError(f"adapter activation {activation!r}: choose one of {sorted(ADAPTER_ACTIVATIONS)}")
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.activation = ADAPTER_ACTIVATIONS[activation]

    def forward(self, x):
        return x + 0.5 * self.dropout(self.fc2(self.dropout(self.activation(self.fc1(x)))))


class StridedGLUConv(nn.Module):
    """Conv1d(kernel 3, stride 2) to twice the output width, then GLU: halves the frame rate."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv = nn.Conv1d(in_dim, 2 * out_dim, kernel_size=3, stride=2, padding=1)

    def forward(self, x, lengths):
        # x: B x T x C_in, padding already zeroed -> B x T' x C_out, new lengths
        x = self.conv(x.transpose(1, 2))  # B x 2C_out x T'
        x = F.glu(x, dim=1).transpose(1, 2)  # B x T' x C_out
        return x, conv_output_lengths(lengths, 1)


class Adapter(nn.Module):
    """Two-layer conv adapter, 4x down-sampling, Whisper width -> mBART width (SPEC §2).

    layer 1: x + 0.5 FFN(x) -> LayerNorm -> Conv1d(k3, s2) -> GLU -> x + 0.5 FFN(x) -> LayerNorm
    layer 2: Conv1d(k3, s2) -> GLU

    The defaults (ReLU in the FFNs, no dropout) are the original ComSL adapter's.
    """

    def __init__(self, in_dim: int, out_dim: int, ffn_mult: int = 4, dropout: float = 0.0,
                 activation: str = "relu"):
        super().__init__()
        self.ffn_in = HalfStepFFN(in_dim, ffn_mult * in_dim, dropout, activation)
        self.ln_in = nn.LayerNorm(in_dim)
        self.conv1 = StridedGLUConv(in_dim, out_dim)
        self.ffn_mid = HalfStepFFN(out_dim, ffn_mult * out_dim, dropout, activation)
        self.ln_mid = nn.LayerNorm(out_dim)
        self.conv2 = StridedGLUConv(out_dim, out_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        """x: B x T x C_whisper (50 frames/s) -> (B x T/4 x C_mbart, lengths, padding mask)."""
        x = self.ln_in(self.ffn_in(x))
        x, lengths = self.conv1(zero_padding(x, padding_mask(lengths, x.size(1))), lengths)
        x = self.ln_mid(self.ffn_mid(x))
        x, lengths = self.conv2(zero_padding(x, padding_mask(lengths, x.size(1))), lengths)
        mask = padding_mask(lengths, x.size(1))
        return zero_padding(x, mask), lengths, mask
