"""Criterion comsl_multitask: the weighted sum of the terms, skipped passes, training strategies."""
import pytest
import torch
import torch.nn.functional as F

from tests.builders import build_task_and_model

PAD = 1


@pytest.fixture(scope="module")
def setup(data_dir, whisper_pt, mbart_dir):
    def make(*extra):
        cfg, task, model = build_task_and_model(data_dir, "--whisper-checkpoint", str(whisper_pt),
                                                "--mbart-checkpoint", str(mbart_dir / "model.pt"), *extra)
        task.load_dataset("test")
        ds = task.dataset("test")
        sample = ds.collater([ds[i] for i in range(4)])
        return task.build_criterion(cfg.criterion), model, sample, task
    return make


def count_decoder_calls(model):
    """Decoder passes, counted in batches of the sample's size (passes that share a decoder
    input run as one stacked call)."""
    calls = []
    model.decoder.register_forward_hook(lambda module, args, out: calls.append(args[0].size(0)))
    return calls


def passes(calls, batch_size):
    return sum(calls) // batch_size


def ce(logits, target, count=None):
    keep = target.ne(PAD) if count is None else target.ne(PAD) & count
    return F.cross_entropy(logits[keep].float(), target[keep], reduction="sum")


def soft_ce(student, teacher, target):
    keep = target.ne(PAD)
    q = F.softmax(teacher[keep].float(), -1)
    return -(q * F.log_softmax(student[keep].float(), -1)).sum()


def test_full_objective_equals_spec_combination(setup):
    criterion, model, sample, _ = setup("--erm-layer", "2")
    model.eval()  # no dropout, so that a second forward reproduces the first
    calls = count_decoder_calls(model)
    torch.manual_seed(123)
    loss, sample_size, log = criterion(model, sample)
    assert passes(calls, sample["nsentences"]) == 6  # ST, ASR, MT, STM-ASR, STM-ST, MTP: no seventh pass
    assert sample_size == int(sample["target"].ne(PAD).sum())

    torch.manual_seed(123)
    masked_tokens, masked = criterion.mask_transcript(sample["transcript"])
    with torch.no_grad():
        out = model(**sample["net_input"], cml_text_tokens=masked_tokens, erm_layer=2,
                    branches=("st", "asr", "mt", "stm_asr", "stm_st", "mtp"))
    y, x = sample["target"], sample["transcript"]
    lg = {k: out[k][0] for k in ("st", "asr", "mt", "stm_asr", "stm_st", "mtp")}
    a = 0.8
    st = (1 - a) * ce(lg["st"], y) + a * soft_ce(lg["st"], lg["mt"], y)
    asr = ce(lg["asr"], x)
    mt = ce(lg["mt"], y)  # no teacher given: plain CE
    stm_asr = ce(lg["stm_asr"], x)
    stm_st = (1 - a) * ce(lg["stm_st"], y) + a * soft_ce(lg["stm_st"], lg["mt"], y)
    mtp = ce(lg["mtp"], x, count=masked)
    hs, hc, speech_mask = out["erm"]
    dist = (F.normalize(hs, dim=-1) - F.normalize(hc, dim=-1)).norm(dim=-1).transpose(0, 1)
    erm = dist[~speech_mask].sum()
    cml = (stm_asr + stm_st + mtp) / 3 + 0.2 * erm
    total = 0.35 * st + 0.35 * asr + 0.2 * mt + 0.1 * cml
    assert torch.allclose(loss, total, rtol=1e-5)
    for key in ("st", "asr", "mt", "stm_asr", "stm_st", "mtp", "erm"):
        assert f"{key}_loss" in log and int(log[f"{key}_ntokens"]) > 0
    assert int(log["mtp_ntokens"]) == int(masked.sum()) > 0
    assert not (masked & ~sample["transcript"].ne(PAD)).any()


@pytest.mark.parametrize("flags,expected_calls,absent", [
    (("--asr-weight", "0", "--cml-weight", "0", "--ddm-alpha", "0", "--mt-weight", "0"), 1, ("asr", "mt", "mtp")),
    (("--asr-weight", "0", "--cml-weight", "0", "--mt-weight", "0"), 2, ("asr", "mtp")),  # MT pass = DDM teacher
    (("--cml-weight", "0",), 3, ("stm_asr", "stm_st", "mtp", "erm")),
    (("--erm-weight", "0", "--erm-layer", "2"), 6, ("erm",)),
])
def test_zero_weights_skip_their_passes(setup, flags, expected_calls, absent):
    criterion, model, sample, _ = setup(*flags)
    calls = count_decoder_calls(model)
    _, _, log = criterion(model, sample)
    assert passes(calls, sample["nsentences"]) == expected_calls
    for key in absent:
        assert f"{key}_loss" not in log


