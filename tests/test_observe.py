"""Watching training and trusting scores, on one tiny model trained here.

Watching training and trusting scores: TensorBoard scalars, training curves,
checkpoint averaging, chrF / normalised WER, paired bootstrap, and the modality-gap report with
its HTML page, on one tiny model trained here for 4 updates (2 epochs).
"""
import importlib
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from comsl_fairseq.evaluation.logs import read_run, read_tensorboard_dir, read_text_log, write_generate_log
from tests.builders import run, train_cmd

ROOT = Path(__file__).resolve().parents[1]
TERMS = ("st", "asr", "mt", "stm_asr", "stm_st", "mtp")


def command(name: str):
    """The module of console script ``comsl-<name>`` (its ``main`` takes the command line)."""
    return importlib.import_module(f"comsl_fairseq.cli.{name}")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir, whisper_pt, mbart_dir):
    """4 updates, batch 8 on 16 rows = 2 epochs: JSON log, TensorBoard, 2 epoch checkpoints."""
    tmp = tmp_path_factory.mktemp("observe")
    log = run(*train_cmd(data_dir, whisper_pt, mbart_dir / "model.pt", tmp / "ckpt", "--max-update", "4",
                         "--log-format", "json", "--log-interval", "1", "--tensorboard-logdir", tmp / "tb",
                         "--keep-last-epochs", "2", "--eval-bleu", "--eval-bleu-beam", "2",
                         "--eval-bleu-max-len-b", "5", "--best-checkpoint-metric", "bleu",
                         "--maximize-best-checkpoint-metric"))
    (tmp / "ckpt" / "train.log").write_text(log, encoding="utf-8")
    return tmp


def test_tensorboard_holds_every_term_lr_gnorm_throughput_and_valid_bleu(run_dir):
    records = read_tensorboard_dir(run_dir / "tb")
    inner = [r for r in records if r.tag == "train_inner"]
    assert [r.update for r in inner] == [1, 2, 3, 4]
    for r in inner:
        for term in TERMS:
            assert f"{term}_loss" in r.values and f"{term}_acc" in r.values, sorted(r.values)
        for key in ("loss", "erm_loss", "lr", "gnorm", "wps", "ups"):
            assert key in r.values, key
    dev = [r for r in records if r.tag == "dev"]
    assert [r.update for r in dev] == [2, 4]  # one validation per epoch
    assert all("bleu" in r.values and "st_loss" in r.values for r in dev)
    # the text log and the event files carry the same numbers (JSON rounds to 3 decimals)
    text = {(r.tag, r.update): r.values for r in read_text_log(run_dir / "ckpt" / "train.log")}
    for r in inner:
        assert r.values["st_loss"] == pytest.approx(text[("train_inner", r.update)]["st_loss"], abs=6e-3)


SIMPLE_LOG = """\
2026-11-27 09:18:29 | INFO | fairseq_cli.train | begin training epoch 1
2026-11-27 09:18:29 | INFO | train_inner | epoch 001:      2 / 4 loss=6.714, st_loss=7.006, st_acc=3.57, \
wps=34.5, ups=1.38, wpb=28, bsz=4, num_updates=2, lr=0.0001, gnorm=0.761, train_wall=1, wall=11
2026-11-27 09:18:31 | INFO | dev | epoch 001 | valid on 'dev' subset | loss 6.836 | st_loss 7.009 | st_acc 0 \
| bleu 12.5 | wps 55.1 | wpb 18 | bsz 3 | num_updates 4
2026-11-27 09:18:31 | INFO | train | epoch 001 | loss 6.703 | st_loss 7.006 | num_updates 4 | lr 0.0001 | gnorm 0.777
"""


