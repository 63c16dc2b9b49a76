"""Using a trained model: export, the Python API, long recordings, subtitles, comsl-translate.

One module fixture trains the tiny model for 3 updates on a private copy of the test data
(dictionary and SentencePiece model inside it), decodes the test split with
fairseq-generate (its own main(), in this process), exports the model with
comsl-export, and then deletes the data folder: everything after that loads
from the exported folder alone. The command is run in this process too (each new
interpreter costs the fairseq import), except once to check the console entry and the
lazy import.
"""
import json
import math
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from tests import speech_synth
from tests.builders import fairseq_generate, run, self_contained_data, sentences, train_cmd

ROOT = Path(__file__).resolve().parents[1]


def cli(capsys, model, *args) -> tuple:
    """(exit status, stdout, stderr) of ``comsl-translate --path MODEL ARGS...`` run in this process."""
    from comsl_fairseq.cli.translate import main

    message = ""
    try:
        status = main(["--path", str(model), *map(str, args)])
    except SystemExit as e:
        status, message = (e.code, "") if isinstance(e.code, int) else (1, str(e.code))
    out, err = capsys.readouterr()
    return status, out, err + message




def generate_hypotheses(out: str, manifest: Path) -> dict:
    """{utterance id: (text, base-2 score)} from fairseq-generate's D- lines."""
    ids = [line.split("\t")[0] for line in manifest.read_text().splitlines()[1:]]
    hyps = {}
    for line in out.splitlines():
        if m := re.match(r"^D-(\d+)\t(\S+)\t?(.*)$", line):
            hyps[ids[int(m[1])]] = (m[3], float(m[2]))
    return hyps


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_dir, whisper_pt, mbart_dir):
    tmp = tmp_path_factory.mktemp("inference")
    data = self_contained_data(data_dir, mbart_dir, tmp / "data")
    run(*train_cmd(data, whisper_pt, mbart_dir / "model.pt", tmp / "ckpt", "--disable-validation"))
    ckpt = tmp / "ckpt" / "checkpoint_last.pt"
    generated = {}
    for task in ("st", "asr"):
        out = fairseq_generate(data, ckpt, tmp / f"generate-{task}", "--decode-task", task, "--max-len-b", "12")
        generated[task] = generate_hypotheses(out, data / "test.tsv")
    from comsl_fairseq.cli import export

    assert export.main(["--path", str(ckpt), "--out", str(tmp / "model"), "--score-log",
                                  str(tmp / "generate-st" / "generate-test.txt")]) == 0
    clips = Path(shutil.copytree(data / "clips", tmp / "clips"))
    manifest = (data / "test.tsv").read_text()
    shutil.rmtree(data)  # from here on only the exported folder exists
    return {"model": tmp / "model", "ckpt": ckpt, "clips": clips, "generated": generated,
            "test_rows": [line.split("\t") for line in manifest.splitlines()[1:]], "tmp": tmp}


@pytest.fixture(scope="module")
def translator(exported):
    from comsl_fairseq import SpeechTranslator

    # The synthetic clips are not all speech to Silero VAD: decode them all, as fairseq-generate does.
    return SpeechTranslator.from_pretrained(exported["model"], device="cpu", max_len_b=12, require_speech=False)


def test_export_folder_is_self_contained(exported):
    model = exported["model"]
    assert {p.name for p in model.iterdir()} == {"model.pt", "dict.txt", "sentence.bpe.model", "config.yaml",
                                                 "model_info.json", "README.md"}
    state = torch.load(model / "model.pt", map_location="cpu")  # weights_only=True
    original = torch.load(exported["ckpt"], map_location="cpu")
    assert state["last_optimizer_state"] is None and original["last_optimizer_state"] is not None
    assert state["cfg"] == original["cfg"]  # carried over unchanged
    assert all(torch.equal(state["model"][k], v) for k, v in original["model"].items())
    assert yaml.safe_load((model / "config.yaml").read_text())["vocab_filename"] == "dict.txt"
    info = json.loads((model / "model_info.json").read_text())
    assert info["arch"] == "whisper_mbart_composite_tiny" and info["num_updates"] == 3
    assert info["training_data"]["pairs"] == {"de-en": 8, "fr-en": 8}
    n_params = sum(p.numel() for p in {id(p): p for p in _model_params(exported)}.values())
    assert info["parameters"]["total"] == n_params
    card = (model / "README.md").read_text()
    assert "whisper_mbart_composite_tiny" in card and "de-en" in card
    assert re.search(r"\| test \| 5 \| 6 \| \d+(\.\d+)? \| `nrefs:1\\\|case:mixed\\\|eff:no\\\|tok:13a", card), card


