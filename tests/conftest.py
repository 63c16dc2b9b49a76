"""Session fixtures: tiny real-format checkpoints and a speech data folder."""
import logging

import pytest

import comsl_fairseq  # noqa: F401  (registers components, installs the checkpoint allowlist)
from tests import builders

logging.getLogger("fairseq").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def mbart_dir(tmp_path_factory):
    return builders.write_mbart_archive(tmp_path_factory.mktemp("mbart50"))


@pytest.fixture(scope="session")
def whisper_pt(tmp_path_factory):
    return builders.write_whisper_checkpoint(tmp_path_factory.mktemp("whisper") / "tiny.pt")


@pytest.fixture(scope="session")
def whisper128_pt(tmp_path_factory):
    return builders.write_whisper_checkpoint(tmp_path_factory.mktemp("whisper128") / "large-v3-like.pt",
                                             n_mels=128, dim=32, layers=1)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, mbart_dir):
    return builders.write_speech_data(tmp_path_factory.mktemp("data"), mbart_dir)
