"""Vocabulary trimming (``trim_vocab``): the same text in and out, the same losses and hypotheses.

A trimmed model is the full model with its softmax restricted to the kept rows. To compare the
two on equal terms, the module fixture trains the tiny model trimmed (fairseq-train, 3 updates)
and builds from it a full-vocabulary checkpoint with the same weights for every kept row, whose
other rows can never win: their logits are at most -140 for every decoder state (the final
layer norm's bias points away from them, see ``_full_twin``), so exp() of them is 0 in fp32 and
the two softmaxes are equal up to the order of the sums. Tolerances: losses 1e-5 relative,
fairseq-generate's hypotheses identical (ids, pieces and detokenized text), its scores within
1e-3 (printed with 4 decimals).
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from comsl_fairseq.checkpoints.allowlist import load_weights_only
from comsl_fairseq.data.config import DataConfig
from comsl_fairseq.data.manifest import SkipLog, read_manifest, read_table, write_manifest
from comsl_fairseq.hf.standalone import WITHOUT_OUR_STACK
from comsl_fairseq.vocab.fingerprint import KEY as VOCABULARY_KEY
from comsl_fairseq.vocab.trim import TrimError, TrimmedDictionary, read_keep_file
from comsl_fairseq.vocab.vocabulary import TextTokenizer, build_dictionary
from tests.builders import copy_data, fairseq_generate, run, train_cmd

# The kept rows are scaled by this (in both models) so that a briefly trained model's output
# distribution is peaked and its hypotheses differ between utterances.
SHARPEN = 4.0
EMBEDDINGS = ("encoder.mbart.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")


KEEP_ROWS = 4  # the keep file comes from this many training rows, so that trimming removes rows


def trimmed_data(data_dir: Path, dest: Path) -> Path:
    """A copy of the data folder with a keep file from its first training rows (manifest
    ``keep_source``), named in config.yaml."""
    from comsl_fairseq.cli.trim_vocab import main

    data = copy_data(data_dir, dest)
    header, rows = read_table(data / "train.tsv")
    write_manifest(data / "keep_source.tsv", [[r[c] for c in header] for r in rows[:KEEP_ROWS]], header)
    assert main([str(data), "--splits", "keep_source"]) == 0
    cfg = yaml.safe_load((data / "config.yaml").read_text())
    cfg["trim_vocab"] = "vocab_keep.txt"
    (data / "config.yaml").write_text(yaml.safe_dump(cfg))
    return data


def texts(manifest: Path) -> list:
    rows = read_manifest(manifest, SkipLog(str(manifest)))
    return [t for r in rows for t in (r.src_text, r.tgt_text)]


def test_trimmed_ids_round_trip_to_the_same_text(data_dir, tmp_path):
    data = trimmed_data(data_dir, tmp_path / "data")
    cfg = DataConfig.load(data / "config.yaml")
    full, n_pretrained = build_dictionary(cfg.vocab_filename)
    trimmed, n_pretrained_trimmed = build_dictionary(cfg.vocab_filename, cfg.trim_vocab)
    assert isinstance(trimmed, TrimmedDictionary) and n_pretrained_trimmed == n_pretrained
    assert len(trimmed) < len(full) - 20 and trimmed.full_size == len(full)
    assert trimmed.symbols[:4] == full.symbols[:4]
    assert all(full[int(f)] == s for s, f in zip(trimmed.symbols, trimmed.full_ids, strict=True))
    assert [s for s in full.symbols if s.startswith("[") and s.endswith("]")] == \
        [s for s in trimmed.symbols if s.startswith("[") and s.endswith("]")]  # every tag kept
    tok_full, tok_trim = TextTokenizer(cfg.sentencepiece_model, full), TextTokenizer(cfg.sentencepiece_model, trimmed)
    for text in texts(data / "keep_source.tsv"):  # kept text: the same pieces, ids map back to the full ones
        ids = tok_trim.encode(text, "fr_XX")
        assert torch.equal(trimmed.to_full(ids), tok_full.encode(text, "fr_XX"))
        assert tok_trim.decode(ids[1:-1].tolist()) == text
    others = texts(data / "train.tsv")[2 * KEEP_ROWS:] + texts(data / "test.tsv")
    respelt = 0
    for text in others:  # other text in the same characters: spelt with kept pieces, never <unk>
        ids = tok_trim.encode(text, "de_DE")
        assert trimmed.unk() not in ids.tolist()
        assert tok_trim.decode(ids[1:-1].tolist()) == text
        respelt += not torch.equal(trimmed.to_full(ids), tok_full.encode(text, "de_DE"))
    assert respelt > 0  # some of it does use pieces that were trimmed away


def test_keep_file_errors_are_one_line(data_dir, tmp_path):
    cfg = DataConfig.load(data_dir / "config.yaml")
    (tmp_path / "bad.txt").write_text("▁the\nnot-a-piece-of-this-dict\n", encoding="utf-8")
    with pytest.raises(TrimError, match="not in the dictionary.*comsl-trim-vocab"):
        build_dictionary(cfg.vocab_filename, tmp_path / "bad.txt")
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(TrimError, match="lists no pieces"):
        read_keep_file(tmp_path / "empty.txt")


def _full_twin(state: dict, trimmed: TrimmedDictionary) -> tuple:
    """(full, trimmed) checkpoint states: the trimmed checkpoint changed so that its rows never
    meet a competitor, and its full-vocabulary twin with the same weights for the kept rows.

    Coordinate 0 of every kept embedding is set to 0, and the decoder's final layer norm gets
    gain 1 and bias 20 + sqrt(C - 1) there: a normalised vector n of C entries (mean 0, variance
    1) has |n_0| <= sqrt(C - 1), so every decoder state has h_0 >= 20. The other rows of the twin
    are -10 * e_0: their logits are -10 * h_0 <= -200, while the kept rows' logits do not depend
    on h_0 at all."""
    twin = {k: v for k, v in state.items()}
    model = dict(state["model"])
    emb = model[EMBEDDINGS[0]].clone() * SHARPEN
    emb[:, 0] = 0.0
    gain = model["decoder.layer_norm.weight"].clone()
    gain[0] = 1.0  # |n_0 * gain_0| <= sqrt(C - 1), bounded whatever training did to this gain
    bias = model["decoder.layer_norm.bias"].clone()
    bias[0] = 20.0 + (emb.size(1) - 1) ** 0.5
    model["decoder.layer_norm.weight"], model["decoder.layer_norm.bias"] = gain, bias
    full = torch.zeros(trimmed.full_size, emb.size(1))
    full[:, 0] = -10.0
    full[trimmed.full_ids] = emb
    trimmed_model = dict(model)
    for key in EMBEDDINGS:
        trimmed_model[key], model[key] = emb, full
    twin["model"] = model
    twin["task_state"] = {k: v for k, v in state["task_state"].items()}
    twin["task_state"][VOCABULARY_KEY] = {k: v for k, v in state["task_state"][VOCABULARY_KEY].items() if k != "trim"}
    twin["extra_state"] = {k: ({**v, VOCABULARY_KEY: twin["task_state"][VOCABULARY_KEY]}
                               if isinstance(v, dict) and VOCABULARY_KEY in v else v)
                           for k, v in state["extra_state"].items()}
    same = {**state, "model": trimmed_model}
    return twin, same


@pytest.fixture(scope="module")
def pair(data_dir, whisper_pt, mbart_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trim")
    data = trimmed_data(data_dir, tmp / "data")
    run(*train_cmd(data, whisper_pt, mbart_dir / "model.pt", tmp / "ckpt", "--disable-validation", "--lr", "3e-3",
                   "--max-update", "8"))
    state = load_weights_only(tmp / "ckpt" / "checkpoint_last.pt")
    trimmed, _ = build_dictionary(DataConfig.load(data / "config.yaml").vocab_filename, data / "vocab_keep.txt")
    assert state["model"][EMBEDDINGS[0]].size(0) == len(trimmed)
    assert state["task_state"][VOCABULARY_KEY]["trim"]["full_ids"] == trimmed.full_ids.tolist()  # the mapping
    full_state, trimmed_state = _full_twin(state, trimmed)
    torch.save(full_state, tmp / "full.pt")
    torch.save(trimmed_state, tmp / "trimmed.pt")
    return {"tmp": tmp, "data": data, "full": tmp / "full.pt", "trimmed": tmp / "trimmed.pt", "dict": trimmed}


def _load(ckpt, data):
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(ckpt)], arg_overrides={"data": str(data)})
    return models[0].eval(), task.build_criterion(cfg.criterion), task


TOKEN_KEYS = ("src_lang_tags", "src_text_tokens", "prev_output_tokens", "prev_transcript_tokens")


def full_ids_sample(sample: dict, trimmed: TrimmedDictionary) -> dict:
    """The same batch in the full dictionary's ids (every token of it is a kept one)."""
    out = {**sample, "net_input": dict(sample["net_input"])}
    for key in TOKEN_KEYS:
        out["net_input"][key] = trimmed.to_full(sample["net_input"][key])
    for key in ("target", "transcript"):
        out[key] = trimmed.to_full(sample[key])
    return out


