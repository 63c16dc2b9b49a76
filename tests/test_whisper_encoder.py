"""Our masked, variable-length Whisper encoder and log-mel front end vs openai-whisper."""
import numpy as np
import pytest
import torch
import whisper.audio
from whisper.model import AudioEncoder

from comsl_fairseq.checkpoints.pretrained import CheckpointError, load_whisper_checkpoint
from comsl_fairseq.modules.whisper_encoder import MaskedWhisperEncoder, log_mel
from tests.builders import synth_clip


def build_pair(path):
    dims, state = load_whisper_checkpoint(path)
    args = (dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer)
    ours, upstream = MaskedWhisperEncoder(*args), AudioEncoder(*args)
    ours.load_state_dict(state)
    upstream.load_state_dict(state)
    return ours.float().eval(), upstream.float().eval(), dims


@pytest.mark.parametrize("fixture", ["whisper_pt", "whisper128_pt"])
def test_parity_with_openai_whisper_on_30s(fixture, request):
    ours, upstream, dims = build_pair(request.getfixturevalue(fixture))
    rng = np.random.default_rng(0)
    audio = torch.from_numpy(synth_clip(30.0, rng))
    mel = whisper.audio.log_mel_spectrogram(audio, dims.n_mels).unsqueeze(0)  # 1 x n_mels x 3000
    with torch.no_grad():
        ref = upstream(mel)
        out, lengths, mask = ours(mel, torch.tensor([mel.size(-1)]))
    assert out.shape == ref.shape == (1, 1500, dims.n_audio_state)
    assert not mask.any() and lengths.tolist() == [1500]
    diff = (out - ref).abs().max().item()
    print(f"whisper parity ({fixture}): max abs diff {diff:.2e}")
    assert diff <= 1e-5


def test_log_mel_per_clip_equals_whisper_in_a_batch():
    rng = np.random.default_rng(1)
    clips = [synth_clip(s, rng) for s in (1.234, 3.5, 0.41)]
    lengths = torch.tensor([c.size for c in clips])
    batch = torch.zeros(3, int(lengths.max()))
    for i, c in enumerate(clips):
        batch[i, : c.size] = torch.from_numpy(c)
    for n_mels in (80, 128):
        mel, frames = log_mel(batch, lengths, n_mels)
        for i, c in enumerate(clips):
            ref = whisper.audio.log_mel_spectrogram(torch.from_numpy(c), n_mels)
            assert int(frames[i]) == ref.size(-1)
            assert torch.allclose(mel[i, :, : ref.size(-1)], ref, atol=1e-5)
            assert (mel[i, :, ref.size(-1):] == 0).all()


def test_encoder_output_does_not_depend_on_batch_padding(whisper_pt):
    ours, _, dims = build_pair(whisper_pt)
    rng = np.random.default_rng(2)
    short, long_ = synth_clip(1.03, rng), synth_clip(4.0, rng)
    batch = torch.zeros(2, long_.size)
    batch[0, : short.size], batch[1] = torch.from_numpy(short), torch.from_numpy(long_)
    with torch.no_grad():
        mel1, f1 = log_mel(batch[:1, : short.size], torch.tensor([short.size]), 80)
        alone, n, _ = ours(mel1, f1)
        mel2, f2 = log_mel(batch, torch.tensor([short.size, long_.size]), 80)
        both, n2, mask = ours(mel2, f2)
    k = int(n[0])
    assert int(n2[0]) == k and mask[0, k:].all()
    diff = (both[0, :k] - alone[0]).abs().max().item()
    print(f"whisper batch invariance: max abs diff {diff:.2e}")
    assert diff <= 1e-5


def test_rejects_non_whisper_file(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"model": {}}, bad)
    with pytest.raises(CheckpointError, match="not an openai-whisper checkpoint"):
        load_whisper_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_whisper_checkpoint(tmp_path / "missing.pt")
