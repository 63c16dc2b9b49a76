"""Average the weights of the last N checkpoints of a run.

Averaging the weights of the last N checkpoints of a run (as fairseq's CoVoST 2 recipe and
ESPnet do before the final evaluation: 10 there).

fairseq names epoch checkpoints ``checkpoint{EPOCH}.pt`` and, with ``--save-interval-updates``,
update checkpoints ``checkpoint_{EPOCH}_{UPDATES}.pt``; ``--keep-last-epochs`` /
``--keep-interval-updates`` decide how many survive. The average keeps the newest checkpoint's
configuration and training state, with the model weights replaced by the element-wise mean
(accumulated in float64, stored in each tensor's own dtype) and the optimizer state dropped
(a decoding checkpoint; it does not resume training).
"""
import logging
import re
from pathlib import Path

import torch

from comsl_fairseq.checkpoints.allowlist import load_weights_only

logger = logging.getLogger(__name__)

_EPOCH = re.compile(r"^checkpoint(\d+)\.pt$")
_UPDATE = re.compile(r"^checkpoint_(\d+)_(\d+)\.pt$")


class AveragingError(ValueError):
    """Checkpoints that cannot be averaged; the message names the file or key."""


def last_checkpoints(folder: Path, n: int, kind: str = "epoch", allow_fewer: bool = False) -> list:
    """The newest ``n`` epoch (``checkpointE.pt``) or update (``checkpoint_E_U.pt``) checkpoints,
    oldest first."""
    if n < 1:
        raise AveragingError(f"cannot average the last {n} checkpoints")
    pattern = _EPOCH if kind == "epoch" else _UPDATE
    found = []
    for path in Path(folder).iterdir():
        m = pattern.match(path.name)
        if m:
            found.append((int(m.groups()[-1]), path))
    found.sort()
    if len(found) < n and not (allow_fewer and found):
        names = ", ".join(p.name for _, p in found) or "none"
        flag = "--keep-last-epochs" if kind == "epoch" else "--keep-interval-updates with --save-interval-updates"
        raise AveragingError(f"{folder}: {n} {kind} checkpoints asked for, {len(found)} found ({names}); "
                             f"train with {flag} {n} so that they are kept")
    if len(found) < n:
        logger.warning("%s: only %d of the %d %s checkpoints asked for exist; averaging those",
                       folder, len(found), n, kind)
    return [p for _, p in found[-n:]]


def _arch(state: dict):
    """The architecture name in a checkpoint's cfg (or its older ``args``)."""
    model = (state.get("cfg") or {}).get("model")
    if model is not None:
        return model.get("_name") or model.get("arch")
    return getattr(state.get("args"), "arch", None)


def check_same_training_setup(states: list, names: list) -> None:
    """Refuse to average checkpoints of different architectures or vocabularies (their
    dictionary fingerprints differ: the same ids mean other words), naming the first pair."""
    from comsl_fairseq.vocab.fingerprint import checkpoint_fingerprint

    ref_arch, ref_vocab = _arch(states[-1]), checkpoint_fingerprint(states[-1])
    for state, name in zip(states[:-1], names[:-1], strict=True):
        arch = _arch(state)
        if arch != ref_arch:
            raise AveragingError(f"{name} is a {arch} model, {names[-1]} a {ref_arch} one; "
                                 "only checkpoints of one training run can be averaged")
        vocab = checkpoint_fingerprint(state)
        if (vocab is None) != (ref_vocab is None) or (vocab and any(
                (vocab.get(part) or {}).get("sha256") != (ref_vocab.get(part) or {}).get("sha256")
                for part in ("dict_txt", "sentencepiece_model", "trim"))):
            describe = (lambda v: "no fingerprint" if v is None else  # noqa: E731
                        f"dict.txt sha256 {v['dict_txt']['sha256'][:12]}, SentencePiece sha256 "
                        f"{v['sentencepiece_model']['sha256'][:12]}, " + (
                            f"trimmed to {v['trim']['rows']} rows (sha256 {v['trim']['sha256'][:12]})"
                            if v.get("trim") else "full vocabulary"))
            raise AveragingError(f"{name} and {names[-1]} were trained with different vocabularies "
                                 f"({describe(vocab)} vs {describe(ref_vocab)}); the same token ids mean other "
                                 "words in each, so their weights cannot be averaged")


def average_states(states: list, names: list) -> dict:
    """Element-wise mean of the ``model`` state dicts; other entries from the last state."""
    reference = states[-1]["model"]
    check_same_training_setup(states, names)
    for state, name in zip(states, names, strict=True):
        keys = set(state["model"])
        if keys != set(reference):
            raise AveragingError(f"{name}: model keys differ from {names[-1]}: missing "
                                 f"{sorted(set(reference) - keys)[:5]}, unexpected {sorted(keys - set(reference))[:5]}")
        for key, value in state["model"].items():
            if value.shape != reference[key].shape:
                raise AveragingError(f"{name}: {key} has shape {tuple(value.shape)}, "
                                     f"{names[-1]} has {tuple(reference[key].shape)}")
    averaged = {}
    for key, ref in reference.items():
        if ref.is_floating_point():
            total = torch.zeros_like(ref, dtype=torch.float64)
            for state in states:
                total += state["model"][key].to(torch.float64)
            averaged[key] = (total / len(states)).to(ref.dtype)
        else:  # integer buffers (counters, indices) cannot be averaged: they must agree
            for state, name in zip(states, names, strict=True):
                if not torch.equal(state["model"][key], ref):
                    raise AveragingError(f"{name}: non-float tensor {key} differs from {names[-1]}; "
                                         "it cannot be averaged")
            averaged[key] = ref.clone()
    out = dict(states[-1])
    out["model"] = averaged
    out["last_optimizer_state"] = None
    out.setdefault("extra_state", {})
    out["extra_state"] = dict(out["extra_state"], averaged_checkpoints=[Path(n).name for n in names])
    return out


def average_checkpoints(paths: list, out: Path) -> Path:
    """Average the checkpoints in ``paths`` into ``out`` (written atomically)."""
    if not paths:
        raise AveragingError("no checkpoints to average")
    states = []
    for path in paths:
        try:
            states.append(load_weights_only(path))  # the plugin's allowlist applies
        except (OSError, ValueError) as e:
            raise AveragingError(str(e)) from None
        if not isinstance(states[-1], dict) or "model" not in states[-1]:
            raise AveragingError(f"{path}: not a fairseq checkpoint (no 'model' entry)")
    state = average_states(states, [str(p) for p in paths])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        torch.save(state, tmp)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)  # after a failed write or rename: no half-written file left
    logger.info("averaged %d checkpoints (%s) into %s", len(paths), ", ".join(Path(p).name for p in paths), out)
    return out