def test_simple_format_log_as_the_demo_writes_it(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(SIMPLE_LOG, encoding="utf-8")
    records = read_text_log(log)
    assert [(r.tag, r.update) for r in records] == [("train_inner", 2), ("dev", 4), ("train", 4)]
    assert records[0].values["st_loss"] == 7.006 and records[0].values["lr"] == 0.0001
    assert records[1].values["bleu"] == 12.5 and "valid" not in str(records[1].values)


def test_plot_training_overlays_runs(run_dir, tmp_path, capsys):
    plot_training = command("plot_training")

    out = tmp_path / "curves.png"
    simple = tmp_path / "simple" / "train.log"
    simple.parent.mkdir()
    simple.write_text(SIMPLE_LOG, encoding="utf-8")
    assert plot_training.main([str(run_dir / "ckpt"), str(run_dir / "tb"), str(simple), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    folder = tmp_path / "figures"  # a folder as --out: the figure goes inside it, not beside it
    folder.mkdir()
    assert plot_training.main([str(simple), "--out", str(folder)]) == 0
    assert capsys.readouterr().out.strip() == str(folder / "training.png") and (folder / "training.png").is_file()
    assert plot_training.main([str(simple), "--out", str(tmp_path / "bare")]) == 0  # no suffix: .png, said so
    assert capsys.readouterr().out.strip() == str(tmp_path / "bare.png") and (tmp_path / "bare.png").is_file()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    runs = {"a": read_run(run_dir / "ckpt")}
    from comsl_fairseq.evaluation.plot import panels

    assert panels(runs, False)[:2] == ["loss", "asr_loss"] and "bleu" in panels(runs, False)
    assert plot_training.main([str(tmp_path / "nothing"), "--out", str(out)]) == 2


def test_average_of_identical_checkpoints_is_that_checkpoint(run_dir, tmp_path):
    from comsl_fairseq.checkpoints.averaging import average_checkpoints

    ckpt = run_dir / "ckpt" / "checkpoint2.pt"
    out = average_checkpoints([ckpt, ckpt], tmp_path / "avg.pt")
    original, averaged = torch.load(ckpt), torch.load(out)
    assert original["model"].keys() == averaged["model"].keys()
    assert all(torch.equal(original["model"][k], averaged["model"][k]) for k in original["model"])
    assert averaged["last_optimizer_state"] is None


def test_average_of_two_checkpoints_is_their_mean(run_dir, tmp_path):
    average_checkpoints = command("average_checkpoints")

    out = tmp_path / "avg.pt"
    assert average_checkpoints.main(["--save-dir", str(run_dir / "ckpt"), "--last", "2", "--out", str(out)]) == 0
    a, b = (torch.load(run_dir / "ckpt" / f"checkpoint{e}.pt")["model"] for e in (1, 2))
    avg = torch.load(out)["model"]
    changed = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert changed  # training moved the weights between the epochs
    for k in a:
        expected = (a[k].double() + b[k].double()) / 2 if a[k].is_floating_point() else a[k]
        assert torch.allclose(avg[k].double(), expected.double(), atol=1e-7), k
    assert torch.load(out)["extra_state"]["averaged_checkpoints"] == ["checkpoint1.pt", "checkpoint2.pt"]


def test_averaging_asks_for_keep_last_epochs_when_checkpoints_are_missing(run_dir, tmp_path, capsys):
    average_checkpoints = command("average_checkpoints")

    assert average_checkpoints.main(["--save-dir", str(run_dir / "ckpt"), "--last", "3",
                                     "--out", str(tmp_path / "x.pt")]) == 2
    assert "--keep-last-epochs 3" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


def test_normalised_wer_cer_and_chrf():
    from comsl_fairseq.evaluation.scoring import asr_scores, corpus_scores, error_rate

    assert error_rate(["Hello, World!"], ["hello world"]) == 0.0  # case and punctuation do not count
    assert error_rate(["hello there world"], ["hello world"]) == 50.0
    assert asr_scores(["你好，世界"], ["你好世界。"], "zh-CN") == {"asr_cer": 0.0}
    assert asr_scores(["你好世"], ["你好世界"], "ja") == {"asr_cer": 25.0}
    scores = corpus_scores(["the black cat sat on the mat"], ["the black cat sat on the mat"])
    assert scores["bleu"] == 100.0 and scores["chrf"] == 100.0
    assert "tok:13a" in scores["bleu_signature"] and "nc:6" in scores["chrf_signature"]


def test_paired_bootstrap_separates_signal_from_noise():
    import random

    from comsl_fairseq.evaluation.scoring import paired_bootstrap, stratified_bootstrap_mean

    rng = random.Random(0)
    words = "the a cat dog red blue house big small eats sees my friend".split()
    refs = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(60)]

    def noisy(keep):
        return [" ".join(w if rng.random() < keep else rng.choice(words) for w in r.split()) for r in refs]

    weak, strong = noisy(0.5), noisy(0.9)
    better = paired_bootstrap(weak, strong, refs)
    assert better.delta > 0 and better.delta_low > 0 and better.p_value < 0.01
    assert better.delta_low <= better.delta <= better.delta_high
    same = paired_bootstrap(weak, weak, refs)
    assert same.delta == 0 and same.p_value == 1.0 and "bs:1000" in same.signature

    # the mean over languages, as comsl-compare-systems --out writes it: plain numbers, JSON-ready
    # (chrF computed from float32 statistics returned numpy floats, and json.dumps refused them)
    groups = {"fr": (weak[:30], strong[:30], refs[:30]), "de": (weak[30:], strong[30:], refs[30:])}
    for metric in ("bleu", "chrf"):
        mean = stratified_bootstrap_mean(groups, metric, 200).as_dict()
        assert mean["delta"] > 0 and all(type(v) in (int, float, str) for v in mean.values()), mean
        json.dumps(mean)


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.audio = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-key" in attrs:
            self.rows.append(attrs["data-key"])
        if tag == "audio":
            self.audio.append(attrs.get("src"))


@pytest.fixture(scope="module")
def gap_dir(run_dir, data_dir):
    """The modality-gap report of the 2-epoch average (decoded by fairseq-generate in process)."""
    average_checkpoints = command("average_checkpoints")
    modality_gap = command("modality_gap")

    avg = run_dir / "avg.pt"
    assert average_checkpoints.main(["--save-dir", str(run_dir / "ckpt"), "--last", "2", "--out", str(avg)]) == 0
    out = run_dir / "gap"
    assert modality_gap.main(["--path", str(avg), "--data", str(data_dir), "--subsets", "test", "--out", str(out),
                              "--beam", "2", "--samples", "200", "--generate-args", "--cpu --max-len-b 6",
                              "--similarity-with", f"epoch 1={run_dir / 'ckpt' / 'checkpoint1.pt'}",
                              "--label", "average", "--similarity-utterance", "test:1"]) == 0
    return out


def test_similarity_figure_is_drawn_for_both_models_and_linked_from_the_page(gap_dir, run_dir, data_dir):
    from matplotlib.image import imread

    from comsl_fairseq.inference.similarity import load_model, similarity_matrix

    page = (gap_dir / "modality_gap.html").read_text(encoding="utf-8")
    assert '<img src="similarity.png"' in page and "epoch 1, average" in page
    height, width = imread(gap_dir / "similarity.png").shape[:2]
    assert width > 1.5 * height  # two panels side by side
    model, task = load_model(run_dir / "avg.pt", data_dir)
    sim = similarity_matrix(model, task, "test", 1)
    ds = task.dataset("test")
    n_tokens = len(ds[1]["src_text"]) - 2  # [tag] x1..xn </s>
    assert sim["matrix"].shape[1] == n_tokens == len(sim["tokens"])
    assert not any(t.startswith("[") for t in sim["tokens"])
    assert sim["matrix"].shape[0] > 0 and float(sim["matrix"].abs().max()) <= 1 + 1e-5


def test_modality_gap_report(gap_dir, data_dir):
    rows = json.loads((gap_dir / "modality_gap.json").read_text())
    langs = [line.split("\t")[5] for line in (data_dir / "test.tsv").read_text().strip().splitlines()[1:]]
    assert set(rows) == set(langs) and sum(r["utterances"] for r in rows.values()) == len(langs)
    for r in rows.values():
        assert r["gap_mt_st"] == pytest.approx(r["mt_bleu"] - r["st_bleu"], abs=0.011)
        assert r["gap_cascade_st"] == pytest.approx(r["cascade_bleu"] - r["st_bleu"], abs=0.011)
        low, high = r["gap_mt_st_ci"]
        assert low <= high and "asr_wer" in r and "tok:13a" in r["bleu_signature"]
    table = (gap_dir / "modality_gap.md").read_text()
    assert all(f"| {lang} |" in table for lang in rows)
    cascade_src = (gap_dir / "cascade_data" / "test.tsv").read_text().strip().splitlines()
    asr = [line.split("\t", 2)[2] for line in (gap_dir / "asr" / "generate-test.txt").read_text().splitlines()
           if line.startswith("D-")]
    assert all(row.split("\t")[3] in asr for row in cascade_src[1:])  # the cascade reads the ASR output


def test_modality_gap_page_lists_every_utterance_with_playable_audio(gap_dir, data_dir):
    page = gap_dir / "modality_gap.html"
    parser = _Page()
    parser.feed(page.read_text(encoding="utf-8"))
    n = len((data_dir / "test.tsv").read_text().strip().splitlines()) - 1
    assert sorted(parser.rows) == sorted(f"test:{i}" for i in range(n))
    assert len(parser.audio) == n
    for src in parser.audio:
        assert (page.parent / src).resolve().is_file(), src


def test_compare_systems_on_the_decoded_model(gap_dir, data_dir, tmp_path, capsys):
    compare_systems = command("compare_systems")

    out = tmp_path / "cmp.json"
    assert compare_systems.main([str(gap_dir / "st"), str(gap_dir / "mt"), "--data", str(data_dir),
                                 "--samples", "200", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    gap = json.loads((gap_dir / "modality_gap.json").read_text())
    assert set(rows) == set(gap) | {"all (pooled)", "mean of languages"}
    for lang, r in gap.items():
        assert rows[lang]["bleu"]["delta"] == pytest.approx(r["gap_mt_st"], abs=0.011)
        assert 0 < rows[lang]["bleu"]["p_value"] <= 1
    assert "Δ BLEU [95 % CI]" in printed and "| all (pooled) |" in printed
    assert compare_systems.main([str(gap_dir / "st"), str(gap_dir / "asr"), "--data", str(data_dir)]) == 2
    assert "reference of" in capsys.readouterr().err  # ASR references are transcripts: not comparable


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, capture_output=True, timeout=900)
    found = shutil.which("chromium")
    if not found:
        pytest.skip("chromium is not installed and could not be installed with apt-get")
    return found


@pytest.mark.slow
def test_modality_gap_page_renders_in_headless_chromium(gap_dir, tmp_path):
    browser = chromium()
    page = gap_dir / "modality_gap.html"
    common = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    parser = _Page()
    parser.feed(dom)
    n = len(re.findall(r'<tr data-key="', page.read_text(encoding="utf-8")))
    assert n and len(parser.rows) == n and len(parser.audio) == n
    # the page's own script sorts in the browser: #sort=3 orders the rows by transcript
    sorted_dom = subprocess.run([*common, "--dump-dom", page.as_uri() + "#sort=3"], capture_output=True,
                                text=True, timeout=120).stdout
    transcripts = re.findall(r'<tr data-key="[^"]+"[^>]*><td>[^<]*</td><td>[^<]*</td><td>.*?</td><td>([^<]*)</td>',
                             sorted_dom)
    assert len(transcripts) == n and transcripts == sorted(transcripts), transcripts
    assert transcripts != re.findall(r'<tr data-key="[^"]+"[^>]*><td>[^<]*</td><td>[^<]*</td><td>.*?</td>'
                                     r'<td>([^<]*)</td>', page.read_text(encoding="utf-8"))  # order changed
    shot = tmp_path / "page.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1600,900", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000


def _generate_log(path: Path, pairs: list) -> None:  # pairs of (hypothesis, reference)
    write_generate_log(path, [ref for _, ref in pairs], [hyp for hyp, _ in pairs])


def test_score_covost_reports_chrf_and_normalised_asr_error(tmp_path):
    score_covost = command("score_covost")

    data, gen = tmp_path / "data", tmp_path / "eval"
    data.mkdir()
    st = [("the black cat eats an apple", "the black cat eats an apple"), ("a red house", "the blue house")]
    for lang, asr in (("fr", [("Le chat, noir!", "le chat noir"), ("une maison", "une maison rouge")]),
                      ("zh-CN", [("你好，世界", "你好世界。"), ("谢谢", "谢谢你")])):
        rows = "".join(f"{uid}\t{uid}.wav\t{a[1]}\t{t[1]}\n" for uid, a, t in zip("ab", asr, st, strict=True))
        (data / f"test_{lang}_en.tsv").write_text("id\taudio\tsrc_text\ttgt_text\n" + rows, encoding="utf-8")
        _generate_log(gen / f"generate-test_{lang}_en.txt", st)
        _generate_log(gen / "asr" / f"generate-test_{lang}_en.txt", asr)
        _generate_log(gen / "mt" / f"generate-test_{lang}_en.txt", st)
    assert score_covost.main(["--gen-dir", str(gen), "--data", str(data), "--langs", "fr,zh-CN",
                              "--out", str(tmp_path / "scores")]) == 0  # a new prefix: scores.{json,md}
    assert (tmp_path / "scores.json").is_file()
    (tmp_path / "folder").mkdir()
    assert score_covost.main(["--gen-dir", str(gen), "--data", str(data), "--langs", "fr,zh-CN",
                              "--out", str(tmp_path / "folder")]) == 0  # a folder: inside it, not beside it
    assert (tmp_path / "folder" / "results.json").is_file() and not (tmp_path / "folder.json").exists()
    assert score_covost.main(["--gen-dir", str(gen), "--data", str(data), "--langs", "fr,zh-CN"]) == 0
    result = json.loads((gen / "results.json").read_text())
    fr, zh = result["per_language"]["fr"], result["per_language"]["zh-CN"]
    assert fr["asr_wer"] == pytest.approx(100 / 6, abs=0.01)  # 1 deletion in 6 words; case, punctuation free
    assert zh["asr_cer"] == pytest.approx(100 / 7, abs=0.01) and "asr_wer" not in zh  # 1 of 7 characters
    assert 0 < fr["chrf"] < 100 and fr["mt_chrf"] == fr["chrf"] and "nc:6" in result["chrf_signature"]
    assert "| chrF (ours) |" in (gen / "results.md").read_text()


def test_score_covost_refuses_a_log_of_another_set_and_names_missing_languages(tmp_path, capsys):
    score_covost = command("score_covost")
    data, gen = tmp_path / "data", tmp_path / "eval"
    data.mkdir()
    (data / "test_fr_en.tsv").write_text("id\taudio\tsrc_text\ttgt_text\na\ta.wav\tun chat\ta cat\n"
                                         "b\tb.wav\tune maison\ta house\n", encoding="utf-8")
    _generate_log(gen / "generate-test_fr_en.txt", [("a dog", "good morning"), ("a car", "thank you")])  # de's log
    assert score_covost.main(["--gen-dir", str(gen), "--data", str(data), "--langs", "fr"]) == 2
    err = capsys.readouterr().err
    assert f"{gen / 'generate-test_fr_en.txt'} was not decoded from {data / 'test_fr_en.tsv'}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert score_covost.main(["--gen-dir", str(gen), "--data", str(data)]) == 2  # default: all 21 languages
    err = capsys.readouterr().err
    assert "pass --langs with the languages decoded" in err and "de" in err and len(err.strip().splitlines()) == 1


def test_page_audio_from_plain_files_and_zip_entries(tmp_path, mbart_dir):
    import struct
    import zipfile

    import numpy as np
    import soundfile as sf
    import yaml

    from comsl_fairseq.evaluation.gap_page import audio_files

    clips = tmp_path / "clips"
    clips.mkdir()
    sf.write(clips / "a.wav", np.zeros(1600, dtype=np.float32), 16000)
    with zipfile.ZipFile(clips / "pack.zip", "w", compression=zipfile.ZIP_STORED) as z:
        z.write(clips / "a.wav", "inner.wav")
    with zipfile.ZipFile(clips / "pack.zip") as z:
        info = z.getinfo("inner.wav")
    raw = (clips / "pack.zip").read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    offset = info.header_offset + 30 + name_len + extra_len
    rows = ["id\taudio", "u0\ta.wav", f"u1\tpack.zip:{offset}:{info.file_size}", "u2\tmissing.wav"]
    (tmp_path / "test.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "vocab_filename": str(mbart_dir / "dict.txt"), "audio_root": "clips",
        "bpe_tokenizer": {"bpe": "sentencepiece", "sentencepiece_model": str(mbart_dir / "sentence.bpe.model")}}))
    files = audio_files(tmp_path, ["test"], tmp_path / "out")
    assert files[("test", 0)] == clips / "a.wav" and files[("test", 2)] is None
    assert files[("test", 1)].suffix == ".wav" and files[("test", 1)].read_bytes() == (clips / "a.wav").read_bytes()


def test_decoded_system_refuses_a_partial_decode(tmp_path):
    from comsl_fairseq.evaluation.decoded_system import read_system

    (tmp_path / "test.tsv").write_text("id\tsrc_lang\na\tfr\nb\tde\nc\tfr\n", encoding="utf-8")
    _generate_log(tmp_path / "sys" / "generate-test.txt", [("x", "y"), ("x", "y")])
    with pytest.raises(ValueError, match=r"2 decoded utterances for the 3 rows of .*test\.tsv"):
        read_system(tmp_path / "sys", tmp_path)
    groups = read_system(tmp_path / "sys")  # without the manifest: one group named by the subset
    assert list(groups) == ["test"] and len(groups["test"].hyps) == 2


def test_a_reference_with_unknown_pieces_still_matches_its_manifest_text():
    from comsl_fairseq.evaluation.covost import same_reference

    assert same_reference('my <<unk>>friend<<unk>> eats', 'my "friend" eats')  # pieces outside the dictionary
    assert same_reference("x \u2047 y", "x é y")  # a character outside the SentencePiece model
    assert same_reference("a  b", "a b")
    assert not same_reference("my <<unk>> eats", "your friend eats")
    assert not same_reference("one", "two")
