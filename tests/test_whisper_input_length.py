"""The Whisper input-length study end to end on a tiny random Whisper.

examples/covost2/whisper_input_length.py end to end on a tiny random Whisper
checkpoint in the openai-whisper format and a few synthetic clips: cached features are the
model's own speech path, the padded mode has its fixed frame count, training on the cache
lowers the loss, and the tables are written.
"""
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wil():
    from examples.covost2 import whisper_input_length

    return whisper_input_length


def test_mode_flags(wil):
    assert wil.mode_flags("own") == []
    assert wil.mode_flags("own+1") == ["--whisper-trailing-silence", "1.0"]
    assert wil.mode_flags("11") == ["--whisper-pad-seconds", "11.0"]
    with pytest.raises(SystemExit, match="'eleven'"):
        wil.mode_flags("eleven")


def test_cached_features_are_the_models_speech_path_and_training_learns(wil, data_dir, whisper_pt, tmp_path):
    torch.set_num_threads(1)
    task, model, _ = wil.build(data_dir, whisper_pt, "11")
    task.load_dataset("train")
    ds = task.datasets["train"]
    rows = wil.select_rows(ds, ["fr"], 4, 1)
    assert len(rows) == 4 and all(ds.rows[i].src_tag == "fr_XX" for i in rows)
    assert rows == wil.select_rows(ds, ["fr"], 4, 1)  # deterministic
    feats = wil.cached_features(tmp_path / "11_train.pt", model, ds, rows, batch_size=3)
    assert [h.shape[0] for h in feats["h"]] == [550] * 4  # 11 s = 1100 mel frames -> 550 after conv2
    assert feats["h"][0].dtype == torch.float16

    # the cache equals the model's own path over one batch of the same clips, up to fp16 rounding
    batch = ds.collater([ds[i] for i in rows])
    net = batch["net_input"]
    with torch.no_grad():
        x_ref, mask_ref = model.encoder.speech_embeddings(net["src_tokens"], net["src_lengths"], net["src_lang_tags"])
        h = torch.stack([f.float() for f in feats["h"]])
        x, mask = model.encoder.features_to_embeddings(h, torch.full((4,), 550), feats["tags"])
    order = batch["id"].tolist()  # the collater keeps the order given
    assert order == rows
    torch.testing.assert_close(x, x_ref, atol=2e-2, rtol=2e-2)
    assert torch.equal(mask, mask_ref)
    assert wil.cached_features(tmp_path / "11_train.pt", model, ds, rows, 3)["ids"] == feats["ids"]  # reused

    losses = wil.train(model, feats, updates=20, batch_size=4, lr=3e-3, seed=1, ctc_weight=1.0,
                       special_ids=wil.special_ids(task), log_every=10)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    scores = wil.score(task, wil.greedy_decode(model, feats, batch_size=3, max_len=8), feats)
    assert 0 <= scores["exact_match"] <= 100 and "tok:13a" in scores["bleu_signature"]


def test_whisper_greedy_matches_uncached_decoding(wil):
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(0)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=1,
                           n_vocab=51865, n_text_ctx=64, n_text_state=32, n_text_head=2, n_text_layer=1)
    model = Whisper(dims).eval()
    with torch.no_grad():
        model.decoder.positional_embedding.normal_(0, 0.02)  # openai-whisper leaves it torch.empty
    assert asdict(model.dims) == asdict(dims)
    features = torch.randn(1, 40, 32)  # 0.8 s of encoder frames: shorter than whisper.decode accepts
    got = wil.whisper_greedy(model, features, max_tokens=6)
    tok = wil.whisper_tokenizer(model)
    tokens = list(tok.sot_sequence_including_notimestamps)
    expected = []
    with torch.no_grad():
        for _ in range(6):
            logits = model.decoder(torch.tensor([tokens]), features)[0, -1]
            logits[tok.eot + 1:] = float("-inf")
            nxt = int(logits.argmax())
            if nxt == tok.eot:
                break
            expected.append(nxt)
            tokens.append(nxt)
    assert got == expected and len(got) > 0


def test_main_writes_the_table(wil, data_dir, whisper_pt, tmp_path):
    out = tmp_path / "out"
    result = wil.main(["--whisper-checkpoint", str(whisper_pt), "--data", str(data_dir), "--out", str(out),
                       "--langs", "fr", "--train-numbers", "3", "--voices", "1", "--test-numbers", "2",
                       "--test-voices", "1", "--modes", "own", "own+0.5", "--seeds", "1", "2", "--updates", "3",
                       "--batch-size", "2", "--no-wer"])
    saved = json.loads((out / "results.json").read_text())
    assert [m["mode"] for m in saved["modes"]] == ["own", "own+0.5"] == [m["mode"] for m in result["modes"]]
    own, silence = saved["modes"]
    assert len(own["runs"]) == 2 and own["n_train"] == 3 and own["n_test"] == 2
    assert silence["frames_per_clip"] == pytest.approx(own["frames_per_clip"] + 25, abs=1)  # 0.5 s = 25 frames
    table = (out / "results.md").read_text()
    assert table.count("\n") == 4 and "`--whisper-trailing-silence 0.5`" in table