@pytest.mark.subprocess
def test_trimmed_loss_equals_full_loss(pair, data_dir):
    """Every term of the criterion (ST, ASR, MT, the CML terms, DDM) on one training batch."""
    results = []
    for ckpt, data in ((pair["trimmed"], pair["data"]), (pair["full"], data_dir)):
        model, criterion, task = _load(ckpt, data)
        if not results:
            task.load_dataset("train")
            ds = task.dataset("train")
            sample = ds.collater([ds[i] for i in range(len(ds) - 6, len(ds))])  # rows outside the keep source
        else:
            sample = full_ids_sample(sample, pair["dict"])
        torch.manual_seed(3)  # the same CML masking
        loss, _, log = criterion(model, sample)
        results.append((loss.detach(), log))
    (l_trim, log_trim), (l_full, log_full) = results
    assert float(l_full) > 0
    assert abs(float(l_trim) - float(l_full)) <= 1e-5 * abs(float(l_full))
    for key in ("st", "asr", "mt", "stm_st", "stm_asr", "mtp"):
        a, b = float(log_trim[f"{key}_loss"]), float(log_full[f"{key}_loss"])
        assert abs(a - b) <= 1e-5 * abs(b) + 1e-6, key
        assert int(log_trim[f"{key}_correct"]) == int(log_full[f"{key}_correct"]), key


