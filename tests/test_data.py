"""Data contract: config, manifests, languages, dictionary, audio, batching."""
import zipfile

import numpy as np
import pytest
import soundfile as sf
import yaml

from comsl_fairseq.data.audio import AudioError, read_audio
from comsl_fairseq.data.config import DataConfig, DataConfigError
from comsl_fairseq.data.manifest import COLUMNS, SkipLog, read_manifest
from comsl_fairseq.vocab.languages import COVOST_X_EN, COVOST_X_EN_LANGS, ML50_TAGS, mbart_tag
from comsl_fairseq.vocab.vocabulary import VocabularyError, build_dictionary
from tests.builders import build_task_and_model, copy_data, synth_clip


def test_every_covost_language_has_a_tag():
    codes = list(COVOST_X_EN_LANGS) + ["en"]
    assert len(set(codes)) == 22 and sorted(COVOST_X_EN_LANGS) == sorted(c for g in COVOST_X_EN.values() for c in g)
    tags = {c: mbart_tag(c) for c in codes}
    assert tags["zh-CN"] == "zh_CN" and tags["sv-SE"] == "sv_SE" and tags["fr"] == "fr_XX"
    assert tags["cy"] == "cy_GB" and tags["ca"] == "ca_ES" and tags["ja"] == "ja_XX"
    assert mbart_tag("de_DE") == "de_DE"
    with pytest.raises(KeyError, match="unknown language code 'xx'"):
        mbart_tag("xx")


def test_dictionary_layout(mbart_dir):
    d, n_pretrained = build_dictionary(mbart_dir / "dict.txt")
    n_dict = len((mbart_dir / "dict.txt").read_text(encoding="utf-8").splitlines())
    assert n_pretrained == 4 + n_dict + 52 + 1  # specials, dict.txt, ML50 tags, <mask>
    assert len(ML50_TAGS) == 52
    assert d.index("[ar_AR]") == 4 + n_dict and d.index("[sl_SI]") == 4 + n_dict + 51
    assert d.index("<mask>") == n_pretrained - 1
    assert (d.index("[cy_GB]"), d.index("[ca_ES]")) == (n_pretrained, n_pretrained + 1)


def test_dictionary_with_tags_already_is_refused(tmp_path):
    (tmp_path / "dict.txt").write_text("▁a 1\n[fr_XX] 1\n", encoding="utf-8")
    with pytest.raises(VocabularyError, match="already contains"):
        build_dictionary(tmp_path / "dict.txt")


def write_config(folder, **entries):
    (folder / "config.yaml").write_text(yaml.safe_dump(entries), encoding="utf-8")
    return folder / "config.yaml"


def test_config_resolves_relative_paths_and_rejects_unknown_keys(tmp_path, mbart_dir):
    (tmp_path / "clips").mkdir()
    good = dict(vocab_filename=str(mbart_dir / "dict.txt"), audio_root="clips",
                bpe_tokenizer={"bpe": "sentencepiece", "sentencepiece_model": str(mbart_dir / "sentence.bpe.model")})
    cfg = DataConfig.load(write_config(tmp_path, **good))
    assert cfg.audio_root == (tmp_path / "clips").resolve() and cfg.max_audio_seconds == 30
    with pytest.raises(DataConfigError, match=r"unknown key\(s\) \['use_audio_input'\]"):
        DataConfig.load(write_config(tmp_path, **good, use_audio_input=True))
    with pytest.raises(DataConfigError, match="vocab_filename points to .*nope.txt"):
        DataConfig.load(write_config(tmp_path, **{**good, "vocab_filename": "nope.txt"}))
    with pytest.raises(DataConfigError, match="not found"):
        DataConfig.load(tmp_path / "missing.yaml")


def test_manifest_rows_are_parsed_or_skipped_with_a_reason(tmp_path, caplog):
    rows = [
        "\t".join(COLUMNS),
        "\t".join(["ok", "a.wav", "16000", 'il dit "bonjour"', "he says \"hello\"", "fr", "en", "s"]),
        "\t".join(["short_row", "a.wav", "16000", "x", "y", "fr"]),
        "\t".join(["bad_frames", "a.wav", "many", "x", "y", "fr", "en", "s"]),
        "\t".join(["bad_lang", "a.wav", "16000", "x", "y", "klingon", "en", "s"]),
        "\t".join(["no_src", "a.wav", "16000", " ", "y", "fr", "en", "s"]),
        "\t".join(["no_tgt", "a.wav", "16000", "x", "", "fr", "en", "s"]),
    ]
    path = tmp_path / "m.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    skips = SkipLog("m")
    parsed = read_manifest(path, skips)
    assert [r.id for r in parsed] == ["ok"]
    assert parsed[0].src_text == 'il dit "bonjour"' and parsed[0].src_tag == "fr_XX"
    assert skips.counts == {"malformed row": 2, "unknown language code": 1, "empty source text": 1,
                            "empty target text": 1}
    for row_id in ("short_row", "bad_frames", "bad_lang", "no_src", "no_tgt"):
        assert row_id in caplog.text