def test_enc_grad_mult_scales_gradients_into_encoder_outputs(setup):
    def grads(mult, branch_flags):
        torch.manual_seed(0)
        criterion, model, sample, _ = setup("--enc-grad-mult", mult, "--dropout", "0", "--adapter-dropout", "0",
                                            *branch_flags)
        loss, _, _ = criterion(model.eval(), sample)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    st_only = ("--asr-weight", "0", "--mt-weight", "0", "--cml-weight", "0", "--ddm-alpha", "0")
    g1, g2 = grads("1", st_only), grads("2", st_only)
    for name in ("encoder.adapter.conv2.conv.weight", "encoder.whisper.blocks.0.mlp.0.weight",
                 "encoder.mbart.layers.0.fc1.weight"):  # reached only through H_s
        assert torch.allclose(g2[name], 2 * g1[name], rtol=1e-4, atol=1e-9), name
    assert torch.allclose(g2["decoder.layers.0.fc1.weight"], g1["decoder.layers.0.fc1.weight"])  # decoder: unscaled
    mt_only = ("--asr-weight", "0", "--st-weight", "0", "--cml-weight", "0", "--ddm-alpha", "0")
    g1, g2 = grads("1", mt_only), grads("2", mt_only)
    assert torch.allclose(g2["encoder.mbart.layers.1.fc2.weight"], 2 * g1["encoder.mbart.layers.1.fc2.weight"],
                          rtol=1e-4, atol=1e-9)


def test_frozen_whisper_gets_no_gradient_until_n_updates(setup):
    criterion, model, sample, _ = setup("--freeze-whisper-updates", "2")
    for update, frozen in ((0, True), (1, True), (2, False)):
        model.zero_grad()
        model.set_num_updates(update)
        criterion(model.train(), sample)[0].backward()
        whisper_grads = [p.grad for p in model.encoder.whisper.parameters()]
        assert all(g is None for g in whisper_grads) == frozen
        assert model.encoder.adapter.conv1.conv.weight.grad is not None  # the adapter always trains


def test_mt_teacher_is_frozen_in_eval_mode_and_not_saved(setup, mbart_dir):
    criterion, model, sample, _ = setup("--mt-teacher", str(mbart_dir / "model.pt"), "--cml-weight", "0")
    criterion.train()
    teacher = criterion.teacher
    assert teacher is not None and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert list(criterion.parameters()) == [] and criterion.state_dict() == {}
    before = [p.clone() for p in teacher.parameters()]
    loss, _, log = criterion(model.train(), sample)
    loss.backward()
    assert not teacher.training and all(torch.equal(a, b) for a, b in zip(before, teacher.parameters(), strict=True))
    # MT = (1 - a_t) CE(p(y|H_x), y) + a_t softCE(p_teacher || p(y|H_x)), a_t = 0.2
    _, _, log = criterion(model.eval(), sample)
    with torch.no_grad():
        mt = model(**sample["net_input"], branches=("mt",))["mt"][0]
        p_teacher = teacher(sample["net_input"]["src_text_tokens"],
                            prev_output_tokens=sample["net_input"]["prev_output_tokens"])[0]
    y = sample["target"]
    expected = 0.8 * ce(mt, y) + 0.2 * soft_ce(mt, p_teacher, y)
    assert abs(float(log["mt_loss"]) - expected.item()) < 1e-4 * expected.item()
    assert abs(float(log["mt_loss"]) - ce(mt, y).item()) > 1e-3  # the teacher's share is really there


def test_logging_outputs_hold_tensors_that_reduce_metrics_sums(setup):
    from fairseq import metrics

    criterion, model, sample, _ = setup("--erm-layer", "2")
    torch.manual_seed(0)
    _, _, log = criterion(model.eval(), sample)
    terms = ("st", "asr", "mt", "stm_asr", "stm_st", "mtp", "erm")
    for key in ("loss",) + tuple(f"{t}_{part}" for t in terms for part in ("loss", "ntokens", "correct")):
        assert torch.is_tensor(log[key]) and log[key].dim() == 0, key  # no .item() per term
    with metrics.aggregate() as agg:
        criterion.reduce_metrics([log, log])  # two identical steps: per-token figures unchanged
        values = agg.get_smoothed_values()
    ln2 = torch.log(torch.tensor(2.0)).item()
    for t in terms:
        scale = 1.0 if t == "erm" else 1 / ln2
        assert values[f"{t}_loss"] == pytest.approx(float(log[f"{t}_loss"] / log[f"{t}_ntokens"]) * scale, abs=1e-3)
    assert values["st_acc"] == pytest.approx(100 * float(log["st_correct"]) / float(log["st_ntokens"]), abs=0.01)
    assert "erm_acc" not in values and not any(k.startswith("_") for k in values)


def test_reduce_false_gives_one_loss_per_sentence(setup):
    criterion, model, sample, _ = setup("--erm-layer", "2")
    model.eval()
    torch.manual_seed(5)
    summed, _, _ = criterion(model, sample)
    torch.manual_seed(5)
    per_sentence, _, log = criterion(model, sample, reduce=False)
    assert per_sentence.shape == (sample["nsentences"],)
    assert torch.allclose(per_sentence.sum(), summed, rtol=1e-5)
    assert (per_sentence > 0).all() and torch.allclose(log["loss"], summed.detach(), rtol=1e-5)


def test_mask_prob_zero_masks_nothing(setup):
    criterion, model, sample, _ = setup("--mask-prob", "0", "--erm-layer", "2")
    tokens, masked = criterion.mask_transcript(sample["transcript"])
    assert not masked.any() and torch.equal(tokens, sample["transcript"])
    loss, _, log = criterion(model, sample)
    assert int(log["mtp_ntokens"]) == 0 and float(log["mtp_loss"]) == 0.0 and torch.isfinite(loss)


def test_erm_layer_is_clamped_without_changing_the_option(setup):
    criterion, model, sample, _ = setup()  # --erm-layer 4 (the default), 2 mBART encoder layers
    assert criterion.erm_layer_for(model) == 2
    assert criterion.erm_layer == 4  # a deeper model later still gets layer 4
