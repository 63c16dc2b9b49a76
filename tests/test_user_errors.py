"""Every console script turns bad input into one line naming the file, a non-zero exit and no traceback."""
import importlib
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.builders import USER_DIR


class _Evil:
    """Pickled as a call to os.system: a file that would run code when loaded."""

    def __reduce__(self):
        return (os.system, ("echo this must never run",))


@pytest.fixture(scope="module")
def bad(tmp_path_factory, mbart_dir):
    d = tmp_path_factory.mktemp("bad")
    good = d / "good.pt"
    torch.save({"weights": torch.zeros(64, 64)}, good)
    (d / "empty.pt").write_bytes(b"")
    (d / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    torch.save({"weights": torch.zeros(2)}, d / "foreign.pt")
    torch.save({"x": _Evil()}, d / "code.pt")
    (d / "text.pt").write_text("not a checkpoint\n")
    for name, text in (("yaml_syntax", "vocab_filename: [unclosed\n"),
                       ("yaml_python", "vocab_filename: !!python/object/apply:os.system ['echo no']\n"),
                       ("bad_spm", f"vocab_filename: {mbart_dir / 'dict.txt'}\nbpe_tokenizer:\n  bpe: sentencepiece\n"
                                   "  sentencepiece_model: broken.bpe.model\n")):
        (d / name).mkdir()
        (d / name / "config.yaml").write_text(text)
        (d / name / "train.tsv").write_text("id\taudio\tn_frames\tsrc_text\ttgt_text\tsrc_lang\ttgt_lang\n")
    (d / "bad_spm" / "broken.bpe.model").write_bytes(b"not a SentencePiece model")
    # A checkpoint that gets as far as reading its data config (export needs no more to fail).
    torch.save({"cfg": {"task": {"data": str(d / "gone")}, "model": {"_name": "x"}}, "model": {}}, d / "cfg_only.pt")
    (d / "hf_whisper").mkdir()
    (d / "hf_whisper" / "config.json").write_text('{"model_type": "whisper"}')
    shutil.copy(d / "truncated.pt", d / "hf_whisper" / "pytorch_model.bin")
    (d / "empty.log").write_text("")
    return d


def _run(tool: str, *argv) -> tuple:
    """(exit status, standard error) of ``comsl-<tool>`` run in this process."""
    import contextlib
    import io

    main = importlib.import_module(f"comsl_fairseq.cli.{tool}").main
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as e:  # argparse and explicit "error: ..." exits
            status = e.code
            if isinstance(e.code, str):
                print(e.code, file=err)
                status = 1
    return status, err.getvalue() + out.getvalue()


def _cases(d: Path, data_dir: Path) -> list:
    """(tool, argv, the file the message must name)."""
    clip = next((data_dir / "clips").glob("*.wav"))
    cases = []
    for name in ("empty.pt", "truncated.pt", "foreign.pt", "code.pt", "text.pt"):
        cases += [("translate", ["--path", d / name, clip, "--src-lang", "fr"], d / name),
                  ("export", ["--path", d / name, "--out", d / "out"], d / name),
                  ("average_checkpoints", ["--inputs", d / name, d / "foreign.pt", "--out", d / "avg.pt"], d / name)]
    for name in ("empty.pt", "code.pt"):
        cases.append(("modality_gap", ["--path", d / name, "--data", data_dir, "--subsets", "test",
                                       "--out", d / "gap"], d / name))
    for name in ("yaml_syntax", "yaml_python", "bad_spm"):
        want = d / name / ("broken.bpe.model" if name == "bad_spm" else "config.yaml")
        cases.append(("export", ["--path", d / "cfg_only.pt", "--out", d / "out", "--data", d / name], want))
        cases.append(("preflight", [d / name, "--user-dir", USER_DIR, "--task", "comsl_speech_to_text",
                                    "--arch", "whisper_mbart_composite_tiny", "--steps", "0"], want))
    cases += [
        ("convert_whisper", [d / "hf_whisper", "--out", d / "w.pt"], d / "hf_whisper" / "pytorch_model.bin"),
        ("convert_hf_mbart50", ["--hf-dir", d / "yaml_syntax", "--out", d / "mb"], d / "yaml_syntax" / "config.json"),
        ("plot_training", [d / "empty.log", "--out", d / "x.png"], d / "empty.log"),
        ("compare_systems", [d / "empty.log", d / "empty.log", "--samples", "0"], "--samples"),
        ("compare_systems", [d / "empty.log", d / "empty.log"], d / "empty.log"),
        ("score_covost", ["--gen-dir", d, "--data", data_dir], "--langs"),
    ]
    return cases


def test_bad_inputs_end_in_one_named_line(bad, data_dir):
    for tool, argv, named in _cases(bad, data_dir):
        status, err = _run(tool, *argv)
        errors = [line for line in err.splitlines() if line.startswith(("error:", "[FAIL]"))]  # preflight: [FAIL]
        assert status not in (0, None), (tool, argv, err[-2000:])
        assert "Traceback" not in err and len(errors) == 1, (tool, argv, err[-2000:])
        assert str(named) in errors[0], (tool, argv, errors[0])
        unsafe_load = "weights_only" + "=False"  # the flag that would run the pickle's code
        assert unsafe_load not in err and "this must never run" not in err
    status, err = _run("export", "--path", bad / "code.pt", "--out", bad / "out")
    assert "would run code when loaded" in err and "is refused" in err
    status, err = _run("translate", "--path", bad / "text.pt", bad / "text.pt", "--src-lang", "fr")
    assert "not a torch checkpoint" in err and "would run code" not in err  # not a false security claim
    assert not (bad / "out").exists() and not list(bad.glob(".out*"))


def test_debug_shows_the_traceback(bad):
    with pytest.raises(ValueError, match="would run code when loaded"):
        importlib.import_module("comsl_fairseq.cli.export").main(
            ["--path", str(bad / "code.pt"), "--out", str(bad / "out"), "--debug"])


def test_every_command_lists_debug_in_its_help(capsys):
    from importlib.metadata import entry_points

    scripts = [ep for ep in entry_points(group="console_scripts") if ep.name.startswith("comsl-")]
    cli = Path(importlib.import_module("comsl_fairseq.cli").__file__).parent
    modules = {f"comsl_fairseq.cli.{f.stem}" for f in cli.glob("*.py") if f.stem not in ("__init__", "command")}
    assert {ep.module for ep in scripts} == modules  # every command module is installed as a script
    for ep in scripts:
        with pytest.raises(SystemExit) as exit_info:
            ep.load()(["--help"])
        out = capsys.readouterr().out
        assert exit_info.value.code == 0 and "--debug" in out and "traceback" in out, (ep.name, out[-500:])


def _checkpoint(folder: Path, name, arch="whisper_mbart_composite_tiny", dict_sha="a" * 64, trim=None) -> Path:
    """A small checkpoint with a vocabulary fingerprint, as averaging reads them."""
    fingerprint = {"dict_txt": {"file": "dict.txt", "symbols": 5, "sha256": dict_sha},
                   "sentencepiece_model": {"file": "sentence.bpe.model", "sha256": "b" * 64}}
    if trim is not None:
        fingerprint["trim"] = trim
    torch.save({"model": {"w": torch.ones(2)}, "cfg": {"model": {"_name": arch}},
                "task_state": {"vocabulary": fingerprint}}, folder / name)
    return folder / name


def test_averaging_refuses_other_vocabularies_and_architectures(tmp_path):
    def checkpoint(name, **kwargs):
        return _checkpoint(tmp_path, name, **kwargs)

    a, b = checkpoint("a.pt"), checkpoint("b.pt", dict_sha="c" * 64)
    status, err = _run("average_checkpoints", "--inputs", a, b, "--out", tmp_path / "avg.pt")
    assert status == 2 and "were trained with different vocabularies" in err and str(a) in err and str(b) in err
    # the same files, trimmed to other rows: the message says how the two differ
    t = checkpoint("t.pt", trim={"file": "keep.txt", "rows": 4, "full_rows": 5, "sha256": "d" * 64, "full_ids": []})
    status, err = _run("average_checkpoints", "--inputs", a, t, "--out", tmp_path / "avg.pt")
    assert status == 2 and "full vocabulary vs" in err and "trimmed to 4 rows" in err
    c = checkpoint("c.pt", arch="whisper_mbart_composite_medium")
    status, err = _run("average_checkpoints", "--inputs", a, c, "--out", tmp_path / "avg.pt")
    assert status == 2 and "whisper_mbart_composite_medium" in err and not (tmp_path / "avg.pt").exists()
    status, _ = _run("average_checkpoints", "--inputs", a, checkpoint("d.pt"), "--out", tmp_path / "avg.pt")
    assert status == 0 and (tmp_path / "avg.pt").is_file()


def test_outputs_stay_inside_the_folder_named(tmp_path):
    """--out naming an existing folder writes inside it, never beside it; an empty --out (an unset
    shell variable) is refused instead of writing into the current folder."""
    from comsl_fairseq.evaluation.logs import write_generate_log

    a, b = _checkpoint(tmp_path, "a.pt"), _checkpoint(tmp_path, "b.pt")
    folder = tmp_path / "avg"
    folder.mkdir()
    status, err = _run("average_checkpoints", "--inputs", a, b, "--out", folder)
    assert status == 0 and (folder / "checkpoint_avg.pt").is_file(), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "avg", "b.pt"]  # no .tmp, nothing beside
    log = write_generate_log(tmp_path / "logs" / "generate-test.txt", ["a cat", "the house"], ["a cat", "a house"])
    (tmp_path / "cmp").mkdir()
    status, err = _run("compare_systems", log, log, "--samples", "5", "--out", tmp_path / "cmp")
    assert status == 0 and (tmp_path / "cmp" / "compare.json").is_file(), err
    for tool, argv in (("translate", ["--path", a, a, "--src-lang", "fr", "--out", ""]),
                       ("average_checkpoints", ["--inputs", a, b, "--out", " "]),
                       ("compare_systems", [log, log, "--out", f"{tmp_path}/nowhere/"]),
                       ("translate", ["--path", a, a, "--src-lang", "fr", "--beam", "0"]),
                       ("translate", ["--path", a, a, "--src-lang", "fr", "--max-len-b", "-1"]),
                       ("translate", ["--path", a, a, "--src-lang", "fr", "--batch-size", "0"])):
        status, err = _run(tool, *argv)
        assert status == 2 and "Traceback" not in err and ("empty path" in err or "no such folder" in err
                                                           or "must be at least 1" in err), (tool, argv, err)
    status, err = _run("translate", "--path", a, a, "--src-lang", "fr", "--out", a)  # a file, not a folder
    assert status == 2 and f"--out {a} is a file" in err


def test_generate_logs_that_cannot_be_scored_are_named(tmp_path):
    from comsl_fairseq.evaluation.logs import write_generate_log

    good = write_generate_log(tmp_path / "a" / "generate-test.txt", ["a cat", "a house"], ["a cat", "a house"])
    binary = tmp_path / "b" / "generate-test.txt"
    binary.parent.mkdir()
    binary.write_bytes(b"T-0\ta cat\n\xee\xff\x00 not text\n")
    twice = tmp_path / "c" / "generate-test.txt"
    twice.parent.mkdir()
    twice.write_text(good.read_text() + "T-1\ta house\nD-1\t0.0\tanother house\n")  # two runs in one file
    for other, reason in ((binary, "is not UTF-8 text"), (twice, "sample 1 has two T- lines")):
        status, err = _run("compare_systems", good, other, "--samples", "5")
        assert status == 2 and str(other) in err and reason in err and "Traceback" not in err, err
