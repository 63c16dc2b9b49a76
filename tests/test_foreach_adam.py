"""adam_grouped's foreach update equals fairseq's per-tensor Adam loop, bit for bit."""
import torch
from fairseq import optim
from fairseq.optim.adam import Adam

from comsl_fairseq.optim import adam_grouped
from comsl_fairseq.optim.adam_grouped import ForeachAdam
from tests.builders import build_task_and_model

FLAGS = ("--optimizer", "adam_grouped", "--weight-decay", "0.1", "--lr", "0.01", "--adam-betas", "(0.9, 0.98)",
         "--adam-eps", "1e-6")


def run_steps(cfg, model, n_steps=3, seed=0):
    """n Adam steps with random gradients (the same for every run); the parameters after."""
    params = [p for p in model.parameters()]
    start = [p.detach().clone() for p in params]
    optimizer = optim.build_optimizer(cfg.optimizer, params)
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_steps):
        for i, p in enumerate(params):
            p.grad = None if i == 3 else torch.randn(p.shape, generator=g)  # one tensor without a gradient
        optimizer.step()
    after = [p.detach().clone() for p in params]
    state = optimizer.optimizer.state_dict()
    with torch.no_grad():
        for p, s in zip(params, start, strict=True):
            p.copy_(s)
    return after, state, optimizer.optimizer


def test_foreach_update_equals_fairseq_loop(data_dir, monkeypatch):
    monkeypatch.setattr(adam_grouped, "FOREACH_BUCKET_ELEMENTS", 5000)  # several buckets per group
    cfg, _, model = build_task_and_model(data_dir, *FLAGS)
    cfg_loop, _, _ = build_task_and_model(data_dir, *FLAGS, "--no-foreach")
    fast, fast_state, fast_opt = run_steps(cfg, model)
    slow, slow_state, slow_opt = run_steps(cfg_loop, model)
    assert type(fast_opt) is ForeachAdam and type(slow_opt) is Adam
    assert sorted(g["weight_decay"] for g in fast_opt.param_groups) == [0.0, 0.1]
    for a, b in zip(fast, slow, strict=True):
        assert torch.equal(a, b)
    assert fast_state["state"].keys() == slow_state["state"].keys()
    for k, s in slow_state["state"].items():
        assert s["step"] == fast_state["state"][k]["step"] == 3
        assert torch.equal(s["exp_avg"], fast_state["state"][k]["exp_avg"])
        assert torch.equal(s["exp_avg_sq"], fast_state["state"][k]["exp_avg_sq"])
