"""The convolutional length adapter between Whisper and mBART (50 -> 12.5 frames/s).

The convolutional length adapter between Whisper and mBART: 50 -> 12.5
frames/s. Its lengths and padding masks come from modules/lengths.py; every conv input
has its padding re-zeroed first, so no output depends on batch padding.
"""
import torch
import torch.nn.functional as F
from torch import nn

from comsl_fairseq.modules.lengths import conv_output_lengths, padding_mask, zero_padding

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
    """Two-layer conv adapter, 4x down-sampling, Whisper width -> mBART width.

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
