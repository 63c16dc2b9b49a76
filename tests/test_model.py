"""The composite model: batch invariance, strict loading, padding modes, presets."""
from argparse import Namespace

import pytest
import torch

from comsl_fairseq.checkpoints.pretrained import CheckpointError, MbartDims, WhisperDims
from comsl_fairseq.modules.lengths import speech_lengths
from tests.builders import build_task_and_model


@pytest.fixture(scope="module")
def loaded(data_dir, mbart_dir, whisper_pt):
    cfg, task, model = build_task_and_model(data_dir, "--whisper-checkpoint", str(whisper_pt),
                                            "--mbart-checkpoint", str(mbart_dir / "model.pt"))
    task.load_dataset("test")
    return cfg, task, model.eval()


def short_and_long(task):
    ds = task.dataset("test")
    order = ds.n_samples.argsort()
    return ds[int(order[0])], ds[int(order[-1])], ds


def test_translation_does_not_depend_on_the_batch(loaded):
    _, task, model = loaded
    short, long_, ds = short_and_long(task)
    alone, both = ds.collater([short]), ds.collater([short, long_])
    assert both["net_input"]["src_tokens"].size(1) > alone["net_input"]["src_tokens"].size(1)
    with torch.no_grad():
        enc1 = model.encoder(**{k: v for k, v in alone["net_input"].items() if k != "prev_output_tokens"})
        enc2 = model.encoder(**{k: v for k, v in both["net_input"].items() if k != "prev_output_tokens"})
    t = enc1["encoder_out"][0].size(0)
    assert not enc2["encoder_padding_mask"][0][0, :t].any() and enc2["encoder_padding_mask"][0][0, t:].all()
    diff = (enc2["encoder_out"][0][:t, 0] - enc1["encoder_out"][0][:, 0]).abs().max().item()
    print(f"composite encoder batch invariance: max abs diff {diff:.2e}")
    assert diff <= 1e-5

    generator = task.build_generator([model], Namespace(beam=5, prefix_size=1, max_len_b=12))
    hyp1 = task.inference_step(generator, [model], alone, prefix_tokens=alone["target"][:, :1])[0][0]
    hyp2 = task.inference_step(generator, [model], both, prefix_tokens=both["target"][:, :1])[0][0]
    assert torch.equal(hyp1["tokens"], hyp2["tokens"])
    assert abs(float(hyp1["score"]) - float(hyp2["score"])) < 1e-4


def test_padding_as_attention_mask_gives_the_same_encoder_output(loaded, monkeypatch):
    """Without gradients a small padded batch reaches the mBART layers as a boolean attention
    mask (no key-padding mask: torch's check of one imports sympy); bit for bit the same as the
    key-padding mask, which training and large batches keep."""
    from comsl_fairseq.modules import composite_encoder

    _, task, model = loaded
    short, long_, ds = short_and_long(task)
    net_input = {k: v for k, v in ds.collater([short, long_])["net_input"].items() if k != "prev_output_tokens"}
    calls = []
    real = composite_encoder._padding_masks
    monkeypatch.setattr(composite_encoder, "_padding_masks", lambda *a: calls.append(real(*a)) or calls[-1])
    outs, default = {}, composite_encoder.ATTN_MASK_MAX_ELEMENTS
    for cap in (0, default):
        monkeypatch.setattr(composite_encoder, "ATTN_MASK_MAX_ELEMENTS", cap)
        with torch.no_grad():
            outs[cap] = model.encoder(**net_input)["encoder_out"][0]
    assert calls[0][0] is not None and calls[0][1] is None  # over the cap: the key-padding mask
    key_padding, attn_mask = calls[1]
    assert key_padding is None and attn_mask.dtype == torch.bool and attn_mask.stride(1) == 0
    assert torch.equal(outs[0], outs[default])
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[1, 3:] = True
    with torch.no_grad():
        heads = model.encoder.mbart.layers[0].self_attn.num_heads
        assert real(mask, True, model.encoder.mbart.layers)[1].shape == (2 * heads, 5, 5)  # B*heads x T x T
    assert real(mask, True, model.encoder.mbart.layers)[1] is None  # with gradients (training): key padding


