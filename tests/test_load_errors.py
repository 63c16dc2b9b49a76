"""Errors that name the real cause when a checkpoint or --arch does not fit."""
import pytest
import torch

from comsl_fairseq.checkpoints.pretrained import CheckpointError
from tests.builders import build_task_and_model


def test_another_arch_is_refused_by_name(data_dir):
    with pytest.raises(ValueError, match=r"--arch transformer is not a model of this plugin; .*"
                                         r"'whisper_mbart_composite_tiny'.*use the --arch the checkpoint"):
        build_task_and_model(data_dir, arch="transformer")


def test_dictionary_hint_only_when_embedding_rows_differ(data_dir):
    _, _, model = build_task_and_model(data_dir)
    _, _, wider = build_task_and_model(data_dir, ffn_dim=256)  # same dictionary, other widths
    with pytest.raises(CheckpointError) as e:
        model.load_state_dict(wider.state_dict())
    assert "dict.txt" not in str(e.value) and "decoder.layers.0.fc1.weight: checkpoint (256, 128)" in str(e.value)
    state = model.state_dict()
    rows = state["decoder.embed_tokens.weight"].size(0)
    state["decoder.embed_tokens.weight"] = torch.zeros(rows - 5, 128)
    with pytest.raises(CheckpointError, match=rf"another dict.txt\? the checkpoint has {rows - 5} token embedding "
                                              rf"rows, this dictionary {rows}\)"):
        model.load_state_dict(state)
