"""Bad input, exact resume, 2-process training, non-finite losses, mismatched checkpoints."""
import os
import re
import socket
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

from comsl_fairseq.checkpoints.pretrained import CheckpointError
from comsl_fairseq.data.manifest import BadInputError
from tests.builders import BIN, USER_DIR, build_task_and_model, copy_data, inner_args, run, synth_clip

FAULTS = {  # utterance id -> reason named in the log
    "f_missing": "audio file missing",
    "f_corrupt": "unreadable audio",
    "f_zero_bytes": "unreadable audio",
    "f_no_samples": "empty audio",
    "f_nan": "non-finite audio samples",
    "f_too_long_manifest": "audio too long",
    "f_longer_than_claimed": "audio too long",
    "f_empty_src": "empty source text",
    "f_empty_tgt": "empty target text",
    "f_bad_lang": "unknown language code",
    "f_short_row": "malformed row",
    "f_bad_frames": "malformed row",
}


@pytest.fixture(scope="module")
def faulty_data(tmp_path_factory, data_dir):
    """The fixture's data folder plus a manifest 'faulty' with one row of each fault beside
    the good training rows, and a 44.1 kHz stereo clip that must be converted and kept."""
    out = copy_data(data_dir, tmp_path_factory.mktemp("faulty"))
    clips = out / "clips"
    rng = np.random.default_rng(5)
    (clips / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage")
    (clips / "zero.wav").write_bytes(b"")
    sf.write(clips / "nosamples.wav", np.zeros(0, np.float32), 16000)
    nan = synth_clip(1.0, rng)
    nan[100] = np.nan
    sf.write(clips / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(clips / "long.flac", synth_clip(31.0, rng), 16000)
    stereo = synth_clip(1.5, rng, sr=44100)  # 1.5 s at 44.1 kHz: n_frames 24000 at 16 kHz
    sf.write(clips / "stereo44k.wav", np.stack([stereo, stereo], 1), 44100)
    good = (out / "train.tsv").read_text(encoding="utf-8").strip().splitlines()
    row = lambda *f: "\t".join(f)  # noqa: E731
    faulty = [
        row("f_missing", "gone.wav", "16000", "le chat", "the cat", "fr", "en", "s"),
        row("f_corrupt", "corrupt.wav", "16000", "le chat", "the cat", "fr", "en", "s"),
        row("f_zero_bytes", "zero.wav", "16000", "le chat", "the cat", "fr", "en", "s"),
        row("f_no_samples", "nosamples.wav", "16000", "le chat", "the cat", "fr", "en", "s"),
        row("f_nan", "nan.wav", "16000", "le chat", "the cat", "fr", "en", "s"),
        row("f_too_long_manifest", "long.flac", str(31 * 16000), "le chat", "the cat", "fr", "en", "s"),
        row("f_longer_than_claimed", "long.flac", "16000", "le chat", "the cat", "fr", "en", "s"),
        row("f_empty_src", good[1].split("\t")[1], "16000", " ", "the cat", "fr", "en", "s"),
        row("f_empty_tgt", good[1].split("\t")[1], "16000", "le chat", "", "fr", "en", "s"),
        row("f_bad_lang", good[1].split("\t")[1], "16000", "le chat", "the cat", "xx", "en", "s"),
        row("f_short_row", "a.wav", "16000", "le chat"),
        row("f_bad_frames", good[1].split("\t")[1], "many", "le chat", "the cat", "fr", "en", "s"),
        row("ok_stereo44k", "stereo44k.wav", str(int(1.5 * 16000)), "le chat", "the cat", "fr", "en", "s"),
    ]
    (out / "faulty.tsv").write_text("\n".join(good + faulty) + "\n", encoding="utf-8")
    return out, len(good) - 1 + 1  # good rows + the stereo one


def train_args(data, save_dir, *extra):
    return ["fairseq-train", data, "--user-dir", USER_DIR, "--task", "comsl_speech_to_text",
            "--train-subset", "faulty", "--valid-subset", "dev", "--arch", "whisper_mbart_composite_tiny",
            "--criterion", "comsl_multitask", "--optimizer", "adam", "--lr", "1e-4", "--batch-size", "8",
            "--save-dir", save_dir, "--cpu", "--erm-layer", "2", *extra]


@pytest.mark.subprocess
def test_faulty_rows_are_named_and_skipped_while_good_rows_train(faulty_data, tmp_path):
    data, n_good = faulty_data
    log = run(*train_args(data, tmp_path / "ckpt", "--max-epoch", "1", "--log-interval", "1"))
    for uid, reason in FAULTS.items():
        assert re.search(rf"skipping {uid}\b.*: {re.escape(reason)}", log), f"{uid} ({reason}):\n{log[-3000:]}"
    assert re.search(r"faulty: kept \d+ rows, skipped 7 \(", log)  # the faults found from the manifest alone
    assert "resampled 44100 Hz -> 16000 Hz" in log and "downmixed 2 channels" in log
    trained = [line for line in log.splitlines() if "| train | epoch 001" in line]
    assert trained, log[-2000:]


def test_fail_on_bad_input_stops_at_the_first_fault(faulty_data):
    data, _ = faulty_data
    _, task, _ = build_task_and_model(data, "--fail-on-bad-input")
    with pytest.raises(BadInputError, match="f_empty_src: empty source text"):  # the first fault in reading order
        task.load_dataset("faulty")


def test_fail_on_bad_input_names_clips_failing_when_read(faulty_data):
    from comsl_fairseq.data.audio import AudioError

    data, _ = faulty_data
    _, task, _ = build_task_and_model(data)
    task.load_dataset("faulty")
    ds = task.dataset("faulty")
    ds.fail_on_bad_input = True
    index = [r.id for r in ds.rows].index("f_nan")
    with pytest.raises(AudioError, match="utterance f_nan of split faulty: .*NaN"):
        ds[index]


def losses(log: str) -> list:
    return [float(m) for m in re.findall(r"train_inner \| epoch \d+: .*? loss=([\d.]+),", log)]


@pytest.mark.subprocess
def test_resume_reproduces_the_uninterrupted_run(data_dir, tmp_path):
    full = losses(run(*inner_args(data_dir, tmp_path / "full", "--max-update", "6")))
    first = losses(run(*inner_args(data_dir, tmp_path / "split", "--max-update", "3")))
    second = losses(run(*inner_args(data_dir, tmp_path / "split", "--max-update", "6")))
    assert len(full) == 6 and len(first) == 3 and len(second) == 3, (full, first, second)
    assert first + second == full


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.subprocess
def test_two_process_training_on_cpu(data_dir, whisper_pt, tmp_path):
    port = free_port()
    save = tmp_path / "ckpt"
    procs = []
    for rank in (0, 1):
        args = inner_args(data_dir, save, "--max-update", "4", "--whisper-checkpoint", str(whisper_pt),
                          "--freeze-whisper-updates", "4", "--weight-decay", "0.1",
                          "--distributed-world-size", "2", "--distributed-rank", str(rank), "--distributed-no-spawn",
                          "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
                          "--distributed-init-method", f"tcp://127.0.0.1:{port}")
        procs.append(subprocess.Popen([str(BIN / args[0]), *map(str, args[1:])], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, env=dict(os.environ, OMP_NUM_THREADS="1")))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    assert "distributed init (rank 0)" in outs[0] and "distributed init (rank 1)" in outs[1]
    assert "training on 2 devices" in outs[0] and re.search(r"num_updates 4", outs[0])
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu")
    from comsl_fairseq.checkpoints.pretrained import load_whisper_checkpoint

    _, original = load_whisper_checkpoint(whisper_pt)
    whisper = {k[len("encoder.whisper."):]: v for k, v in state["model"].items() if k.startswith("encoder.whisper.")}
    assert all(torch.equal(whisper[k], original[k].float()) for k in original)  # frozen: not even weight decay
    from fairseq import checkpoint_utils

    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(save / "checkpoint_last.pt")])
    reloaded = models[0].state_dict()
    assert reloaded.keys() == state["model"].keys()
    assert all(torch.equal(reloaded[k], v) for k, v in state["model"].items())


