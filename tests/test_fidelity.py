"""Options that make the recipes match the original ComSL run.

Options that make the recipes match the original ComSL run: the adapter's
activation, no weight decay on biases and norms, the text-only MT-stage architecture.
"""
import pytest
import torch
from fairseq import checkpoint_utils, optim
from omegaconf import OmegaConf
from torch import nn

from comsl_fairseq.modules.adapter import Adapter
from comsl_fairseq.modules.mbart import load_mbart_text_model
from tests.builders import build_task_and_model


def save_checkpoint(cfg, model, path, drop_option=None):
    """A checkpoint laid out as fairseq's trainer writes it (cfg as a plain container)."""
    saved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if drop_option:  # as written by a version that did not have this option yet
        del saved["model"][drop_option]
    torch.save({"cfg": saved, "args": None, "model": model.state_dict(), "last_optimizer_state": None,
                "optimizer_history": [{"criterion_name": "ComslMultitaskCriterion", "best_loss": None}],
                "extra_state": {"epoch": 1, "train_iterator": {"epoch": 1}}}, path)
    return path


def test_adapter_defaults_to_the_original_relu_without_dropout():
    torch.manual_seed(0)
    relu, gelu = Adapter(8, 12), Adapter(8, 12, activation="gelu")
    gelu.load_state_dict(relu.state_dict())
    assert relu.ffn_in.dropout.p == 0.0
    x, lengths = torch.randn(2, 10, 8), torch.tensor([10, 7])
    out_relu, out_gelu = relu.eval()(x, lengths)[0], gelu.eval()(x, lengths)[0]
    assert not torch.allclose(out_relu, out_gelu)
    with pytest.raises(ValueError, match="adapter activation 'tanh'"):
        Adapter(8, 12, activation="tanh")


def test_checkpoint_without_the_activation_option_loads_as_gelu(data_dir, whisper_pt, tmp_path):
    """Checkpoints written before --adapter-activation existed were trained with GELU."""
    cfg, task, model = build_task_and_model(data_dir, "--whisper-checkpoint", str(whisper_pt),
                                            "--adapter-activation", "gelu")
    path = save_checkpoint(cfg, model, tmp_path / "old.pt", drop_option="adapter_activation")
    models, _ = checkpoint_utils.load_model_ensemble([str(path)], task=task)
    assert models[0].encoder.adapter.ffn_in.activation is nn.functional.gelu
    _, _, fresh = build_task_and_model(data_dir, "--whisper-checkpoint", str(whisper_pt))
    assert fresh.encoder.adapter.ffn_in.activation is nn.functional.relu


def test_layer_norm_weight_and_bias_do_not_decay_while_matrices_do(data_dir):
    cfg, _, model = build_task_and_model(data_dir, "--optimizer", "adam_grouped", "--weight-decay", "0.1",
                                         "--lr", "0.01")
    optimizer = optim.build_optimizer(cfg.optimizer, list(model.parameters()))
    decays = sorted(g["weight_decay"] for g in optimizer.param_groups)
    assert decays == [0.0, 0.1]
    ln = model.encoder.mbart.layers[0].self_attn_layer_norm
    adapter_ln = model.encoder.adapter.ln_in
    matrix = model.encoder.mbart.layers[0].fc1.weight
    watched = {"ln.weight": ln.weight, "ln.bias": ln.bias, "adapter_ln.weight": adapter_ln.weight,
               "fc1.bias": model.encoder.mbart.layers[0].fc1.bias,
               "whisper ln_post": model.encoder.whisper.ln_post.weight, "matrix": matrix}
    before = {k: p.detach().clone() for k, p in watched.items()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: only weight decay can move a parameter
    optimizer.step()
    for name in ("ln.weight", "ln.bias", "adapter_ln.weight", "fc1.bias", "whisper ln_post"):
        assert torch.equal(watched[name].detach(), before[name]), name
    torch.testing.assert_close(matrix.detach(), before["matrix"] * (1 - 0.01 * 0.1))


def test_plain_adam_still_decays_everything(data_dir):
    cfg, _, model = build_task_and_model(data_dir, "--weight-decay", "0.1")
    optimizer = optim.build_optimizer(cfg.optimizer, list(model.parameters()))
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1]


def test_text_only_arch_has_no_speech_weights_and_initialises_a_composite(data_dir, mbart_dir, tmp_path):
    mbart = str(mbart_dir / "model.pt")
    cfg, task, model = build_task_and_model(data_dir, "--mbart-checkpoint", mbart, "--text-only",
                                            arch="mbart50_text")
    state = model.state_dict()
    assert state and not any(k.startswith(("encoder.whisper.", "encoder.adapter.")) for k in state)
    assert model.encoder.max_positions() is None
    task.load_dataset("dev")
    batch = task.dataset("dev").collater([task.dataset("dev")[i] for i in range(3)])
    with pytest.raises(ValueError, match="no speech encoder"):
        model(**batch["net_input"], branches=("st",))
    logits, _ = model(**batch["net_input"], branches=("mt",))["mt"]
    assert logits.shape[:2] == batch["target"].shape
    path = save_checkpoint(cfg, model, tmp_path / "checkpoint_last.pt")
    # it initialises a ComSL row, is the MT teacher, and is decodable as itself
    _, _, composite = build_task_and_model(data_dir, "--mbart-checkpoint", str(path))
    assert torch.equal(composite.encoder.mbart.layers[0].fc1.weight, model.encoder.mbart.layers[0].fc1.weight)
    teacher = load_mbart_text_model(path, task.target_dictionary, task.n_pretrained_rows, task.dictionary_path)
    assert torch.equal(teacher.decoder.layers[0].fc1.weight, model.decoder.layers[0].fc1.weight)
    models, _ = checkpoint_utils.load_model_ensemble([str(path)], task=task)
    assert models[0].encoder.whisper is None
    with pytest.raises(ValueError, match="drop --whisper-checkpoint"):
        build_task_and_model(data_dir, "--mbart-checkpoint", mbart, "--whisper-checkpoint", mbart,
                             arch="mbart50_text")


