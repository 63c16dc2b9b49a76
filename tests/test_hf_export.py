"""Hugging Face export: the folder loads with transformers alone and decodes what fairseq decodes.

One module fixture trains the tiny model briefly, decodes the test split with
fairseq-generate (beam 5, greedy, ASR; its own main(), in this process), and exports the
checkpoint with ``comsl-export --format hf``. The folder is then copied elsewhere
and used by a subprocess that cannot import fairseq, comsl_fairseq or whisper: it computes
features, logits and hypotheses, which are compared here with our task's log-mel, our model's
logits and fairseq-generate's hypotheses, utterance by utterance.
"""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from comsl_fairseq.hf.standalone import WITHOUT_OUR_STACK
from tests.builders import fairseq_generate, run, self_contained_data, train_cmd

ROOT = Path(__file__).resolve().parents[1]
MAX_LEN_B = 12  # fairseq-generate --max-len-b; generate(max_new_tokens=MAX_LEN_B + 1)

pytestmark = pytest.mark.subprocess

# Run in a fresh interpreter on the copied folder; fairseq, comsl_fairseq and whisper cannot be imported.
HF_SCRIPT = WITHOUT_OUR_STACK + r'''
import json, sys
import numpy as np, torch
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor
folder, job = sys.argv[1], json.load(open(sys.argv[2]))
model = AutoModelForSpeechSeq2Seq.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
wavs = [np.load(p) for p in job["wavs"]]
langs = job["src_langs"]
out = {}
inputs = processor(wavs, sampling_rate=16000, src_lang=langs, return_tensors="pt")
np.save(job["features"], inputs["input_features"].numpy())
with torch.no_grad():
    logits = model(**inputs, decoder_input_ids=torch.tensor(job["decoder_input_ids"])).logits
    np.save(job["logits"], logits.numpy())
    def decode(batch, langs, **kw):
        ids = model.generate(**processor(batch, sampling_rate=16000, src_lang=langs, return_tensors="pt"),
                             max_new_tokens=job["max_new_tokens"], **kw)
        return processor.batch_decode(ids)
    nbest = model.generate(**inputs, tgt_lang="en", num_beams=5, num_return_sequences=5,
                           max_new_tokens=job["max_new_tokens"], output_scores=True, return_dict_in_generate=True)
    seqs, scores = nbest.sequences.tolist(), nbest.sequences_scores.tolist()
    out["nbest"] = [list(zip(seqs[5 * i:5 * i + 5], scores[5 * i:5 * i + 5])) for i in range(len(wavs))]
    out["beam5"] = decode(wavs, langs, num_beams=5, tgt_lang="en")
    out["beam5_one_by_one"] = [decode([w], [l], num_beams=5, tgt_lang="en")[0] for w, l in zip(wavs, langs)]
    out["greedy"] = decode(wavs, langs, num_beams=1, forced_bos_token_id=job["en_tag"])
    out["greedy_one_by_one"] = [decode([w], [l], num_beams=1, tgt_lang="en")[0] for w, l in zip(wavs, langs)]
    out["asr"] = decode(wavs, langs, num_beams=5, tgt_lang=langs)
out["labels"] = processor(wavs[:2], sampling_rate=16000, src_lang=langs[:2], text=job["texts"],
                          tgt_lang="en")["labels"].tolist()
out["tied"] = model.lm_head.weight is model.decoder.embed_tokens.weight
out["leaked"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps(out))
'''


def generate_texts(out: str, manifest: Path) -> dict:
    """{utterance id: hypothesis text} from fairseq-generate's D- lines."""
    ids = [line.split("\t")[0] for line in manifest.read_text().splitlines()[1:]]
    return {ids[int(m[1])]: m[2] for line in out.splitlines() if (m := re.match(r"^D-(\d+)\t\S+\t?(.*)$", line))}


@pytest.fixture(scope="module")
def hf(tmp_path_factory, data_dir, whisper_pt, mbart_dir):
    tmp = tmp_path_factory.mktemp("hf_export")
    data = self_contained_data(data_dir, mbart_dir, tmp / "data")
    # A higher learning rate than the command line of the README, so that </s> competes with other tokens and beam
    # search meets hypotheses of different lengths.
    run(*train_cmd(data, whisper_pt, mbart_dir / "model.pt", tmp / "ckpt", "--disable-validation",
                   "--max-update", "8", "--lr", "3e-3"))
    ckpt = tmp / "ckpt" / "checkpoint_last.pt"
    generated = {}
    for name, extra in {"beam5": (), "greedy": ("--beam", "1"), "asr": ("--decode-task", "asr")}.items():
        out = fairseq_generate(data, ckpt, tmp / f"generate-{name}", "--max-len-b", MAX_LEN_B, *extra)
        generated[name] = generate_texts(out, data / "test.tsv")
    from comsl_fairseq.cli.export import main as export_main

    assert export_main(["--path", str(ckpt), "--out", str(tmp / "hf"), "--format", "hf", "--score-log",
                        str(tmp / "generate-beam5" / "generate-test.txt")]) == 0
    elsewhere = Path(shutil.copytree(tmp / "hf", tmp / "elsewhere" / "comsl-tiny"))
    return {"folder": elsewhere, "ckpt": ckpt, "data": data, "generated": generated, "tmp": tmp}


