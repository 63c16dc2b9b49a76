"""Faulty manifests and clips: skipped and counted, never aborting a split.

Manifests that never abort a split, n_frames checked against
the clips, clips too short for a log-mel frame.
"""
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from comsl_fairseq.data.audio import AudioError
from comsl_fairseq.data.manifest import COLUMNS, SkipLog, read_manifest
from tests.builders import build_task_and_model, synth_clip


@pytest.fixture()
def data(tmp_path, data_dir):
    """A private copy of the fixture's data folder (these tests write manifests and clips)."""
    out = tmp_path / "data"
    shutil.copytree(data_dir, out)
    return out


def good_rows(data, split="train") -> list:
    return (data / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]


def test_bom_and_an_undecodable_row_skip_only_that_row(data, caplog):
    rows = good_rows(data)
    bad = rows[1].replace("\tfr\t", "\tfr\t").encode("utf-8").replace(b"\ten\t", b"\t\xe9n\t", 1)
    blob = ("\ufeff" + "\t".join(COLUMNS) + "\n" + rows[0] + "\n").encode("utf-8")
    blob += bad.replace(rows[1].split("\t")[3].encode(), b"caf\xe9 cr\xe8me") + b"\r\n"
    blob += "\n".join(rows[2:]).encode("utf-8") + b"\n"
    path = data / "excel.tsv"
    path.write_bytes(blob)
    skips = SkipLog("excel")
    parsed = read_manifest(path, skips)
    assert [r.id for r in parsed] == [rows[0].split("\t")[0]] + [r.split("\t")[0] for r in rows[2:]]
    assert skips.counts == {"row is not UTF-8": 1}
    assert re.search(rf"skipping line 3 of {re.escape(str(path))}: row is not UTF-8 \(byte e9 at position \d+\)",
                     caplog.text)


def write_manifest(data, name, rows) -> None:
    (data / f"{name}.tsv").write_text("\n".join(["\t".join(COLUMNS), *rows]) + "\n", encoding="utf-8")


def with_n_frames(row: str, n: int, audio: str | None = None) -> str:
    f = row.split("\t")
    f[2] = str(n)
    if audio is not None:
        f[1] = audio
    return "\t".join(f)