def test_non_finite_loss_names_the_term(data_dir):
    cfg, task, model = build_task_and_model(data_dir, "--erm-layer", "2")
    criterion = task.build_criterion(cfg.criterion)
    task.load_dataset("test")
    ds = task.dataset("test")
    sample = ds.collater([ds[0], ds[1]])
    with torch.no_grad():
        model.encoder.adapter.conv2.conv.bias.fill_(float("nan"))  # poisons every speech branch, not MT
    with pytest.raises(FloatingPointError, match=r"non-finite loss in term\(s\) \['st', 'asr', .*'stm_asr'") as e:
        criterion(model, sample)
    assert f"utterances ['{ds.rows[0].id}', '{ds.rows[1].id}']" in str(e.value)  # manifest ids, not indices
    with pytest.raises(FloatingPointError) as e:
        criterion(model, sample)
    assert "'mt'" not in str(e.value)


def test_resuming_with_another_dictionary_names_the_mismatch(data_dir):
    _, _, model = build_task_and_model(data_dir)
    state = model.state_dict()
    state["decoder.embed_tokens.weight"] = state["decoder.embed_tokens.weight"][:-5]
    state["encoder.adapter.extra.weight"] = torch.zeros(1)
    del state["decoder.layers.0.fc1.bias"]
    with pytest.raises(CheckpointError) as e:
        model.load_state_dict(state)
    msg = str(e.value)
    assert "another dict.txt" in msg and "decoder.embed_tokens.weight: checkpoint" in msg
    assert "encoder.adapter.extra.weight" in msg and "decoder.layers.0.fc1.bias" in msg