def _lines(log: str) -> dict:
    out = {}
    for line in log.splitlines():
        m = re.match(r"^([HDPT])-(\d+)\t(.*)$", line)
        if m:
            out[(m.group(1), int(m.group(2)))] = m.group(3).split("\t")
    return out


@pytest.mark.subprocess
def test_fairseq_generate_prints_the_same_hypotheses(pair, data_dir):
    args = ("--max-len-b", "10", "--min-len", "6")  # no empty hypotheses from a model trained for 3 updates
    full = _lines(fairseq_generate(data_dir, pair["full"], pair["tmp"] / "gen-full", *args))
    trim = _lines(fairseq_generate(pair["data"], pair["trimmed"], pair["tmp"] / "gen-trim", *args))
    assert full.keys() == trim.keys() and sum(k[0] == "D" for k in full) == 6
    # Every hypothesis has pieces; after 8 updates they are alike for every clip, but the per-position scores
    # compared below are log-softmaxes over all rows, so one misplaced row would change every one of them.
    assert all(len(v[-1].split()) >= 5 for k, v in full.items() if k[0] == "H")
    for key, fields in full.items():
        if key[0] in "TH" or key[0] == "D":
            assert trim[key][-1] == fields[-1], key  # the text (pieces for H, detokenized for D)
        if key[0] in "HD":
            assert abs(float(trim[key][0]) - float(fields[0])) <= 1e-3, key
        if key[0] == "P":
            assert all(abs(float(a) - float(b)) <= 1e-3 for a, b in
                       zip(trim[key][0].split(), fields[0].split(), strict=True)), key


