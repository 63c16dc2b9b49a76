"""Criterion comsl_multitask: weighted CE terms, zero weights skip their branches."""
import torch
import torch.nn.functional as F

from comsl_fairseq.criterions.terms import token_cross_entropy
from tests.builders import build_task_and_model


def test_token_cross_entropy_matches_reference():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 5, 11), torch.randint(4, 11, (2, 5))
    target[1, 3:] = 1  # padding
    term = token_cross_entropy(logits, target, pad=1)
    ref = F.cross_entropy(logits.view(-1, 11), target.view(-1), ignore_index=1, reduction="sum")
    assert torch.allclose(term.loss, ref) and term.n_tokens == 8
    assert term.n_correct == int(((logits.argmax(-1) == target) & target.ne(1)).sum())


def test_weighted_sum_and_skipped_branches(data_dir):
    cfg, task, model = build_task_and_model(data_dir, "--asr-weight", "0", "--st-weight", "0.5", "--mt-weight", "0.25")
    criterion = task.build_criterion(cfg.criterion)
    task.load_dataset("test")
    ds = task.dataset("test")
    sample = ds.collater([ds[i] for i in range(3)])
    seen = []
    model.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs["branches"]), with_kwargs=True)
    model.eval()
    loss, sample_size, log = criterion(model, sample)
    assert seen == [("st", "mt")] and "asr_loss" not in log
    assert sample_size == sample["ntokens"] == int(sample["target"].ne(1).sum())
    with torch.no_grad():
        out = model(**sample["net_input"], branches=("st", "mt"))
    st = token_cross_entropy(out["st"][0], sample["target"], 1).loss
    mt = token_cross_entropy(out["mt"][0], sample["target"], 1).loss
    assert torch.allclose(loss, 0.5 * st + 0.25 * mt, rtol=1e-5)
    assert abs(log["st_loss"] - st.item()) < 1e-3 and log["st_ntokens"] == sample["ntokens"]
