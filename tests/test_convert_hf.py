"""comsl-convert-hf-mbart50: a converted Hugging Face MBart gives transformers' logits.

comsl-convert-hf-mbart50: a tiny random Hugging Face MBart, converted and loaded by
our model, gives the same logits as transformers on the same input.
"""
import shutil
import subprocess

import pytest
import torch
import yaml
from fairseq.data import data_utils

from tests.builders import BIN, build_task_and_model

transformers = pytest.importorskip("transformers")  # test-only dependency (requirements-dev.txt)


@pytest.mark.subprocess
def test_converted_hf_mbart_matches_transformers(mbart_dir, data_dir, tmp_path):
    import sentencepiece as spm

    n_pieces = spm.SentencePieceProcessor(model_file=str(mbart_dir / "sentence.bpe.model")).get_piece_size()
    config = transformers.MBartConfig(
        vocab_size=n_pieces + 1 + 52 + 1, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=1024,
        scale_embedding=True, activation_function="gelu", pad_token_id=1, bos_token_id=0, eos_token_id=2,
        decoder_start_token_id=2, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    torch.manual_seed(0)
    hf = transformers.MBartForConditionalGeneration(config).eval()
    hf_dir = tmp_path / "hf"
    hf.save_pretrained(hf_dir)
    shutil.copy(mbart_dir / "sentence.bpe.model", hf_dir / "sentencepiece.bpe.model")

    out = tmp_path / "converted"
    proc = subprocess.run([str(BIN / "comsl-convert-hf-mbart50"), "--hf-dir", str(hf_dir),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in out.iterdir()} >= {"model.pt", "dict.txt", "sentence.bpe.model"}

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    cfg = yaml.safe_load((data / "config.yaml").read_text())
    cfg["vocab_filename"] = str(out / "dict.txt")
    cfg["bpe_tokenizer"]["sentencepiece_model"] = str(out / "sentence.bpe.model")
    (data / "config.yaml").write_text(yaml.safe_dump(cfg))
    _, task, model = build_task_and_model(data, "--mbart-checkpoint", str(out / "model.pt"))
    model.eval()

    tok, d = task.tokenizer, task.target_dictionary
    src = [tok.encode("le chat noir mange une pomme rouge", "fr_XX"), tok.encode("der hund", "de_DE")]
    tgt = [tok.encode("the black cat eats a red apple", "en_XX"), tok.encode("the dog", "en_XX")]
    src_tokens = data_utils.collate_tokens(src, d.pad())
    prev = data_utils.collate_tokens(tgt, d.pad(), d.eos(), move_eos_to_beginning=True)
    with torch.no_grad():
        ours = model(None, None, None, prev, src_text_tokens=src_tokens, branches=("mt",))["mt"][0]
        ref = hf(input_ids=src_tokens, attention_mask=src_tokens.ne(d.pad()).long(), decoder_input_ids=prev).logits
    keep = prev.ne(d.pad())
    diff = (ours[..., : ref.size(-1)] - ref)[keep].abs().max().item()
    print(f"HF converter parity: max abs diff of logits {diff:.2e}")
    assert ours.size(-1) == ref.size(-1) + 2  # + [cy_GB] [ca_ES]
    assert diff <= 1e-4
