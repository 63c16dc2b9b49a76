"""--whisper-feature-cache: an entry equals the uncached forward, a stale entry is never used,
once Whisper trains the cache is bypassed (and the log says so), and comsl-cache-features fills
it ahead of a run with the entries the run reads."""
import logging
import subprocess

import pytest
import torch

from comsl_fairseq.modules.whisper_feature_cache import FORMAT
from tests.builders import ABLATIONS, build_task_and_model, recipe_env, run, train_cmd


@pytest.fixture
def built(data_dir, whisper_pt, mbart_dir, tmp_path):
    cache = tmp_path / "cache"
    cfg, task, model = build_task_and_model(data_dir, "--whisper-checkpoint", str(whisper_pt), "--mbart-checkpoint",
                                            str(mbart_dir / "model.pt"), "--freeze-whisper-updates", "2",
                                            "--whisper-feature-cache", str(cache))
    task.load_dataset("dev")
    ds = task.dataset("dev")
    batch = ds.collater([ds[i] for i in range(4)])  # clips of different lengths: batch padding
    return model.eval(), batch["net_input"], cache


def uncached(model, net):
    return model.encoder._whisper_forward(net["src_tokens"], net["src_lengths"])


def entries(cache):
    return sorted(cache.rglob("*.pt"))


def assert_same_features(got, expected):
    (h, lengths), (h0, lengths0) = got, expected
    assert torch.equal(lengths, lengths0)
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(h[b, :n], h0[b, :n])
        assert not h[b, n:].any()  # zero after each clip, as the adapter reads it


def test_cached_features_equal_the_uncached_forward(built):
    model, net, cache = built
    expected = uncached(model, net)
    with torch.no_grad():
        first = model.encoder.whisper_features(net["src_tokens"], net["src_lengths"])  # computed and stored
        assert len(entries(cache)) == 4 and model.encoder.feature_cache.misses == 4
        second = model.encoder.whisper_features(net["src_tokens"], net["src_lengths"])  # read back
        assert model.encoder.feature_cache.hits == 4
        assert_same_features(first, expected)
        assert_same_features(second, expected)
        # the whole speech path: the same encoder output as without a cache
        out = model.encoder(net["src_tokens"], net["src_lengths"], net["src_lang_tags"])
        model.encoder.feature_cache, kept = None, model.encoder.feature_cache
        ref = model.encoder(net["src_tokens"], net["src_lengths"], net["src_lang_tags"])
        model.encoder.feature_cache = kept
    assert torch.equal(out["encoder_out"][0], ref["encoder_out"][0])


def test_a_stale_or_broken_entry_is_rebuilt_never_used(built, caplog):
    model, net, cache = built
    with torch.no_grad():
        model.encoder.whisper_features(net["src_tokens"], net["src_lengths"])
        paths = entries(cache)
        forged = torch.load(paths[0])
        forged["key"] = {**forged["key"], "whisper": "another checkpoint"}  # another Whisper's entry
        forged["h"] = forged["h"] + 1
        torch.save(forged, paths[0])
        paths[1].write_bytes(paths[1].read_bytes()[:50])  # a truncated file
        with caplog.at_level(logging.WARNING):
            got = model.encoder.whisper_features(net["src_tokens"], net["src_lengths"])
        assert model.encoder.feature_cache.stale == 2 and "stale Whisper feature cache entry" in caplog.text
        assert_same_features(got, uncached(model, net))
        assert torch.load(paths[0])["key"]["whisper"] == model.encoder.whisper_fingerprint  # rewritten
        # other Whisper weights (e.g. another checkpoint loaded): other entries, never the old ones
        state = model.state_dict()
        state["encoder.whisper.ln_post.bias"] = state["encoder.whisper.ln_post.bias"] + 0.5
        model.load_state_dict(state)
        got = model.encoder.whisper_features(net["src_tokens"], net["src_lengths"])
        assert_same_features(got, uncached(model, net))
        assert len(entries(cache)) == 8
    entry = torch.load(paths[0])
    assert entry["key"]["settings"]["format"] == FORMAT and set(entry["key"]) == {"clip", "whisper", "settings"}


def test_the_cache_is_bypassed_once_whisper_trains(built, caplog):
    model, net, cache = built
    model.train()
    h, _ = model.encoder.whisper_features(net["src_tokens"], net["src_lengths"])
    assert not h.requires_grad and len(entries(cache)) == 4  # frozen: from the cache
    model.encoder.set_num_updates(2)  # --freeze-whisper-updates 2 are over
    with caplog.at_level(logging.INFO):
        h, _ = model.encoder.whisper_features(net["src_tokens"], net["src_lengths"])
        model.encoder.whisper_features(net["src_tokens"], net["src_lengths"])
    assert h.requires_grad  # Whisper's own forward, with gradients
    assert caplog.text.count("is bypassed from now on") == 1  # said once
    assert len(entries(cache)) == 4 and model.encoder.feature_cache.hits == 0