def test_generation_requires_forced_tag(loaded):
    _, task, model = loaded
    with pytest.raises(ValueError, match="--prefix-size 1"):
        task.build_generator([model], Namespace(beam=5, prefix_size=0))


def test_all_branches_in_one_forward(loaded):
    _, task, model = loaded
    short, long_, ds = short_and_long(task)
    batch = ds.collater([short, long_])
    out = model(**batch["net_input"], branches=("st", "asr", "mt"))
    V = len(task.target_dictionary)
    assert out["st"][0].shape == (*batch["target"].shape, V)
    assert out["mt"][0].shape == (*batch["target"].shape, V)
    assert out["asr"][0].shape == (*batch["transcript"].shape, V)


def test_dims_are_saved_in_the_config(loaded):
    cfg, _, model = loaded
    whisper, mbart = WhisperDims.from_cfg(cfg.model), MbartDims.from_cfg(cfg.model)
    assert (whisper.n_audio_state, whisper.n_mels, whisper.n_audio_layer) == (64, 80, 2)
    assert (mbart.dim, mbart.ffn_dim, mbart.encoder_layers, mbart.max_positions) == (32, 64, 2, 1024)
    assert cfg.model.whisper_dims == whisper.to_cfg() and "whisper_dim" not in cfg.model
    assert model.encoder.mbart.embed_tokens is model.decoder.embed_tokens
    assert model.decoder.output_projection.weight is model.decoder.embed_tokens.weight


def test_new_tags_start_from_the_mean_tag_embedding(loaded):
    _, task, model = loaded
    d = task.target_dictionary
    emb = model.decoder.embed_tokens.weight
    assert len(d) == task.n_pretrained_rows + 2
    ml50 = emb[task.n_pretrained_rows - 53: task.n_pretrained_rows - 1].mean(0)
    assert torch.allclose(emb[d.index("[cy_GB]")], ml50) and torch.allclose(emb[d.index("[ca_ES]")], ml50)


@pytest.mark.parametrize("seconds", ["11", "30"])
def test_fixed_padding_modes_run(data_dir, whisper_pt, seconds):
    _, task, model = build_task_and_model(data_dir, "--whisper-checkpoint", str(whisper_pt),
                                          "--whisper-pad-seconds", seconds)
    task.load_dataset("test")
    short, long_, ds = short_and_long(task)
    with torch.no_grad():
        enc = model.eval().encoder(**{k: v for k, v in ds.collater([short, long_])["net_input"].items()
                                      if k != "prev_output_tokens"})
    frames = int(speech_lengths(torch.tensor(int(seconds) * 16000))["adapter"]) + 1  # + the tag
    assert enc["encoder_out"][0].shape[:2] == (frames, 2)
    assert not enc["encoder_padding_mask"][0].any()


def test_random_init_tiny_and_128_mels(data_dir, whisper128_pt):
    _, _, model = build_task_and_model(data_dir)
    assert model.encoder.whisper.n_mels == 80 and model.encoder.mbart.embed_tokens.embedding_dim == 128
    _, _, model = build_task_and_model(data_dir, "--whisper-checkpoint", str(whisper128_pt))
    assert model.encoder.whisper.n_mels == 128


def test_medium_needs_checkpoints(data_dir, whisper_pt):
    with pytest.raises(ValueError, match="--whisper-checkpoint is required"):
        build_task_and_model(data_dir, arch="whisper_mbart_composite_medium")
    with pytest.raises(CheckpointError, match="expects a Whisper encoder of width 1024"):
        build_task_and_model(data_dir, "--whisper-checkpoint", str(whisper_pt), "--mbart-checkpoint", "x",
                             arch="whisper_mbart_composite_medium")


def test_mismatched_mbart_checkpoint_is_named(data_dir, whisper_pt, mbart_dir, tmp_path):
    state = torch.load(mbart_dir / "model.pt", weights_only=True)
    for key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight"):
        state["model"][key] = state["model"][key][:-3]  # as if built on another dict.txt
    torch.save(state, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="124 embedding rows") as e:
        build_task_and_model(data_dir, "--whisper-checkpoint", str(whisper_pt),
                             "--mbart-checkpoint", str(tmp_path / "model.pt"))
    assert "model.pt" in str(e.value) and "dict.txt" in str(e.value)