def test_read_audio_resamples_downmixes_and_reads_zip_entries(tmp_path):
    rng = np.random.default_rng(0)
    clip = synth_clip(1.0, rng)
    sf.write(tmp_path / "mono.flac", clip, 16000)
    sf.write(tmp_path / "stereo.wav", np.stack([clip, clip], 1), 8000)
    wav, notes = read_audio("mono.flac", tmp_path)
    assert wav.dtype == np.float32 and wav.size == 16000 and notes == []
    wav, notes = read_audio("stereo.wav", tmp_path)
    assert wav.size == 32000 and any("downmixed" in n for n in notes) and any("8000 Hz" in n for n in notes)
    with zipfile.ZipFile(tmp_path / "audio.zip", "w", zipfile.ZIP_STORED) as z:
        z.write(tmp_path / "mono.flac", "mono.flac")
    with zipfile.ZipFile(tmp_path / "audio.zip") as z:
        info = z.getinfo("mono.flac")
        offset = info.header_offset + 30 + len(info.filename) + len(info.extra)
    wav, _ = read_audio(f"audio.zip:{offset}:{info.file_size}", tmp_path)
    assert np.allclose(wav, read_audio("mono.flac", tmp_path)[0])
    with pytest.raises(AudioError, match="not found: .*gone.wav"):
        read_audio("gone.wav", tmp_path)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF....not audio")
    with pytest.raises(AudioError, match="cannot decode audio .*corrupt.wav"):
        read_audio("corrupt.wav", tmp_path)


def test_dataset_skips_missing_and_overlong_clips(data_dir, tmp_path, caplog):
    data_dir = copy_data(data_dir, tmp_path / "data")  # the session's folder stays as it is
    lines = (data_dir / "train.tsv").read_text(encoding="utf-8").splitlines()
    header, first, second = lines[0], lines[1].split("\t"), lines[2].split("\t")
    first[1] = "does_not_exist.wav"
    second[2] = str(31 * 16000)
    (data_dir / "faulty.tsv").write_text("\n".join([header, "\t".join(first), "\t".join(second), *lines[3:]]) + "\n")
    _, task, _ = build_task_and_model(data_dir)
    task.load_dataset("faulty")
    ds = task.dataset("faulty")
    assert len(ds) == len(lines) - 3
    assert ds.skipped == {"audio file missing": 1, "audio too long": 1}
    assert first[0] in caplog.text and second[0] in caplog.text


def test_batches_keep_every_utterance(data_dir):
    _, task, _ = build_task_and_model(data_dir)
    task.load_dataset("test")
    ds = task.dataset("test")
    batches = ds.batch_by_size(ds.ordered_indices(), max_sentences=4, required_batch_size_multiple=8)
    assert sorted(int(i) for b in batches for i in b) == list(range(len(ds)))


def test_batch_contents_follow_the_token_conventions(data_dir):
    _, task, _ = build_task_and_model(data_dir)
    task.load_dataset("test")
    ds = task.dataset("test")
    d = task.target_dictionary
    batch = ds.collater([ds[0], ds[1]])
    tgt, prev = batch["target"][0], batch["net_input"]["prev_output_tokens"][0]
    n = int(batch["target_lengths"][0])
    assert d[tgt[0]] == "[en_XX]" and tgt[n - 1] == d.eos()  # [tgt_tag] y </s>
    assert prev[0] == d.eos() and d[prev[1]] == "[en_XX]" and prev[1:n].tolist() == tgt[: n - 1].tolist()
    src = batch["transcript"][0]
    assert d[src[0]] in ("[fr_XX]", "[de_DE]") and batch["net_input"]["src_lang_tags"][0] == src[0]
    assert batch["net_input"]["src_tokens"].shape == (2, int(batch["net_input"]["src_lengths"].max()))


def test_bleu_aggregation_over_batches(data_dir):
    import sacrebleu
    from fairseq import metrics

    cfg, task, _ = build_task_and_model(data_dir, "--eval-bleu")
    logs = []
    for hyps, refs in ((["the black cat"], ["the black cat"]), (["a red apple in the house"], ["a red apple"])):
        s = sacrebleu.corpus_bleu(hyps, [refs])
        log = {"_bleu_sys_len": s.sys_len, "_bleu_ref_len": s.ref_len}
        log.update({f"_bleu_counts_{i}": s.counts[i] for i in range(4)})
        log.update({f"_bleu_totals_{i}": s.totals[i] for i in range(4)})
        logs.append(log)
    expected = sacrebleu.corpus_bleu(["the black cat", "a red apple in the house"],
                                     [["the black cat", "a red apple"]]).score
    with metrics.aggregate() as agg:
        task.reduce_metrics(logs, task.build_criterion(cfg.criterion))
        assert agg.get_smoothed_values()["bleu"] == pytest.approx(expected, abs=0.01)


def test_audio_paths_that_are_not_audio_files_say_what_they_are(tmp_path):
    from comsl_fairseq.data.audio import AudioSource

    (tmp_path / "clip.wav").mkdir()  # a folder named like a clip
    with pytest.raises(AudioError, match="is a folder, not an audio file"):
        read_audio("clip.wav", tmp_path)
    with pytest.raises(AudioError, match="is a folder, not an audio file"):
        AudioSource("clip.wav", tmp_path).header()
    with pytest.raises(AudioError, match="audio file not found"):
        read_audio("gone.wav", tmp_path)


def test_a_header_claiming_an_implausible_sample_rate_is_refused(tmp_path):
    """A damaged header saying 1 Hz would make 17 kB of samples last hours (and take minutes)."""
    import struct

    from comsl_fairseq.data.audio import AudioSource

    path = tmp_path / "one_hz.wav"
    sf.write(path, np.zeros(8000, np.float32), 16000, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    raw[24:32] = struct.pack("<II", 1, 2)  # the fmt chunk's sample rate and byte rate
    path.write_bytes(bytes(raw))
    with pytest.raises(AudioError, match="sample rate of 1 Hz"):
        read_audio(str(path), tmp_path)
    with pytest.raises(AudioError, match="sample rate of 1 Hz"):
        AudioSource(str(path)).header()
