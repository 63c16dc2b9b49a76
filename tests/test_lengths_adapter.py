"""The length helper and the adapter's padding handling."""
import torch
import whisper.audio

from comsl_fairseq.modules.adapter import Adapter
from comsl_fairseq.modules.lengths import conv_output_lengths, padding_mask, speech_lengths


def test_conv_output_lengths_match_real_convolutions():
    conv = torch.nn.Conv1d(1, 1, kernel_size=3, stride=2, padding=1)
    for n in range(1, 40):
        assert conv(torch.zeros(1, 1, n)).size(-1) == int(conv_output_lengths(torch.tensor([n]))[0])


def test_speech_lengths_of_whisper_window():
    # 30 s -> 3000 mel frames -> 1500 Whisper frames -> 375 adapter frames (12.5 per second)
    lengths = speech_lengths(torch.tensor([30 * 16000, 16000, 16159, 16160]))
    assert lengths["mel"].tolist() == [3000, 100, 100, 101]
    assert lengths["whisper"].tolist() == [1500, 50, 50, 51]
    assert lengths["adapter"].tolist() == [375, 13, 13, 13]
    # upstream whisper's own constants: its 30 s window gives its 3000 mel frames and 1500 encoder frames
    full = speech_lengths(torch.tensor([whisper.audio.N_SAMPLES]))
    assert int(full["mel"]) == whisper.audio.N_FRAMES and int(full["whisper"]) * whisper.audio.N_SAMPLES_PER_TOKEN == \
        whisper.audio.N_SAMPLES


def test_padding_mask():
    m = padding_mask(torch.tensor([2, 4]), 4)
    assert m.tolist() == [[False, False, True, True], [False, False, False, False]]


def test_adapter_output_does_not_depend_on_batch_padding():
    torch.manual_seed(0)
    adapter = Adapter(16, 24, dropout=0.0).eval()
    short, long_ = torch.randn(1, 13, 16), torch.randn(1, 30, 16)
    alone, alone_len, _ = adapter(short, torch.tensor([13]))
    batch = torch.cat([torch.cat([short, 100 * torch.randn(1, 17, 16)], dim=1), long_])  # garbage padding
    out, out_len, mask = adapter(batch, torch.tensor([13, 30]))
    n = int(alone_len[0])
    assert out_len.tolist() == [n, int(conv_output_lengths(torch.tensor(30), 2))]
    assert torch.allclose(out[0, :n], alone[0], atol=1e-6)
    assert mask[0, n:].all() and not mask[0, :n].any()
    assert (out[0, n:] == 0).all()  # padding comes out zeroed