def _model_params(exported):
    from fairseq import checkpoint_utils

    models, _, _ = checkpoint_utils.load_model_ensemble_and_task(
        [str(exported["model"] / "model.pt")], arg_overrides={"data": str(exported["model"])})
    return list(models[0].parameters())


def test_half_precision_export_is_smaller_and_loads(exported, tmp_path):
    from comsl_fairseq import SpeechTranslator
    from comsl_fairseq.inference.export import export_model

    out = export_model(exported["ckpt"], tmp_path / "fp16", dtype="fp16", data=exported["model"])
    full, half = (exported["model"] / "model.pt").stat().st_size, (out / "model.pt").stat().st_size
    assert 0.4 < half / full < 0.6  # tied embeddings are still stored once
    t = SpeechTranslator.from_pretrained(out, device="cpu", max_len_b=12, require_speech=False)
    assert next(t.model.parameters()).dtype == torch.float32
    assert isinstance(t.translate(next(exported["clips"].glob("test_*")), src_lang="fr").text, str)


def test_export_refuses_a_missing_data_folder_and_a_full_output(exported, tmp_path):
    from comsl_fairseq.inference.export import ExportError, export_model

    with pytest.raises(ExportError, match="pass --data"):
        export_model(exported["ckpt"], tmp_path / "out")  # the data folder was deleted
    with pytest.raises(ExportError, match="not empty"):
        export_model(exported["ckpt"], exported["model"], data=exported["model"])


@pytest.mark.parametrize("task", ["st", "asr"])
def test_api_hypotheses_equal_fairseq_generate(exported, translator, task):
    rows = exported["test_rows"]
    results = translator.translate_batch([exported["clips"] / r[1] for r in rows if r[5] == "fr"],
                                         src_lang="fr", task=task)
    results += translator.translate_batch([exported["clips"] / r[1] for r in rows if r[5] == "de"],
                                          src_lang="de", task=task)
    ids = [r[0] for r in rows if r[5] == "fr"] + [r[0] for r in rows if r[5] == "de"]
    expected = exported["generated"][task]
    assert len(expected) == len(rows)
    for uid, result in zip(ids, results, strict=True):
        text, score = expected[uid]
        assert result.text == text, uid
        assert result.score / math.log(2) == pytest.approx(score, abs=1e-3)
        assert len(result.segments) == 1 and result.segments[0].start == 0.0
        assert "[" not in " ".join(result.tokens)  # no language tags
    assert any(results[i].text for i in range(len(results)))


def test_api_accepts_arrays_and_nbest(exported, translator):
    path = sorted(exported["clips"].glob("test_*.wav"))[0]
    wav, sr = sf.read(path, dtype="float32", always_2d=True)
    from_file = translator.translate(path, src_lang="fr")
    from_array = translator.translate(wav.mean(axis=1), src_lang="fr", sample_rate=sr)
    assert from_array.text == from_file.text
    nbest = translator.translate(path, src_lang="fr", beam=4, nbest=3)
    assert len(nbest.segments[0].hypotheses) == 3
    scores = [h.score for h in nbest.segments[0].hypotheses]
    assert scores == sorted(scores, reverse=True)
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        translator.translate(path, src_lang="xx")


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory):
    """Ten espeak-ng sentences with 1.5-3.5 s of silence between them (~40 s, over the window)."""
    return speech_synth.long_recording(tmp_path_factory.mktemp("long") / "long.wav", n=10, seed=3, gap=(1.5, 3.5))


def test_long_recording_segments_every_sentence_once_in_order(translator, long_recording):
    path, placed = long_recording
    result = translator.translate(path, src_lang="fr")
    assert result.audio_seconds > translator.max_seconds
    assert len(result.segments) == len(placed)
    for seg, (start, end) in zip(result.segments, placed, strict=True):
        assert abs(seg.start - start) < 0.5 and abs(seg.end - end) < 0.5, (seg, start, end)
        assert seg.end - seg.start <= translator.max_seconds


def test_segments_never_exceed_the_limit(long_recording):
    from comsl_fairseq.data.audio import read_audio
    from comsl_fairseq.inference.segment import SegmenterConfig, cut_at_quietest, speech_segments

    wav = read_audio(str(long_recording[0]), Path("/"))[0]
    segments = speech_segments(wav, SegmenterConfig(max_seconds=2.0, min_silence_ms=2000))
    assert segments and all(e - s <= 2.0 * 16000 for s, e in segments)
    assert all(a[1] <= b[0] for a, b in zip(segments, segments[1:], strict=False))
    loudness = np.ones(20, np.float32)
    loudness[13] = 0.0  # the quietest window in the second half of the first 8 windows is not there
    loudness[6] = 0.1
    assert cut_at_quietest(0, 20 * 512, 8 * 512, loudness) == [(0, 6 * 512 + 256), (6 * 512 + 256, 13 * 512 + 256),
                                                              (13 * 512 + 256, 20 * 512)]
    assert cut_at_quietest(5, 8, 4 * 512, loudness) == [(5, 8)]
    assert speech_segments(np.zeros(16000 * 5, np.float32)) == []