@pytest.fixture(scope="module")
def ours(hf):
    """Our model and task (fairseq), and the test clips as our task reads them."""
    from comsl_fairseq import SpeechTranslator
    from comsl_fairseq.data.audio import read_audio

    t = SpeechTranslator.from_pretrained(hf["ckpt"], device="cpu", max_len_b=MAX_LEN_B)
    rows = [line.split("\t") for line in (hf["data"] / "test.tsv").read_text().splitlines()[1:]]
    wavs = [read_audio(r[1], hf["data"] / "clips")[0] for r in rows]
    return {"translator": t, "ids": [r[0] for r in rows], "langs": [r[5] for r in rows], "wavs": wavs}


@pytest.fixture(scope="module")
def transformers_run(hf, ours, tmp_path_factory):
    """What the copied folder computes in a process that cannot import fairseq or comsl_fairseq."""
    tmp = tmp_path_factory.mktemp("hf_run")
    d = ours["translator"].task.target_dictionary
    words = [d.index(p) for p in ours["translator"].task.tokenizer.sp.encode("the black cat", out_type=str)]
    job = {"wavs": [], "src_langs": ours["langs"], "features": str(tmp / "features.npy"),
           "logits": str(tmp / "logits.npy"), "max_new_tokens": MAX_LEN_B + 1, "en_tag": d.index("[en_XX]"),
           "decoder_input_ids": [[d.eos(), d.index("[en_XX]"), *words]] * len(ours["wavs"]),
           "texts": ["the black cat", "my friend eats a small red apple"]}
    for i, wav in enumerate(ours["wavs"]):
        np.save(tmp / f"{i}.npy", wav)
        job["wavs"].append(str(tmp / f"{i}.npy"))
    (tmp / "job.json").write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, "-c", HF_SCRIPT, str(hf["folder"]), str(tmp / "job.json")],
                          capture_output=True, text=True, cwd=tmp, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "job": job, "features": np.load(job["features"]), "logits": np.load(job["logits"])}


