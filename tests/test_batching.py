"""Bucketing by audio and text length together, the token budget with text, and padding fractions."""
import numpy as np
import pytest

from comsl_fairseq.data.batching import bucketed_order, padding_fractions, token_cost


def test_padding_fractions_by_hand():
    audio, src, tgt = np.array([10, 6, 4, 4]), np.array([3, 3, 1, 2]), np.array([5, 1, 1, 1])
    frac = padding_fractions([[0, 1], [2, 3]], audio, src, tgt)
    assert frac["audio"] == pytest.approx(1 - 24 / (2 * 10 + 2 * 4))
    assert frac["transcript"] == pytest.approx(1 - 9 / (2 * 3 + 2 * 2))
    assert frac["translation"] == pytest.approx(1 - 8 / (2 * 5 + 2 * 1))


def test_order_is_audio_bucket_then_text_then_audio():
    audio = np.array([1900, 1100, 1500, 300, 2500, 2100])
    text = np.array([1, 2, 5, 7, 1, 1])
    assert bucketed_order(audio, text, 0).tolist() == [3, 1, 2, 0, 5, 4]  # audio alone
    # buckets of 1000 samples: {300}, {1900, 1100, 1500} by text 1, 2, 5, {2500, 2100} by text, then audio
    assert bucketed_order(audio, text, 1000).tolist() == [3, 0, 1, 2, 5, 4]
    start = np.array([5, 4, 3, 2, 1, 0])  # ties (none here) would follow this order
    assert sorted(bucketed_order(audio, text, 1000, start).tolist()) == list(range(6))


def corpus(n=4000, seed=0):
    """CoVoST-like: text length follows audio length loosely (speaking rates differ)."""
    rng = np.random.default_rng(seed)
    seconds = np.clip(rng.lognormal(np.log(4.6), 0.45, n), 1.0, 15.0)
    audio = (seconds * 16000).astype(np.int64)
    src = np.maximum(3, seconds * rng.uniform(1.5, 5.0, n)).astype(np.int64)
    tgt = np.maximum(3, src + rng.integers(-3, 4, n))
    return audio, src, tgt


def batches_of(order, size):
    return [order[i:i + size] for i in range(0, len(order), size)]


def test_text_bucketing_cuts_text_padding_at_little_audio_padding():
    audio, src, tgt = corpus()
    text = np.maximum(src, tgt)
    by_audio = padding_fractions(batches_of(bucketed_order(audio, text, 0), 16), audio, src, tgt)
    both = padding_fractions(batches_of(bucketed_order(audio, text, 16000), 16), audio, src, tgt)
    assert both["transcript"] < 0.5 * by_audio["transcript"] and both["translation"] < 0.5 * by_audio["translation"]
    assert both["audio"] < 0.15  # within a 1 s bucket, clips of 1-15 s


def test_token_budget_counts_text():
    from fairseq.data import data_utils

    audio, src, tgt = corpus(500)
    cost = token_cost(audio, np.maximum(src, tgt), 2000)
    assert np.array_equal(cost, audio + 2000 * np.maximum(src, tgt))
    order = bucketed_order(audio, np.maximum(src, tgt), 16000)
    budget = 16000 * 60
    batches = data_utils.batch_by_size(order, num_tokens_fn=None, num_tokens_vec=cost[order], max_tokens=budget)
    assert sum(len(b) for b in batches) == len(order)
    assert all(cost[b].max() * len(b) <= budget for b in batches)


def test_task_options_reach_the_dataset(data_dir):
    from tests.builders import build_task_and_model

    cfg, task, _ = build_task_and_model(data_dir, "--audio-bucket-seconds", "0.5", "--text-token-samples", "100")
    task.load_dataset("train")
    ds = task.dataset("train")
    assert ds.bucket_samples == 8000
    text = np.maximum(ds.src_sizes, ds.tgt_sizes)
    assert ds.num_tokens(0) == ds.n_samples[0] + 100 * text[0]
    order = ds.ordered_indices()
    keys = list(zip(ds.n_samples[order] // 8000, text[order], strict=True))
    assert keys == sorted(keys)
    with pytest.raises(ValueError, match="--audio-bucket-seconds"):
        build_task_and_model(data_dir, "--audio-bucket-seconds", "-1")