def test_strict_loading_names_every_mismatch(data_dir, whisper_pt, mbart_dir, tmp_path):
    state = torch.load(mbart_dir / "model.pt", weights_only=True)
    del state["model"]["decoder.layers.1.fc1.weight"]
    state["model"]["decoder.layers.9.fc1.weight"] = torch.zeros(1)
    state["model"]["encoder.layers.0.fc2.bias"] = torch.zeros(7)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError) as e:
        build_task_and_model(data_dir, "--whisper-checkpoint", str(whisper_pt), "--mbart-checkpoint", str(bad))
    msg = str(e.value)
    assert "bad.pt" in msg and "decoder.layers.1.fc1.weight" in msg and "decoder.layers.9.fc1.weight" in msg
    assert "encoder.layers.0.fc2.bias: checkpoint (7,)" in msg


def test_stacked_decoder_passes_equal_separate_ones(data_dir, whisper_pt):
    outs = []
    for flags in (("--stack-decoder-passes",), ()):
        torch.manual_seed(0)
        _, task, model = build_task_and_model(data_dir, "--whisper-checkpoint", str(whisper_pt), *flags)
        task.load_dataset("test")
        ds = task.dataset("test")
        batch = ds.collater([ds[i] for i in range(4)])
        with torch.no_grad():
            outs.append(model.eval()(**batch["net_input"], cml_text_tokens=batch["transcript"],
                                     branches=("st", "asr", "mt", "stm_asr", "stm_st", "mtp")))
    for name in ("st", "asr", "mt", "stm_asr", "stm_st", "mtp"):
        assert (outs[0][name][0] - outs[1][name][0]).abs().max().item() <= 1e-5, name


def test_activation_checkpointing_gives_the_same_gradients(data_dir, whisper_pt):
    grads = []
    for flags in ((), ("--checkpoint-activations",)):
        torch.manual_seed(0)
        cfg, task, model = build_task_and_model(data_dir, "--whisper-checkpoint", str(whisper_pt), "--dropout", "0",
                                                "--adapter-dropout", "0", "--erm-layer", "2", *flags)
        task.load_dataset("test")
        ds = task.dataset("test")
        criterion = task.build_criterion(cfg.criterion)
        torch.manual_seed(1)
        criterion(model.train(), ds.collater([ds[i] for i in range(3)]))[0].backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in ("encoder.whisper.blocks.0.mlp.0.weight", "encoder.mbart.layers.0.fc1.weight",
                 "decoder.layers.1.self_attn.k_proj.weight"):
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-4), name


def test_bf16_autocast_option_trains(data_dir):
    cfg, task, model = build_task_and_model(data_dir, "--autocast-bf16", "--erm-layer", "2")
    task.load_dataset("test")
    ds = task.dataset("test")
    criterion = task.build_criterion(cfg.criterion)
    dtypes = []  # of matrix products in the mBART encoder and decoder: bf16 only if the flag took effect
    for layer in (model.encoder.mbart.layers[0].fc1, model.decoder.layers[0].fc1):
        layer.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    loss, _, log = criterion(model.train(), ds.collater([ds[0], ds[1]]))
    assert dtypes and set(dtypes) == {torch.bfloat16}
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert next(model.parameters()).dtype == torch.float32 and model.decoder.embed_tokens.weight.grad is not None


def test_branch_table_routes_named_and_caller_defined_passes(loaded):
    from comsl_fairseq.modules.branches import CONCAT_TEXT, TRANSLATION, Branch

    _, task, model = loaded
    short, long_, ds = short_and_long(task)
    batch = ds.collater([short, long_])
    with pytest.raises(ValueError, match=r"unknown branches \['mt_from_concat'\]"):
        model(**batch["net_input"], branches=("st", "mt_from_concat"))
    with torch.no_grad():
        out = model(**batch["net_input"], cml_text_tokens=batch["transcript"],
                    branches={"x": Branch(CONCAT_TEXT, TRANSLATION)})
    assert set(out) == {"x"} and out["x"][0].shape == (*batch["target"].shape, len(task.target_dictionary))
    with pytest.raises(ValueError, match="not a branch"):
        Branch("speech", "nowhere")