def bleu_log(lang, hyps, refs):
    from comsl_fairseq.training import valid_bleu as vb

    log = {}
    vb.add_stats(log, lang, vb.bleu_stats(hyps, refs, "13a"))
    return log


def test_checkpoint_metric_is_the_mean_of_per_language_bleu(data_dir):
    import sacrebleu
    from fairseq import metrics

    cfg, task, _ = build_task_and_model(data_dir, "--eval-bleu", "--eval-bleu-per-language")
    task.load_dataset("dev")
    assert task.valid_langs == ["de_DE", "fr_XX"]
    fr = (["the black cat sat on the mat", "a dog"], ["the black cat sat on the mat", "a dog barked loudly"])
    de = (["a red apple in the house"], ["a red apple"])
    logs = []
    for hyps, refs, lang in ((*fr, "fr_XX"), (*de, "de_DE")):
        log = {**bleu_log("", hyps, refs), **bleu_log(lang, hyps, refs)}
        log.update(bleu_log("de_DE" if lang == "fr_XX" else "fr_XX", [], []))  # absent: zeros
        logs.append(log)
    per_lang = [sacrebleu.corpus_bleu(*pair).score for pair in ((fr[0], [fr[1]]), (de[0], [de[1]]))]
    pooled = sacrebleu.corpus_bleu(fr[0] + de[0], [fr[1] + de[1]]).score
    with metrics.aggregate() as agg:
        task.reduce_metrics(logs, task.build_criterion(cfg.criterion))
        values = agg.get_smoothed_values()
    assert values["bleu"] == pytest.approx(sum(per_lang) / 2, abs=0.01)
    assert values["bleu_fr_XX"] == pytest.approx(per_lang[0], abs=0.01)
    assert values["bleu_pooled"] == pytest.approx(pooled, abs=0.01)
    assert abs(values["bleu"] - values["bleu_pooled"]) > 1  # the two selections differ here


def test_every_nth_dev_utterance_is_decoded(data_dir, mbart_dir):
    """Rows 0, 2, 4 of the fixture's dev set are French: with N = 2 no German is decoded."""
    results = {}
    for n in (1, 2):
        cfg, task, model = build_task_and_model(data_dir, "--mbart-checkpoint", str(mbart_dir / "model.pt"),
                                                "--eval-bleu", "--eval-bleu-per-language", "--eval-bleu-beam", "2",
                                                "--eval-bleu-max-len-b", "4", "--eval-bleu-every-nth", str(n))
        task.load_dataset("dev")
        ds = task.dataset("dev")
        batch = ds.collater([ds[i] for i in range(len(ds))])
        log = {}
        task.add_bleu_stats(log, model.eval(), batch)
        results[n] = log
    refs_words = {n: (log["_bleu_fr_XX_ref_len"], log["_bleu_de_DE_ref_len"], log["_bleu_ref_len"])
                  for n, log in results.items()}
    assert refs_words[1][0] > 0 and refs_words[1][1] > 0
    assert refs_words[2][0] == refs_words[1][0] and refs_words[2][1] == 0 and refs_words[2][2] == refs_words[2][0]
    assert set(results[1]) == set(results[2])  # the same keys in every batch, as fairseq's sync needs


def test_trailing_silence_is_read_and_keeps_batch_invariance(data_dir, whisper_pt):
    from comsl_fairseq.modules.lengths import speech_lengths

    outs = {}
    for silence in ("0", "0.5"):
        _, task, model = build_task_and_model(data_dir, "--whisper-checkpoint", str(whisper_pt),
                                              "--whisper-trailing-silence", silence)
        task.load_dataset("test")
        ds = task.dataset("test")
        order = ds.n_samples.argsort()
        short, long_ = ds[int(order[0])], ds[int(order[-1])]
        with torch.no_grad():
            encode = model.eval().encoder
            alone = encode(**{k: v for k, v in ds.collater([short])["net_input"].items() if k != "prev_output_tokens"})
            both = encode(**{k: v for k, v in ds.collater([short, long_])["net_input"].items()
                             if k != "prev_output_tokens"})
        t = alone["encoder_out"][0].size(0)
        expected = int(speech_lengths(torch.tensor(short["audio"].numel() + int(float(silence) * 16000)))["adapter"])
        assert t == expected + 1  # + the language tag
        torch.testing.assert_close(both["encoder_out"][0][:t, 0], alone["encoder_out"][0][:, 0], atol=1e-5, rtol=0)
        outs[silence] = alone["encoder_out"][0]
    n = outs["0"].size(0)
    assert outs["0.5"].size(0) > n and not torch.allclose(outs["0.5"][:n], outs["0"], atol=1e-3)
    with pytest.raises(ValueError, match="--whisper-pad-seconds 0 only"):
        build_task_and_model(data_dir, "--whisper-checkpoint", str(whisper_pt), "--whisper-trailing-silence", "1",
                             "--whisper-pad-seconds", "11")