def test_fbank_frame_counts_are_named_with_a_units_hint(data, caplog):
    rows = good_rows(data)
    real = [sf.info(str(data / "clips" / r.split("\t")[1])) for r in rows]
    frames = [i.frames * 16000 // i.samplerate // 160 for i in real]  # what fairseq's S2T fbank manifests hold
    write_manifest(data, "fbank", [with_n_frames(r, n) for r, n in zip(rows, frames, strict=True)])
    _, task, _ = build_task_and_model(data)
    with pytest.raises(ValueError, match=r"no usable rows .*audio too short.*n_frames must count audio samples "
                                         r"at 16 kHz .*not 10 ms fbank frames"):
        task.load_dataset("fbank")
    assert "n_frames looks like 10 ms fbank frames" in caplog.text


def test_n_frames_that_do_not_match_the_clip_are_skipped_when_read(data, caplog):
    rng = np.random.default_rng(3)
    sf.write(data / "clips" / "long48k.wav", synth_clip(3.0, rng, sr=48000), 48000)
    rows = good_rows(data)
    rows[0] = with_n_frames(rows[0], 3 * 48000, "long48k.wav")  # counted at the clip's own rate
    rows[1] = with_n_frames(rows[1], 16000, "long48k.wav")  # a 3 s clip declared as 1 s
    write_manifest(data, "units", rows)
    _, task, _ = build_task_and_model(data)
    task.load_dataset("units")
    ds = task.dataset("units")
    ids = [r.id for r in ds.rows]
    wrong_rate, declared_short = ids.index(rows[0].split("\t")[0]), ids.index(rows[1].split("\t")[0])
    assert ds[wrong_rate] is None and ds[declared_short] is None
    assert ds.read_skips.counts == {"n_frames mismatch": 2}
    assert "n_frames looks like samples counted at 48000 Hz" in caplog.text
    assert re.search(r"n_frames=16000 \(1.00 s\) but the clip holds 48000 samples at 16 kHz \(3.00 s\)", caplog.text)
    good = next(i for i in range(len(ds)) if i not in (wrong_rate, declared_short))
    assert ds[good] is not None  # a right n_frames (the fixture's own rows, some resampled) passes
    ds.fail_on_bad_input = True
    with pytest.raises(AudioError, match=f"utterance {ids[declared_short]} .*n_frames=16000"):
        ds[declared_short]


def test_clips_without_a_log_mel_frame_are_skipped_even_with_min_audio_seconds_0(data, caplog):
    cfg = yaml.safe_load((data / "config.yaml").read_text(encoding="utf-8"))
    (data / "config.yaml").write_text(yaml.safe_dump({**cfg, "min_audio_seconds": 0}), encoding="utf-8")
    rng = np.random.default_rng(4)
    sf.write(data / "clips" / "tiny.wav", synth_clip(0.006, rng), 16000)  # 96 samples
    sf.write(data / "clips" / "one_frame.wav", synth_clip(0.01, rng), 16000)  # 160 samples
    rows = good_rows(data)
    rows[0] = with_n_frames(rows[0], 96, "tiny.wav")
    rows[1] = with_n_frames(rows[1], 160, "one_frame.wav")
    write_manifest(data, "short", rows)
    _, task, model = build_task_and_model(data)
    task.load_dataset("short")
    ds = task.dataset("short")
    assert ds.skipped == {"audio too short": 1}
    assert re.search(rf"skipping {rows[0].split(chr(9))[0]}: audio too short \(n_frames 96 < 160 samples", caplog.text)
    one = [r.id for r in ds.rows].index(rows[1].split("\t")[0])
    batch = ds.collater([ds[one]])  # the shortest clip the front end can read, alone in its batch
    net = batch["net_input"]
    model.eval()
    with torch.no_grad():
        out = model.encoder(net["src_tokens"], net["src_lengths"], net["src_lang_tags"])
    assert out["encoder_out"][0].shape[0] == 2  # the tag + one adapter frame


def unreadable_first_and_last_batches(data) -> str:
    """The training rows plus 4 unreadable clips declared shortest (fairseq's first batch, the
    stand-in for empty batches) and 4 declared longest (a later batch that comes out empty)."""
    (data / "clips" / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage")
    rows = good_rows(data)
    broken = [with_n_frames(rows[i], n, "broken.wav").replace(rows[i].split("\t")[0], f"broken_{i}", 1)
              for i, n in enumerate([3000] * 4 + [46000] * 4)]
    write_manifest(data, "unreadable", rows + broken)
    write_manifest(data, "unreadable_dev", rows + broken)
    return "unreadable"


def test_the_stand_in_for_empty_batches_is_readable(data, caplog):
    split = unreadable_first_and_last_batches(data)
    _, task, _ = build_task_and_model(data)
    task.load_dataset(split)
    ds = task.dataset(split)
    itr = task.get_batch_iterator(ds, max_sentences=4)
    batches = list(itr.next_epoch_itr(shuffle=False))
    assert batches[0] == {} and batches[-1] == {}  # what fairseq would have kept as the stand-in
    first = itr.first_batch
    assert first["nsentences"] == 1 and not ds.rows[int(first["id"][0])].id.startswith("broken")
    assert "stands in for empty batches" in caplog.text


def test_training_and_validation_survive_batches_of_unreadable_clips(data, tmp_path):
    from tests.test_cli import run
    from tests.test_reliability import inner_args

    split = unreadable_first_and_last_batches(data)
    args = inner_args(data, tmp_path / "ckpt", "--max-epoch", "1", "--no-save")
    args[args.index("--train-subset") + 1] = split
    args[args.index("--valid-subset") + 1] = f"{split}_dev"
    log = run(*args)
    assert "Invalid dummy batch" not in log, log[-3000:]
    assert re.search(r"\| train \| epoch 001 \|", log), log[-3000:]
    assert re.search(rf"valid on '{split}_dev' subset", log), log[-3000:]
    assert "unreadable: every clip of the first batch is unreadable" in log
    assert "unreadable_dev: every clip of the first batch is unreadable" in log


def transcript_of(task, n_tokens: int, tag: str = "fr_XX") -> str:
    """A French transcript that tokenizes to exactly ``n_tokens`` (tag and </s> included)."""
    words = "le chat noir mange une pomme rouge dans la maison bleue avec mon ami".split()
    text = ""
    for i in range(10_000):
        longer = f"{text} {words[i % len(words)]}".strip()
        if len(task.tokenizer.encode(longer, tag)) > n_tokens:
            break
        text = longer
    while len(task.tokenizer.encode(text + " a", tag)) <= n_tokens:  # fill the last one or two pieces
        text += " a"
    assert len(task.tokenizer.encode(text, tag)) == n_tokens
    return text


def test_rows_over_the_concatenated_pass_positions_are_skipped_when_read(data, caplog):
    cfg, task, model = build_task_and_model(data, max_positions=64)  # mBART-50 has 1024; a small table keeps it tiny
    row = good_rows(data)[0].split("\t")
    assert row[5] == "fr"
    speech = task.length_limits.speech_positions(int(row[2]))  # tag + adapter frames
    fits, over = row.copy(), row.copy()
    fits[0], fits[3] = "fits", transcript_of(task, 64 - speech)
    over[0], over[3] = "one_over", transcript_of(task, 64 - speech + 1)  # still under max_text_tokens
    write_manifest(data, "positions", ["\t".join(fits), "\t".join(over)])
    task.load_dataset("positions")
    ds = task.dataset("positions")
    assert [r.id for r in ds.rows] == ["fits"] and ds.skipped == {"too long for the model": 1}
    assert re.search(rf"skipping one_over: too long for the model \(transcript tokens \({65 - speech}\) \+ speech "
                     rf"frames \+ tag \({speech}\) > encoder positions .*: 65 > 64\)", caplog.text)
    criterion = task.build_criterion(cfg.criterion)
    loss, _, _ = criterion(model, ds.collater([ds[0]]))  # the longest row that fits runs every pass
    assert torch.isfinite(loss)
    from comsl_fairseq.data.dataset import SpeechTextDataset

    unchecked = SpeechTextDataset.from_manifests("positions", [data / "positions.tsv"], task.data_cfg,
                                                 task.tgt_dict, task.tokenizer, shuffle=False)
    with pytest.raises(IndexError, match="index out of range"):  # what the skipped row did before
        criterion(model, unchecked.collater([unchecked[1]]))
