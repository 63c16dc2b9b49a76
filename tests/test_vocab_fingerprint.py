"""A checkpoint remembers its dict.txt and SentencePiece model."""
import re
import shutil

import pytest
import torch
import yaml
from fairseq import checkpoint_utils, tasks

from comsl_fairseq.vocab.fingerprint import (
    VocabularyMismatchError,
    check_vocabulary,
    checkpoint_fingerprint,
    vocabulary_fingerprint,
)
from tests.builders import fairseq_cfg
from tests.test_cli import generate_cmd, run
from tests.test_reliability import inner_args


def data_with_vocabulary(data_dir, out, dict_lines=None):
    """A copy of the data folder whose config points at its own copy of dict.txt and
    sentence.bpe.model; ``dict_lines`` rewrites that dict.txt."""
    shutil.copytree(data_dir, out)
    cfg = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    shutil.copy(cfg["vocab_filename"], out / "dict.txt")
    shutil.copy(cfg["bpe_tokenizer"]["sentencepiece_model"], out / "sentence.bpe.model")
    if dict_lines is not None:
        (out / "dict.txt").write_text("\n".join(dict_lines) + "\n", encoding="utf-8")
    cfg["vocab_filename"] = "dict.txt"
    cfg["bpe_tokenizer"]["sentencepiece_model"] = "sentence.bpe.model"
    cfg["audio_root"] = str(out / "clips")
    (out / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return out


def swapped(lines: list) -> list:
    """The same pieces, two of them in each other's place: same size, other ids."""
    lines = list(lines)
    lines[10], lines[11] = lines[11], lines[10]
    return lines


def test_fingerprint_tells_order_and_model_apart(data_dir, mbart_dir, tmp_path):
    same = data_with_vocabulary(data_dir, tmp_path / "same")
    base = vocabulary_fingerprint(mbart_dir / "dict.txt", mbart_dir / "sentence.bpe.model")
    check_vocabulary(base, vocabulary_fingerprint(same / "dict.txt", same / "sentence.bpe.model"))  # a copy: fine
    lines = (mbart_dir / "dict.txt").read_text(encoding="utf-8").splitlines()
    recount = [f"{line.split(' ')[0]} 7" for line in lines]  # other counts, same ids: fine
    (tmp_path / "recount.txt").write_text("\n".join(recount) + "\n", encoding="utf-8")
    check_vocabulary(base, vocabulary_fingerprint(tmp_path / "recount.txt", mbart_dir / "sentence.bpe.model"))
    (tmp_path / "swapped.txt").write_text("\n".join(swapped(lines)) + "\n", encoding="utf-8")
    with pytest.raises(VocabularyMismatchError, match=rf"dict.txt: trained with {re.escape(str(mbart_dir))}/dict.txt "
                                                      rf".*now {re.escape(str(tmp_path))}/swapped.txt"):
        check_vocabulary(base, vocabulary_fingerprint(tmp_path / "swapped.txt", mbart_dir / "sentence.bpe.model"))
    (tmp_path / "other.model").write_bytes((mbart_dir / "sentence.bpe.model").read_bytes() + b"\0")
    with pytest.raises(VocabularyMismatchError, match=r"SentencePiece model: trained with .*sentence.bpe.model "
                                                      r".*now .*other.model"):
        check_vocabulary(base, vocabulary_fingerprint(mbart_dir / "dict.txt", tmp_path / "other.model"))


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, data_dir):
    save = tmp_path_factory.mktemp("vocab_ckpt")
    run(*inner_args(data_dir, save, "--max-update", "2"))
    return save / "checkpoint_last.pt"


def test_checkpoint_refuses_a_reordered_dictionary(trained_checkpoint, data_dir, mbart_dir, tmp_path):
    state = torch.load(trained_checkpoint, map_location="cpu")
    saved = checkpoint_fingerprint(state)
    assert saved["dict_txt"]["file"] == str((mbart_dir / "dict.txt").resolve())
    assert state["extra_state"]["ComslSpeechToTextTask"]["vocabulary"] == saved  # what resuming reads
    lines = (mbart_dir / "dict.txt").read_text(encoding="utf-8").splitlines()
    other = data_with_vocabulary(data_dir, tmp_path / "other", swapped(lines))
    task = tasks.setup_task(fairseq_cfg(other).task)
    with pytest.raises(VocabularyMismatchError, match=r"dict.txt: trained with .*mbart50\S*/dict.txt .*now "
                                                      rf"{re.escape(str(other))}/dict.txt"):
        checkpoint_utils.load_model_ensemble_and_task([str(trained_checkpoint)], task=task)
    with pytest.raises(VocabularyMismatchError, match="the checkpoint resumed from was trained with other"):
        task.set_checkpoint_dict(state["extra_state"]["ComslSpeechToTextTask"])
    copied = data_with_vocabulary(data_dir, tmp_path / "copied")  # same files elsewhere: loads
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task(
        [str(trained_checkpoint)], task=tasks.setup_task(fairseq_cfg(copied).task))
    assert models[0] is not None


def test_generate_with_a_reordered_dictionary_names_both_files(trained_checkpoint, data_dir, mbart_dir, tmp_path):
    lines = (mbart_dir / "dict.txt").read_text(encoding="utf-8").splitlines()
    other = data_with_vocabulary(data_dir, tmp_path / "other", swapped(lines))
    with pytest.raises(AssertionError) as e:
        run(*generate_cmd(other, trained_checkpoint))
    now = re.escape(str(other / "dict.txt"))
    named = rf"VocabularyMismatchError: .*\n  dict.txt: trained with \S*/dict.txt .*now {now}"
    assert re.search(named, str(e.value)), str(e.value)[-2000:]