def test_first_pass_grows_by_eight_bytes_per_window():
    """What the first pass keeps per 32 ms (a float32 speech probability and level) is all
    that grows with the recording: 40 s more audio, traced by tracemalloc, costs under 12
    bytes a window (Python float lists took 64)."""
    import tracemalloc

    from comsl_fairseq.inference.segment import WINDOW, array_blocks, map_speech

    wav = (0.01 * np.random.default_rng(0).standard_normal(50 * 16000)).astype(np.float32)
    map_speech(array_blocks(wav[:16000]))  # the VAD model is loaded once, outside the measurement

    def traced_peak(seconds: int) -> int:
        tracemalloc.start()
        try:
            map_speech(array_blocks(wav[: seconds * 16000], seconds=5.0))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    extra_windows = 40 * 16000 // WINDOW
    assert traced_peak(50) - traced_peak(10) < 12 * extra_windows


def test_cpu_batches_count_padding():
    """A batch costs B x its longest piece: one long piece does not take seven short ones along
    under a cap meant for 30 s of audio; without a cap, batch_size alone decides."""
    from comsl_fairseq.inference.translator import _Piece, length_batches

    def pieces(*seconds):
        return [_Piece(i, 0, 0, np.zeros(int(s * 16000), np.float32), 0, 0) for i, s in enumerate(seconds)]

    batches = length_batches(pieces(2, 16, 2, 2, 2, 2, 2, 2, 35), batch_size=8, max_padded_samples=30 * 16000)
    sizes = [[p.wav.size // 16000 for p in b] for b in batches]
    assert sizes == [[35], [16], [2] * 7]  # 16 + seven 2 s pieces would be 8 x 16 s padded
    assert all(len(b) * b[0].wav.size <= 30 * 16000 for b in batches[1:])
    assert [len(b) for b in length_batches(pieces(2, 16, 2, 2, 2, 2, 2, 2, 35), batch_size=4)] == [4, 4, 1]


def test_subtitle_writers():
    from comsl_fairseq.inference.subtitles import WRITERS, timestamp
    from comsl_fairseq.inference.translator import Hypothesis, Segment

    segs = [Segment(0.5, 2.25, [Hypothesis("hello there", ["▁hello", "▁there"], -0.5)]),
            Segment(3661.0, 3662.0015, [Hypothesis("", [], -1.0)]),
            Segment(3700.1, 3702.0, [Hypothesis("bye", ["▁bye"], -0.25)])]
    assert timestamp(3661.0015, ",") == "01:01:01,002"
    assert WRITERS["srt"]("x", segs) == ("1\n00:00:00,500 --> 00:00:02,250\nhello there\n\n"
                                         "2\n01:01:40,100 --> 01:01:42,000\nbye\n\n")
    assert WRITERS["vtt"]("x", segs) == ("WEBVTT\n\n00:00:00.500 --> 00:00:02.250\nhello there\n\n"
                                         "01:01:40.100 --> 01:01:42.000\nbye\n\n")
    assert WRITERS["txt"]("x", segs) == "hello there\n\nbye\n"
    records = [json.loads(line) for line in WRITERS["jsonl"]("x.wav", segs, task="st").splitlines()]
    assert [r["segment"] for r in records] == [0, 1, 2] and records[2] == {
        "source": "x.wav", "segment": 2, "start": 3700.1, "end": 3702.0, "text": "bye", "score": -0.25,
        "task": "st"}


@pytest.fixture(scope="module")
def bad_folder(exported, tmp_path_factory):
    folder = tmp_path_factory.mktemp("in")
    shutil.copytree(exported["clips"], folder, dirs_exist_ok=True)
    (folder / "broken.wav").write_bytes(b"RIFF not really a wav")
    (folder / "empty.flac").write_bytes(b"")
    return folder


def test_console_entry_skips_bad_files_and_keeps_the_user_dir_import_light(exported, bad_folder, tmp_path):
    """In a fresh interpreter: ``import comsl_fairseq`` loads no inference code (the API is a
    lazy attribute), then comsl-translate's ``main`` runs over a folder."""
    code = ("import sys, comsl_fairseq; assert 'comsl_fairseq.inference.translator' not in sys.modules; "
            "assert 'silero_vad' not in sys.modules; from comsl_fairseq import SpeechTranslator; "
            "assert SpeechTranslator.__module__ == 'comsl_fairseq.inference.translator'; "
            "from comsl_fairseq.cli.translate import main; sys.exit(main())")
    proc = subprocess.run([sys.executable, "-c", code, "--path", str(exported["model"]), str(bad_folder),
                           str(tmp_path / "missing.wav"), "--src-lang", "fr", "--max-len-b", "8", "--format",
                           "jsonl", "--no-progress", "--keep-no-speech"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    n_good = len(list(exported["clips"].iterdir()))
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == n_good and {r["segment"] for r in records} == {0}
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 3, proc.stderr
    assert any("broken.wav: cannot decode audio" in line for line in skipped)
    assert any("empty.flac: cannot decode audio" in line for line in skipped)
    assert any("missing.wav: no such file or folder" in line for line in skipped)
    assert f"translated {n_good} of {n_good + 3} input(s); 3 skipped" in proc.stderr
    assert re.search(r"start-up: model load \d+\.\d+ s, imports \d+\.\d+ s", proc.stderr)
    assert re.search(r"real-time factor: \d+\.\d+ \(decoding .*model load and file reading excluded"
                     r".*utterances/s", proc.stderr)


def test_cli_exits_non_zero_only_when_nothing_was_translated(exported, bad_folder, capsys):
    status, _, err = cli(capsys, exported["model"], bad_folder / "broken.wav", bad_folder / "empty.flac",
                         "--src-lang", "fr", "--no-progress")
    assert status == 1 and "translated 0 of 2 input(s); 2 skipped" in err
    status, out, err = cli(capsys, exported["model"], bad_folder / "broken.wav", sorted(bad_folder.glob("t*"))[0],
                           "--src-lang", "fr", "--max-len-b", "4", "--no-progress", "--keep-no-speech")
    assert status == 0 and len(out.splitlines()) == 1 and "translated 1 of 2 input(s); 1 skipped" in err


def test_cli_srt_of_a_long_recording(exported, long_recording, tmp_path, capsys):
    path, placed = long_recording
    status, _, err = cli(capsys, exported["model"], path, "--src-lang", "fr", "--max-len-b", "6", "--format", "srt",
                         "--out", tmp_path / "subs", "--no-progress")
    assert status == 0, err[-3000:]
    assert re.search(r"real-time factor: \d+\.\d+ \(segmentation \d+\.\d+ s \+ decoding", err), err
    srt = (tmp_path / "subs" / "long.srt").read_text()
    cues = re.findall(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n", srt)
    assert [int(c[0]) for c in cues] == list(range(1, len(placed) + 1)), srt
    for c, (start, end) in zip(cues, placed, strict=True):
        t = [int(x) for x in c[1:]]
        assert abs(t[0] * 3600 + t[1] * 60 + t[2] + t[3] / 1000 - start) < 0.5
        assert abs(t[4] * 3600 + t[5] * 60 + t[6] + t[7] / 1000 - end) < 0.5
    status, _, err = cli(capsys, exported["model"], path, "--src-lang", "fr", "--segment", "never", "--no-progress")
    assert status == 1 and "longer than the model's 30 s window" in err


def test_cli_manifest_with_row_languages_and_asr(exported, tmp_path, capsys):
    rows = exported["test_rows"]
    (tmp_path / "clips").symlink_to(exported["clips"])
    (tmp_path / "config.yaml").write_text("audio_root: clips\n")
    header = "id\taudio\tn_frames\tsrc_text\ttgt_text\tsrc_lang\ttgt_lang\n"
    (tmp_path / "test.tsv").write_text(header + "".join("\t".join(r[:7]) + "\n" for r in rows))
    status, out, err = cli(capsys, exported["model"], tmp_path / "test.tsv", "--task", "asr", "--max-len-b", "12",
                           "--no-progress", "--keep-no-speech")
    assert status == 0, err[-3000:]
    got = dict(line.split("\t", 1) for line in out.splitlines())
    expected = exported["generated"]["asr"]
    assert got == {f"{tmp_path / 'test.tsv'}:{uid}": expected[uid][0] for uid in expected}


def test_checkpoint_whose_data_moved_says_to_pass_data(exported):
    from comsl_fairseq.data.config import DataConfigNotFound
    from comsl_fairseq.inference.translator import SpeechTranslator

    with pytest.raises(DataConfigNotFound, match="pass --data") as info:  # the fixture removed the data folder
        SpeechTranslator.from_pretrained(exported["ckpt"])
    assert str(exported["ckpt"]) in str(info.value) and "--config-yaml" not in str(info.value)


def test_damaged_model_info_is_an_error_not_a_missing_language_list(exported, tmp_path):
    from comsl_fairseq.inference.translator import recorded_pairs

    folder = Path(shutil.copytree(exported["model"], tmp_path / "model"))
    assert recorded_pairs(folder)  # the export records its training pairs
    info = folder / "model_info.json"
    info.write_text(info.read_text()[:200])
    with pytest.raises(ValueError, match="is damaged") as e:
        recorded_pairs(folder)
    assert str(info) in str(e.value)
    info.unlink()
    assert recorded_pairs(folder) is None  # absent (an older export): no pairs recorded


def test_integer_pcm_arrays_are_scaled_like_the_file(translator, exported):
    import numpy as np
    import soundfile as sf

    clip = next(exported["clips"].glob("*.wav"))
    pcm, rate = sf.read(clip, dtype="int16")
    assert rate == 16000
    as_float = translator.load_audio(pcm.astype(np.float32) / 32768)[1]
    assert np.array_equal(translator.load_audio(pcm)[1], as_float)  # int16 samples, not values up to 32767
    assert np.array_equal(translator.load_audio(pcm.astype(np.int32) * 65536)[1], as_float)


def test_devices_this_machine_lacks_are_named():
    import torch

    from comsl_fairseq.inference.translator import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="'bogus' is not a device name"):
        resolve_device("bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU; use cpu"):
            resolve_device("cuda")


def test_sources_tsv_keeps_three_fields_for_any_file_name():
    from comsl_fairseq.cli.translate import tsv_field

    for name in ("plain.wav", "tab\there.wav", "new\nline.wav", "back\\slash\r.wav"):
        field = tsv_field(name)
        assert "\t" not in field and "\n" not in field and "\r" not in field
        decoded = field.replace("\\\\", "\0").replace("\\t", "\t").replace("\\n", "\n").replace("\\r", "\r")
        assert decoded.replace("\0", "\\") == name


def test_cli_refuses_bad_usage(exported, tmp_path, capsys):
    status, _, err = cli(capsys, exported["model"], exported["clips"], "--src-lang", "xx")
    assert status != 0 and "unknown language code 'xx'" in err
    status, _, err = cli(capsys, exported["model"], exported["clips"], "--src-lang", "fr", "--format", "srt")
    assert status != 0 and "needs --out" in err
    status, _, err = cli(capsys, tmp_path / "nothing", exported["clips"], "--src-lang", "fr")
    assert status != 0 and "not found" in err
    status, _, err = cli(capsys, exported["model"], exported["clips"], "--src-lang", "fr", "--segment", "always",
                         "--max-segment-seconds", "0.05")  # pieces of a word: invented text
    assert status == 2 and "--max-segment-seconds must be in [1," in err


def test_fixed_padding_model_segments_at_its_padding_length(translator, long_recording):
    """A model trained with --whisper-pad-seconds S cuts longer clips: S is its window."""
    from comsl_fairseq.inference.translator import SpeechTranslator

    encoder = translator.model.encoder
    encoder.pad_seconds = 11.0
    try:
        t = SpeechTranslator(translator.model, translator.task, translator.cfg, translator.device, max_len_b=4)
        assert t.max_seconds == 11.0 and t.segmenter.max_seconds == 11.0
        assert all(s.end - s.start <= 11.0 for s in t.translate(long_recording[0], src_lang="fr").segments)
    finally:
        encoder.pad_seconds = 0.0


# ---------------------------------------------------------------- bad input on the user side
def _write_manifest(folder: Path, clips: Path, rows: list) -> Path:
    """A manifest in ``folder`` whose audio_root is ``clips``; ``rows``: lines after the header
    (str, or bytes for lines that are not UTF-8)."""
    (folder / "config.yaml").write_text(f"audio_root: {clips}\n")
    header = b"id\taudio\tsrc_lang\ttgt_lang\n"
    (folder / "m.tsv").write_bytes(header + b"".join((r if isinstance(r, bytes) else r.encode()) + b"\n"
                                                     for r in rows))
    return folder / "m.tsv"


def test_output_names_stay_inside_their_folder(exported, tmp_path, capsys):
    from comsl_fairseq.inference.inputs import safe_stem

    assert safe_stem("../x") == "_x" and safe_stem("/etc/passwd") == "_etc_passwd" and safe_stem("..") is None
    assert safe_stem("a\\b:c") == "a_b_c" and safe_stem(".hidden") == "hidden" and len(safe_stem("é" * 300)) == 100
    clip = sorted(exported["clips"].glob("test_*.wav"))[0].name
    victim = tmp_path / "victim.jsonl"
    victim.write_text("the user's file\n")
    ids = ["../x", str(tmp_path / "victim"), "a/b", "..", "same", "SAME"]
    (tmp_path / "in").mkdir()
    manifest = _write_manifest(tmp_path / "in", exported["clips"], [f"{i}\t{clip}\tfr\ten" for i in ids])
    out = tmp_path / "out"
    status, _, err = cli(capsys, exported["model"], manifest, "--out", out, "--format", "jsonl",
                         "--max-len-b", "4", "--no-progress", "--keep-no-speech")
    assert status == 0, err
    assert victim.read_text() == "the user's file\n" and not (tmp_path / "x.jsonl").exists()
    assert all(p.parent == out for p in out.rglob("*")), list(out.rglob("*"))
    assert f"skipped {manifest}:5 (id '..'): no safe output name" in err
    sources = [line.split("\t") for line in (out / "sources.tsv").read_text().splitlines()]
    assert sources[0] == ["output", "source", "id"]
    mapping = {row[0]: row[2] for row in sources[1:]}
    assert mapping == {"_x.jsonl": "../x", f"{safe_stem(str(tmp_path / 'victim'))}.jsonl": str(tmp_path / "victim"),
                       "a_b.jsonl": "a/b", "same.jsonl": "same", "SAME-2.jsonl": "SAME"}
    assert json.loads((out / "_x.jsonl").read_text().splitlines()[0])["id"] == "../x"
    assert not list(out.glob(".*partial"))


def test_one_bad_row_one_named_skip(exported, tmp_path, capsys):
    clips = sorted(p.name for p in exported["clips"].glob("test_*.wav"))
    rows = [f"good1\t{clips[0]}\tfr\ten", "only_an_id", f"nolang\t{clips[0]}\txx\ten", b"bad\t\xff\xfe.wav\tfr\ten",
            "missing\tgone.wav\tfr\ten", f"\t{clips[0]}\tfr\ten", f"good2\t{clips[1]}\tde\ten"]
    manifest = _write_manifest(tmp_path, exported["clips"], rows)
    status, out, err = cli(capsys, exported["model"], manifest, "--max-len-b", "4", "--no-progress",
                           "--keep-no-speech")
    assert status == 0, err
    assert [line.split("\t")[0] for line in out.splitlines()] == [f"{manifest}:good1", f"{manifest}:good2"]
    for line_no, reason in ((3, "1 field(s), the header has 4"), (4, "unknown language code 'xx'"),
                            (5, "row is not UTF-8"), (7, "empty id field")):
        assert re.search(rf"skipped (line {line_no} of )?{re.escape(str(manifest))}(:{line_no})?.*{re.escape(reason)}",
                         err), \
            (line_no, err)
    assert "gone.wav" in err and "audio file not found" in err
    assert "translated 2 of 7 input(s); 5 skipped" in err
    # A folder: every file translated or named, and counted.
    folder = tmp_path / "folder"
    folder.mkdir()
    wav, sr = sf.read(exported["clips"] / clips[0])
    sf.write(folder / "take.aiff", wav, sr)  # libsndfile reads AIFF: translated
    (folder / "phone.m4a").write_bytes(b"\0\0\0 ftypM4A ")
    (folder / "notes.txt").write_text("not audio")
    (folder / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    status, out, err = cli(capsys, exported["model"], folder, "--src-lang", "fr", "--max-len-b", "4", "--no-progress",
                           "--keep-no-speech")
    assert status == 0 and len(out.splitlines()) == 1, err
    assert "phone.m4a: .m4a is not a format we can decode" in err and "ffmpeg -i phone.m4a" in err
    assert "gone.wav: broken link" in err and "notes.txt: not an audio file" in err
    assert "translated 1 of 4 input(s); 3 skipped" in err


def test_no_invented_output(exported, translator, tmp_path, capsys):
    """Silence and noise of any length are 'no speech'; speech without pauses is cut at its
    quietest point and counted; a segment with far too little text is flagged."""
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "silence.wav", np.zeros(10 * 16000, np.float32), 16000)
    sf.write(tmp_path / "noise.wav", (0.1 * rng.standard_normal(10 * 16000)).astype(np.float32), 16000)
    sf.write(tmp_path / "long_silence.wav", np.zeros(70 * 16000, np.float32), 16000)
    said = [speech_synth.speak(text) for text in sentences("fr", 48, random.Random(1))]
    run = np.concatenate([w[np.abs(w) > 1e-3].clip(-1, 1) for w in said])[: 40 * 16000]  # 40 s without a pause
    sf.write(tmp_path / "run.wav", run, 16000)
    inputs = [tmp_path / n for n in ("silence.wav", "noise.wav", "long_silence.wav", "run.wav")]
    status, out, err = cli(capsys, exported["model"], *inputs, "--src-lang", "fr", "--max-len-b", "2", "--format",
                           "jsonl", "--no-progress")
    assert status == 0, err
    for name in ("silence.wav", "noise.wav", "long_silence.wav"):
        assert re.search(rf"skipped \S*{name}: .*no speech found", err), err
    records = [json.loads(line) for line in out.splitlines()]
    assert {r["source"] for r in records} == {str(inputs[3])} and len(records) == 2
    assert all(r["end"] - r["start"] <= 30.0 for r in records)
    assert "3 skipped (3 no speech)" in err and "1 segment(s) cut inside speech without a pause" in err
    assert all(r["flag"].startswith("text implausibly short") for r in records)
    assert "2 segment(s) flagged" in err and "warning: " in err
    # The API: the same refusal, and a translation of nothing when asked to decode anyway.
    from comsl_fairseq.data.audio import AudioError
    from comsl_fairseq.inference.translator import SpeechTranslator

    strict = SpeechTranslator(translator.model, translator.task, translator.cfg, translator.device, max_len_b=4)
    with pytest.raises(AudioError, match="no speech"):
        strict.translate(np.zeros(16000, np.float32), src_lang="fr")
    assert translator.translate(tmp_path / "long_silence.wav", src_lang="fr").segments == []


def test_languages_the_model_knows(exported, tmp_path, capsys, caplog):
    clip = sorted(exported["clips"].glob("test_*.wav"))[0]
    for flags, what in ((("--src-lang", "it"), "translate it into en"), (("--src-lang", "fr", "--tgt-lang", "de"),
                                                                          "translate fr into de"),
                        (("--src-lang", "en", "--task", "asr"), "transcribe en")):
        status, _, err = cli(capsys, exported["model"], clip, *flags, "--no-progress", "--keep-no-speech")
        assert status != 0 and f"was not trained to {what}; it knows de-en, fr-en" in err, err
        assert "--allow-unseen-language" in err
    status, out, err = cli(capsys, exported["model"], clip, clip, "--src-lang", "it", "--allow-unseen-language",
                           "--max-len-b", "4", "--no-progress", "--keep-no-speech")
    assert status == 0 and len(out.splitlines()) == 2
    assert len([r for r in caplog.records if "was not trained to translate it into en" in r.message]) == 1
    # A manifest row in an untrained pair is one named skip.
    manifest = _write_manifest(tmp_path, exported["clips"], [f"a\t{clip.name}\tfr\ten", f"b\t{clip.name}\tes\ten"])
    status, out, err = cli(capsys, exported["model"], manifest, "--max-len-b", "4", "--no-progress", "--keep-no-speech")
    assert status == 0 and len(out.splitlines()) == 1 and f"skipped {manifest}:b: model" in err
    # Exported with --data after the data moved: the pairs come from that folder's manifests.
    from comsl_fairseq.inference.export import export_model
    from comsl_fairseq.inference.translator import SpeechTranslator

    data = Path(shutil.copytree(exported["model"], tmp_path / "moved_data"))
    (data / "train.tsv").write_text("id\taudio\tn_frames\tsrc_text\ttgt_text\tsrc_lang\ttgt_lang\n"
                                    "a\ta.wav\t1\tx\ty\tzh-CN\ten\nb\tb.wav\t1\tx\ty\tfr\ten\n")
    out = export_model(exported["ckpt"], tmp_path / "model", data=data)
    assert json.loads((out / "model_info.json").read_text())["training_data"]["pairs"] == {"fr-en": 1, "zh-CN-en": 1}
    assert "Sources: fr zh-CN; targets: en." in (out / "README.md").read_text()
    t = SpeechTranslator.from_pretrained(exported["ckpt"], device="cpu", data=data)  # a checkpoint: its manifests
    assert t.languages.describe() == "fr-en, zh-CN-en"


def test_nothing_half_written(exported, tmp_path, capsys, monkeypatch):
    from comsl_fairseq.inference.export import ExportError, export_model

    bad_log = tmp_path / "generate-test.txt"
    bad_log.write_text("S-0\tx\nT-0\ty\n")  # no hypotheses: refused after the weights are written
    with pytest.raises(ExportError, match="0 scored hypotheses"):
        export_model(exported["ckpt"], tmp_path / "model", data=exported["model"], score_logs=[bad_log])
    assert list(tmp_path.iterdir()) == [bad_log]  # neither the folder nor a temporary one
    # Ctrl-C during decoding: the finished files stay, the summary says how many.
    from comsl_fairseq.inference.translator import SpeechTranslator

    real, calls = SpeechTranslator._decode_batch, []

    def interrupted_third(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(SpeechTranslator, "_decode_batch", interrupted_third)
    clips = sorted(exported["clips"].glob("test_*"))
    status, _, err = cli(capsys, exported["model"], *clips, "--src-lang", "fr", "--batch-size", "1",
                         "--out", tmp_path / "out", "--max-len-b", "4", "--no-progress", "--keep-no-speech")
    assert status == 130 and "interrupted: the 2 translation(s) finished are kept" in err, err
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(written) == 3 and "sources.tsv" in written  # two translations, no partial file
    assert len((tmp_path / "out" / "sources.tsv").read_text().splitlines()) == 3


def test_long_recordings_are_streamed(translator, long_recording, monkeypatch):
    """A recording longer than the window is never read whole: two streamed passes, the cut
    pieces equal to slices of the whole waveform."""
    from comsl_fairseq.data.audio import AudioSource, read_audio
    from comsl_fairseq.inference.segment import cut_spans, map_speech

    wav = read_audio(str(long_recording[0]), Path("/"))[0]
    source = AudioSource(str(long_recording[0]))
    speech = map_speech(source.blocks(7.0))
    pieces = list(cut_spans(source.blocks(7.0), speech.spans))
    assert [(s, e) for s, e, _ in pieces] == speech.spans and len(pieces) == len(long_recording[1])
    assert all(np.array_equal(w, wav[s:e]) for s, e, w in pieces)

    def refuse(self):
        raise AssertionError("a long recording was read whole")

    monkeypatch.setattr(AudioSource, "read", refuse)
    assert len(translator.translate(long_recording[0], src_lang="fr").segments) == len(long_recording[1])


@pytest.mark.parametrize("rate,channels", [(48000, 2), (16000, 1), (16000, 3)])
def test_blocks_are_the_same_whatever_the_read_size(tmp_path, monkeypatch, rate, channels):
    """A block is decoded, down-mixed and resampled a few seconds at a time: the samples equal
    those of reading each block at once, bit for bit (also at a length no read size divides)."""
    from comsl_fairseq.data import audio

    rng = np.random.default_rng(2)
    sf.write(tmp_path / "a.wav", (0.1 * rng.standard_normal((rate * 7 + 123, channels))).astype(np.float32), rate,
             subtype="PCM_16")
    source = audio.AudioSource("a.wav", tmp_path)
    streams = {}
    for read_seconds in (3.0, 0.7, 0.25):
        monkeypatch.setattr(audio, "READ_SECONDS", read_seconds)
        blocks = list(source.blocks(3.0))
        assert len(blocks) == 3 and all(b.dtype == np.float32 and b.flags.c_contiguous for b in blocks)
        streams[read_seconds] = np.concatenate(blocks)
    assert np.array_equal(streams[3.0], streams[0.7]) and np.array_equal(streams[3.0], streams[0.25])
    whole = audio.read_audio("a.wav", tmp_path)[0]
    assert abs(streams[3.0].size - whole.size) <= 1


def test_idle_library_pages_are_released_and_come_back():
    """comsl-translate drops the resident pages of numba's LLVM library (loaded by openai-whisper's
    import, unused by decoding); the library still works afterwards (its pages come back from the file)."""
    if not Path("/proc/self/smaps").is_file():
        pytest.skip("Linux only")
    import llvmlite.binding as llvm

    from comsl_fairseq.cli.translate import release_idle_library_pages

    for _ in range(2):  # pages dropped (some are resident: the library just ran), then run again from the file
        assert llvm.get_host_cpu_name() and llvm.get_default_triple()
        assert release_idle_library_pages() > 0
    assert release_idle_library_pages(("no-such-library",)) == 0


def test_streamed_resampling_matches_reading_whole(tmp_path):
    from comsl_fairseq.data.audio import AudioSource, read_audio

    rng = np.random.default_rng(1)
    stereo = (0.1 * rng.standard_normal((44100 * 3, 2))).astype(np.float32)
    sf.write(tmp_path / "s.wav", stereo, 44100)
    whole = read_audio("s.wav", tmp_path)[0]
    streamed = np.concatenate(list(AudioSource("s.wav", tmp_path).blocks(0.7)))
    assert abs(streamed.size - whole.size) <= 1
    n = min(streamed.size, whole.size)
    assert np.abs(streamed[:n] - whole[:n]).max() < 1e-3


def test_a_manifest_without_rows_is_named(tmp_path):
    from comsl_fairseq.inference.inputs import collect

    (tmp_path / "only_header.tsv").write_text("id\taudio\tsrc_lang\n\n")
    items, problems = collect([str(tmp_path / "only_header.tsv")])
    assert items == [] and [(p.name, p.reason) for p in problems] == [
        (str(tmp_path / "only_header.tsv"), "manifest has a header but no rows")]