# Run in a fresh interpreter on the Hugging Face folder; fairseq, comsl_fairseq and whisper cannot be imported.
HF_TRANSLATE = WITHOUT_OUR_STACK + r'''
import json, sys
import soundfile as sf, torch
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor
folder, clip, text = sys.argv[1], sys.argv[2], sys.argv[3]
model = AutoModelForSpeechSeq2Seq.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
wav, sr = sf.read(clip, dtype="float32")
inputs = processor([wav], sampling_rate=sr, src_lang=["fr"], return_tensors="pt")
with torch.no_grad():
    ids = model.generate(**inputs, num_beams=2, max_new_tokens=7, tgt_lang="en")
labels = processor([wav], sampling_rate=sr, src_lang=["fr"], text=[text], tgt_lang="en")["labels"]
print(json.dumps({"text": processor.batch_decode(ids)[0], "rows": model.config.vocab_size,
                  "labels": [int(i) for i in labels[0]]}))
'''


@pytest.mark.subprocess
def test_export_carries_the_keep_file_also_to_transformers(pair, tmp_path):
    from comsl_fairseq import SpeechTranslator
    from comsl_fairseq.cli.export import main as export_main

    assert export_main(["--path", str(pair["trimmed"]), "--out", str(tmp_path / "model"),
                        "--data", str(pair["data"])]) == 0
    config = yaml.safe_load((tmp_path / "model" / "config.yaml").read_text())
    assert read_keep_file(tmp_path / "model" / config["trim_vocab"]) == read_keep_file(pair["data"] / "vocab_keep.txt")
    clip = next((pair["data"] / "clips").glob("test_000.*"))
    texts = []
    for source, data in ((tmp_path / "model", None), (pair["trimmed"], pair["data"])):
        translator = SpeechTranslator.from_pretrained(source, device="cpu", data=data, beam=2, max_len_b=6)
        assert isinstance(translator.dictionary, TrimmedDictionary)
        texts.append(translator.translate(str(clip), "fr").text)
    assert texts[0] == texts[1]
    pytest.importorskip("transformers")
    from comsl_fairseq.hf.export import export_hf

    # the transformers folder: the kept rows, a tokenizer that segments with them only, the same text
    export_hf(pair["trimmed"], tmp_path / "hf", data=pair["data"])
    text = "the black cattle eats"  # "cattle" is no training word: segmented into kept pieces
    proc = subprocess.run([sys.executable, "-c", HF_TRANSLATE, str(tmp_path / "hf"), str(clip), text],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rows"] == len(translator.dictionary) < translator.dictionary.full_size
    assert out["text"] == texts[0]
    assert out["labels"] == translator.task.tokenizer.encode(text, "en_XX").tolist()
    assert translator.dictionary.unk() not in out["labels"][1:-1]


@pytest.mark.subprocess
def test_modality_gap_of_a_trimmed_model(pair, tmp_path):
    """The ASR -> MT cascade decodes from a copy of the data config in another folder: the keep
    file, named relative to the data folder, must still be found (it was not: DataConfigError)."""
    from comsl_fairseq.cli.modality_gap import main as modality_gap

    out = tmp_path / "gap"
    assert modality_gap(["--path", str(pair["trimmed"]), "--data", str(pair["data"]), "--subsets", "test",
                         "--out", str(out), "--beam", "2", "--samples", "20",
                         "--generate-args", "--cpu --max-len-b 6"]) == 0
    # (this tiny model's ASR outputs are empty, so the cascade decodes no row here: load its config directly)
    cascade = DataConfig.load(out / "cascade_data" / "config.yaml")
    assert cascade.trim_vocab == (pair["data"] / "vocab_keep.txt").resolve()
    assert set(json.loads((out / "modality_gap.json").read_text())) == {"fr", "de"}  # the test set's languages


def test_checkpoint_and_data_config_must_agree(pair, data_dir):
    """A trimmed checkpoint under the full vocabulary (no trim_vocab) is refused, naming the rows."""
    with pytest.raises(ValueError, match="trim_vocab"):
        _load(pair["trimmed"], data_dir)