def test_folder_has_the_transformers_files(hf, ours):
    folder = hf["folder"]
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "preprocessor_config.json",
            "tokenizer_config.json", "vocab.json", "sentencepiece.bpe.model", "README.md", "modeling_comsl.py",
            "configuration_comsl.py", "feature_extraction_comsl.py", "tokenization_comsl.py",
            "processing_comsl.py"} <= names
    for code in folder.glob("*_comsl.py"):  # imports transformers, torch, numpy, sentencepiece only
        imports = re.findall(r"^\s*(?:from|import) (\S+)", code.read_text(), flags=re.M)
        assert {m.split(".")[0] for m in imports} <= {"transformers", "torch", "numpy", "sentencepiece", "json",
                                                      "os", "shutil", "copy", ""}, (code.name, imports)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSpeechSeq2Seq"] == "modeling_comsl.ComslForSpeechSeq2Seq"
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["num_beams"] == 5 and gen["decoder_start_token_id"] == 2 and gen["max_new_tokens"] == 201
    # the training dictionary, id for id: specials, dict.txt, the ML50 tags, <mask>, the added tags
    d = ours["translator"].task.target_dictionary
    vocab = json.loads((folder / "vocab.json").read_text())
    assert vocab == {d[i]: i for i in range(len(d))}
    assert vocab["[cy_GB]"] == len(d) - 2 and vocab["[ca_ES]"] == len(d) - 1 and vocab["<mask>"] == len(d) - 3
    assert config["language_tags"]["fr_XX"] == d.index("[fr_XX]")
    assert config["language_codes"]["zh-CN"] == "zh_CN" and config["language_codes"]["ca"] == "ca_ES"
    card = (folder / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["language"] == ["de", "en", "fr"] and front["pipeline_tag"] == "automatic-speech-recognition"
    assert "license" in front and front["library_name"] == "transformers"
    metric = front["model-index"][0]["results"][0]["metrics"][0]
    assert metric["type"] == "bleu" and isinstance(metric["value"], float)
    assert "trust_remote_code=True" in card and "training continues from the fairseq checkpoint" in card


def test_loads_without_fairseq(transformers_run):
    assert transformers_run["leaked"] == []
    assert transformers_run["tied"]


def test_labels_equal_our_tokenizer(ours, transformers_run):
    tok = ours["translator"].task.tokenizer
    expected = [tok.encode(text, "en_XX").tolist() for text in transformers_run["job"]["texts"]]
    width = max(map(len, expected))
    assert transformers_run["labels"] == [e + [-100] * (width - len(e)) for e in expected]


def test_features_equal_our_log_mel(ours, transformers_run):
    from comsl_fairseq.modules.whisper_encoder import log_mel

    audio, lengths = batch(ours["wavs"])
    mel, _ = log_mel(audio, lengths, ours["translator"].model.encoder.whisper.n_mels)
    diff = np.abs(transformers_run["features"] - mel.numpy()).max()
    print(f"HF export: max abs diff of log-mel features {diff:.2e}")
    assert transformers_run["features"].shape == tuple(mel.shape) and diff <= 1e-5


def test_logits_equal_ours(ours, transformers_run):
    t = ours["translator"]
    audio, lengths = batch(ours["wavs"])
    tags = torch.tensor([t.tag_index(lang) for lang in ours["langs"]])
    prev = torch.tensor(transformers_run["job"]["decoder_input_ids"])
    with torch.no_grad():
        ref, _ = t.model.decoder(prev, encoder_out=t.model.encoder(audio, lengths, tags))
    diff = np.abs(transformers_run["logits"] - ref.numpy()).max()
    print(f"HF export: max abs diff of logits {diff:.2e} (logits up to {ref.abs().max():.2f})")
    assert diff <= 1e-4


@pytest.mark.parametrize("mode", ["beam5", "greedy", "asr"])
def test_hypotheses_equal_fairseq_generate(hf, ours, transformers_run, mode):
    expected = hf["generated"][mode]
    got = dict(zip(ours["ids"], transformers_run[mode], strict=True))
    same = sum(got[u] == expected[u] for u in ours["ids"])
    print(f"HF export: {mode} hypotheses identical to fairseq-generate for {same}/{len(ours['ids'])} utterances")
    assert got == expected


def test_beam_lists_and_scores_equal_fairseq(ours, transformers_run):
    """The whole 5-best list of fairseq's SequenceGenerator (the one fairseq-generate runs), token
    for token and in order, with its length-normalised scores: hypotheses of different lengths,
    some ended by </s> and some by the length limit, ranked exactly as fairseq ranks them."""
    t = ours["translator"]
    audio, lengths = batch(ours["wavs"])
    tags = torch.tensor([t.tag_index(lang) for lang in ours["langs"]])
    sample = {"net_input": {"src_tokens": audio, "src_lengths": lengths, "src_lang_tags": tags}}
    prefix = torch.full((len(lengths), 1), t.tag_index("en"))
    with torch.no_grad():
        hypos = t.task.inference_step(t.generator(5), [t.model], sample, prefix_tokens=prefix)
    eos, lengths_seen = t.task.target_dictionary.eos(), set()
    for fs_hyps, hf_hyps in zip(hypos, transformers_run["nbest"], strict=True):
        hf_tokens = [seq[1:seq.index(eos, 1) + 1] for seq, _ in hf_hyps]  # drop the decoder start </s>
        assert hf_tokens == [h["tokens"].tolist() for h in fs_hyps]
        assert np.allclose([s for _, s in hf_hyps], [float(h["score"]) for h in fs_hyps], atol=1e-4)
        lengths_seen |= {len(tokens) for tokens in hf_tokens}
    assert len(lengths_seen) > 1, lengths_seen


def batch(wavs) -> tuple:
    """Zero-padded B x S waveforms and their lengths, as our task collates them."""
    lengths = torch.tensor([w.size for w in wavs])
    audio = torch.zeros(len(wavs), int(lengths.max()))
    for i, w in enumerate(wavs):
        audio[i, : w.size] = torch.from_numpy(w)
    return audio, lengths


def test_batch_equals_one_by_one(transformers_run):
    assert transformers_run["beam5"] == transformers_run["beam5_one_by_one"]
    assert transformers_run["greedy"] == transformers_run["greedy_one_by_one"]


def test_export_refuses_a_full_output_folder(hf):
    from comsl_fairseq.hf.export import ExportError, export_hf

    with pytest.raises(ExportError, match="not empty"):
        export_hf(hf["ckpt"], hf["folder"])


def test_weight_names_map_onto_transformers_modules():
    from comsl_fairseq.hf.export import hf_key

    assert hf_key("encoder.whisper.blocks.3.attn.key.weight") == "encoder.whisper.layers.3.self_attn.k_proj.weight"
    assert hf_key("encoder.whisper.blocks.0.mlp.2.bias") == "encoder.whisper.layers.0.fc2.bias"
    assert hf_key("encoder.whisper.positional_embedding") == "encoder.whisper.embed_positions.weight"
    assert hf_key("encoder.whisper.ln_post.weight") == "encoder.whisper.layer_norm.weight"
    assert hf_key("decoder.output_projection.weight") == "lm_head.weight"
    assert hf_key("decoder.layers.1.encoder_attn.q_proj.weight") == "decoder.layers.1.encoder_attn.q_proj.weight"
    assert hf_key("decoder.version") is None
