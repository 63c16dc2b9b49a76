"""Fill a run's Whisper feature cache before (or beside) its training.

While Whisper is frozen, training (and validation) reads each clip's Whisper output from
``--whisper-feature-cache`` and computes only the clips that are not there yet: the first
frozen epoch pays for every clip. This fills the cache ahead of time with the run's own
flags, so that the cost moves out of training: into a job that runs while something else
does (the MT stage, another run's decoding) or is spread over several processes or GPUs
(``--num-shards`` / ``--shard-id``: each process takes every N-th clip).

The model is built as fairseq-train builds it from the same flags, except the text part: only
the speech path runs here, so mBART is built small and at random (its checkpoint need not
exist yet). The Whisper weights, the input-length settings and the cache folder come from the
flags, so each entry has the key that training looks up; entries are written atomically and
an interrupted fill leaves only complete ones. The batches are fixed (clips by length, ties by
row), so a complete fill stores the same features every time: a run that reads only filled
entries is as reproducible as one that computes them all.
"""
import logging
import signal
import time

import numpy as np
import torch
from omegaconf import open_dict

from comsl_fairseq.models.whisper_mbart_composite import ARCH_DIMS
from comsl_fairseq.training.fairseq_setup import build_task_and_model, train_cfg

logger = logging.getLogger(__name__)

# the text part of the speech-only build: never run, so the smallest preset will do
_SPEECH_ONLY_MBART = ARCH_DIMS["whisper_mbart_composite_tiny"][1]


class Stopped(Exception):
    """SIGTERM: the fill ends early; what is written so far is complete and kept."""


def _terminate(signum, frame):
    raise Stopped  # unwinds, so a half-written entry's temporary file is removed


def fill(argv: list, num_shards: int = 1, shard_id: int = 0, batch_size: int = 16) -> dict:
    """Compute the Whisper features of every clip of the run's training and validation manifests
    (this shard's share) that the cache does not hold yet. ``argv``: DATA and the run's fairseq-train flags.
    Stops early, keeping what is written, on SIGTERM. Returns the counts {"written" (entries
    computed and written), "present" (valid entries found), "stale" (of the written: entries
    that were there but stale), "seconds", "folder", "stopped"}."""
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"--shard-id {shard_id} is not in 0..{num_shards - 1} (--num-shards {num_shards})")
    cfg = train_cfg(argv)
    if not getattr(cfg.model, "whisper_feature_cache", None):
        raise ValueError("no --whisper-feature-cache DIR among the run's flags: there is no cache to fill")
    if not (cfg.model.freeze_whisper_epochs > 0 or cfg.model.freeze_whisper_updates > 0):
        raise ValueError("the run does not freeze Whisper (--freeze-whisper-epochs / --freeze-whisper-updates): "
                         "its training never reads the feature cache, so filling it would be wasted")
    with open_dict(cfg.model):
        cfg.model.mbart_checkpoint = None
        cfg.model.mbart_dims = _SPEECH_ONLY_MBART.to_cfg()
    task, model = build_task_and_model(cfg)
    encoder = model.encoder
    if encoder.whisper is None:
        raise ValueError(f"--arch {cfg.model._name} has no speech encoder: there are no Whisper features to cache")
    device = torch.device("cuda" if torch.cuda.is_available() and not cfg.common.cpu else "cpu")
    if cfg.common.bf16 and not cfg.common.amp:  # the dtype training runs Whisper in (fairseq's Trainer)
        model = model.bfloat16()
    elif cfg.common.fp16 and not cfg.common.amp:
        model = model.half()
    model.to(device).train()  # training mode, as in training (Whisper has no dropout)
    encoder.set_epoch(1)  # the first frozen epoch
    cache = encoder.feature_cache_in_use()

    previous = signal.signal(signal.SIGTERM, _terminate)
    t0 = time.monotonic()
    stopped = False
    try:
        subsets = str(cfg.dataset.train_subset).split(",")
        if not cfg.dataset.disable_validation:  # validation in the frozen epochs reads the cache too
            subsets += [s for s in str(cfg.dataset.valid_subset).split(",") if s not in subsets]
        for subset in subsets:
            task.load_dataset(subset)
            dataset = task.dataset(subset)
            # by length (little padding), ties by row: the same batches, so the same float rounding, every time
            order = np.argsort(dataset.n_samples, kind="stable")[shard_id::num_shards]
            for start in range(0, len(order), batch_size):
                batch = dataset.collater([dataset[int(i)] for i in order[start:start + batch_size]])
                if not batch:  # every clip of the slice unreadable (skips are logged by the dataset)
                    continue
                net = batch["net_input"]
                with torch.no_grad():
                    encoder.whisper_features(net["src_tokens"].to(device), net["src_lengths"].to(device))
                if start // batch_size % 50 == 0:
                    logger.info("%s: %d / %d clips of this shard (%s)", subset, start + batch["nsentences"],
                                len(order), cache.stats())
    except Stopped:
        stopped = True
        logger.info("stopped (SIGTERM) after %d entries: those written are complete and kept", cache.written)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return {"written": cache.written, "present": cache.hits, "stale": cache.stale,
            "seconds": round(time.monotonic() - t0, 1), "folder": str(cache.folder), "stopped": stopped}