@pytest.mark.subprocess
def test_filled_ahead_the_run_reads_every_clip_from_the_cache(data_dir, whisper_pt, mbart_dir, tmp_path):
    """comsl-cache-features with a recipe's exact flags (CACHE_FEATURES=1), in two shards and
    before the run's mBART checkpoint exists: every training clip gets the entry that the run
    then reads -- training computes nothing and writes nothing."""
    cache = tmp_path / "cache"
    for shard in ("0", "1"):
        env = recipe_env(data_dir, whisper_pt, mbart_dir, tmp_path / "save", CACHE_FEATURES="1",
                         MBART=str(tmp_path / "not_trained_yet.pt"), FREEZE_EPOCHS="1")
        proc = subprocess.run(["bash", str(ABLATIONS / "row7_cml.sh"), "--cpu", "--whisper-feature-cache", str(cache),
                               "--num-shards", "2", "--shard-id", shard], env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "entries computed and written" in proc.stdout
    n_clips = sum(len((data_dir / f"{s}.tsv").read_text().splitlines()) - 1 for s in ("train", "dev"))
    filled = {p: p.stat().st_mtime_ns for p in entries(cache)}
    assert len(filled) == n_clips  # the training and the validation clips

    # an entry equals the uncached forward of its clip (computed alone)
    cfg, task, model = build_task_and_model(data_dir, "--whisper-checkpoint", str(whisper_pt), "--mbart-checkpoint",
                                            str(mbart_dir / "model.pt"), "--freeze-whisper-epochs", "1",
                                            "--whisper-feature-cache", str(cache))
    task.load_dataset("train")
    ds = task.dataset("train")
    net = ds.collater([ds[0]])["net_input"]
    model.encoder.set_epoch(1)
    with torch.no_grad():
        h0, n0 = model.encoder._whisper_forward(net["src_tokens"], net["src_lengths"])
        h, n = model.encoder.whisper_features(net["src_tokens"], net["src_lengths"])
    assert model.encoder.feature_cache.hits == 1 and torch.equal(n, n0)
    torch.testing.assert_close(h, h0, rtol=0, atol=1e-5)  # computed in another batch: float rounding only

    out = run(*train_cmd(data_dir, whisper_pt, mbart_dir / "model.pt", tmp_path / "ckpt", "--freeze-whisper-epochs",
                         "1", "--whisper-feature-cache", cache, "--max-update", "2", "--batch-size", "8"))
    assert "Whisper feature cache" in out
    assert {p: p.stat().st_mtime_ns for p in entries(cache)} == filled  # nothing computed, nothing rewritten


def test_filling_a_run_that_never_reads_the_cache_is_refused(data_dir, whisper_pt, mbart_dir, tmp_path, capsys):
    from comsl_fairseq.cli.cache_features import main

    flags = [str(data_dir), "--task", "comsl_speech_to_text", "--arch", "whisper_mbart_composite_tiny",
             "--whisper-checkpoint", str(whisper_pt), "--criterion", "comsl_multitask", "--cpu"]
    assert main([*flags, "--whisper-feature-cache", str(tmp_path / "c")]) == 2
    assert "does not freeze Whisper" in capsys.readouterr().err
    assert main([*flags, "--freeze-whisper-epochs", "1"]) == 2
    assert "no --whisper-feature-cache" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_a_fill_stopped_by_sigterm_keeps_complete_entries_only(data_dir, whisper_pt, tmp_path, monkeypatch, capsys):
    """SIGTERM (here sent by the process to itself right after its second entry) ends the fill
    early: exit 143, the summary says so, and only complete entries are left."""
    import os
    import signal

    from comsl_fairseq.cli.cache_features import main
    from comsl_fairseq.modules.whisper_feature_cache import WhisperFeatureCache

    put = WhisperFeatureCache.put

    def put_then_sigterm(self, key, h):
        put(self, key, h)
        if self.misses == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(WhisperFeatureCache, "put", put_then_sigterm)
    cache = tmp_path / "cache"
    handler = signal.getsignal(signal.SIGTERM)
    rc = main([str(data_dir), "--task", "comsl_speech_to_text", "--arch", "whisper_mbart_composite_tiny",
               "--whisper-checkpoint", str(whisper_pt), "--criterion", "comsl_multitask", "--cpu",
               "--freeze-whisper-epochs", "1", "--whisper-feature-cache", str(cache), "--fill-batch-size", "1"])
    out = capsys.readouterr().out
    assert rc == 143 and "2 entries computed and written" in out and "stopped before the end (SIGTERM)" in out
    assert signal.getsignal(signal.SIGTERM) == handler  # the previous handler is back
    assert len(entries(cache)) == 2 and not list(cache.rglob("*.tmp"))
    for path in entries(cache):
        assert set(torch.load(path)) == {"key", "h"}
