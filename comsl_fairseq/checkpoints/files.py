"""Checkpoint files that survive a kill: atomic copies, named errors, resume fallback.

fairseq writes a new checkpoint atomically (``.tmp``, then rename) but then *copies* it
to ``checkpoint_last.pt`` and ``checkpoint_best.pt`` with a plain copy
(``PathManager.copy`` in ``checkpoint_utils.save_checkpoint``). A job killed during that
copy -- a scheduler's time limit, a pre-emption -- leaves an empty or truncated
``checkpoint_last.pt``, and the resume dies with a bare ``EOFError``.

fairseq has no public hook for this, so :func:`install` (called when the plugin is
imported, before any save or load; ``--user-dir`` guarantees that) makes three narrow,
documented changes to ``fairseq.checkpoint_utils`` only:

1. its ``PathManager`` name is bound to a proxy whose ``copy`` writes beside the
   destination and renames (``os.replace``), so the destination is always either the
   old file or the complete new one; every other method is fairseq's own;
2. ``load_checkpoint_to_cpu`` names the file when it cannot be read (empty, truncated);
3. ``load_checkpoint`` (the resume) checks ``checkpoint_last.pt`` first: if it is
   unreadable, the log names it and training resumes from the newest intact checkpoint
   in the save dir; if there is none, it stops and says which file to move away.
"""
import logging
import os
import pickle
import zipfile
from pathlib import Path

from fairseq import checkpoint_utils
from fairseq.file_io import PathManager

from comsl_fairseq.checkpoints.pretrained import CheckpointError

logger = logging.getLogger(__name__)

_MARK = "_comsl_checkpoint_files"  # set on the wrapped functions, so install() runs once


def checkpoint_problem(path) -> str | None:
    """Why ``path`` cannot be a complete torch checkpoint, or None when it looks intact.

    torch writes a zip archive whose central directory comes last: an empty file or one
    cut off anywhere lacks it. Checking it reads a few kilobytes, not the weights.
    """
    path = Path(path)
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size == 0:
        return "empty (0 bytes; killed while it was written?)"
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        return f"truncated or not a torch checkpoint ({size} bytes; {e})"
    if not any(n.endswith("data.pkl") for n in names):
        return f"not a torch checkpoint (a zip without data.pkl, {size} bytes)"
    return None


class _AtomicCopyPathManager:
    """fairseq's PathManager, except that ``copy`` of a local file replaces the
    destination atomically: write ``<dst>.copying`` in the same folder, fsync, rename."""

    def __getattr__(self, name):
        return getattr(PathManager, name)

    @staticmethod
    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if PathManager.path_requires_pathmanager(dst_path) or PathManager.path_requires_pathmanager(src_path):
            return PathManager.copy(src_path, dst_path, overwrite=overwrite)
        if not overwrite and os.path.exists(dst_path):
            return False
        tmp = f"{dst_path}.copying"
        try:
            with open(src_path, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(16 << 20):
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, dst_path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return True


def _named_load_checkpoint_to_cpu(original):
    def load_checkpoint_to_cpu(path, *args, **kwargs):
        try:
            return original(path, *args, **kwargs)
        except Exception as e:
            if isinstance(e, pickle.UnpicklingError) and not PathManager.path_requires_pathmanager(str(path)):
                from comsl_fairseq.checkpoints.allowlist import load_weights_only

                load_weights_only(path)  # raises UnsafeCheckpointError, which names the file and the callable
            problem = checkpoint_problem(path) if not PathManager.path_requires_pathmanager(str(path)) else None
            if problem is None:
                raise  # a readable file refused for another reason: unchanged
            first = str(e).split(". ")[0].splitlines()[0] if str(e) else ""
            raise CheckpointError(f"cannot read checkpoint {path}: {problem} "
                                  f"[{type(e).__name__}: {first}]") from e

    setattr(load_checkpoint_to_cpu, _MARK, True)
    return load_checkpoint_to_cpu


def intact_checkpoints(save_dir, exclude=()) -> list:
    """``checkpoint*.pt`` files of ``save_dir`` that look intact, newest first."""
    excluded = {Path(p).resolve() for p in exclude}
    found = [p for p in Path(save_dir).glob("checkpoint*.pt") if p.resolve() not in excluded]
    found = [p for p in found if checkpoint_problem(p) is None]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def resume_file(save_dir, last_name: str) -> str | None:
    """The file to resume from when ``save_dir/last_name`` is unreadable (None when it is
    fine or absent: fairseq's own logic applies). Raises when no intact file is left."""
    last = Path(save_dir) / last_name
    if not last.exists():
        return None
    problem = checkpoint_problem(last)
    if problem is None:
        return None
    candidates = intact_checkpoints(save_dir, exclude=[last])
    if not candidates:
        raise CheckpointError(
            f"cannot resume: {last} is {problem}, and {save_dir} holds no other intact checkpoint. "
            f"Move {last} away to start from scratch, or pass --restore-file with a checkpoint to resume from")
    logger.warning("%s is %s; resuming from %s instead, the newest intact checkpoint in %s",
                   last, problem, candidates[0], save_dir)
    return str(candidates[0])


def _resume_with_fallback(original):
    def load_checkpoint(cfg, trainer, **passthrough_args):
        if cfg.restore_file == "checkpoint_last.pt" and not PathManager.path_requires_pathmanager(cfg.save_dir):
            name = f"checkpoint_last{trainer.checkpoint_suffix or ''}.pt"
            fallback = resume_file(cfg.save_dir, name)
            if fallback is not None:
                cfg.restore_file = fallback  # fairseq restores everything from a given --restore-file
                try:
                    return original(cfg, trainer, **passthrough_args)
                finally:
                    cfg.restore_file = "checkpoint_last.pt"
        return original(cfg, trainer, **passthrough_args)

    setattr(load_checkpoint, _MARK, True)
    return load_checkpoint


def install() -> None:
    """Apply the three changes to ``fairseq.checkpoint_utils`` described above (once)."""
    if getattr(checkpoint_utils.load_checkpoint, _MARK, False):
        return
    checkpoint_utils.PathManager = _AtomicCopyPathManager()
    checkpoint_utils.load_checkpoint_to_cpu = _named_load_checkpoint_to_cpu(checkpoint_utils.load_checkpoint_to_cpu)
    checkpoint_utils.load_checkpoint = _resume_with_fallback(checkpoint_utils.load_checkpoint)
