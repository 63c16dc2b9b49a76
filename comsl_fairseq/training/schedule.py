"""The training schedule as the trainer really runs it (measured, not estimated).

The task measures it when fairseq builds the training epoch iterator: batches per epoch on
each process (after length filtering, bucketing and sharding over the world size), times
``--update-freq``, gives the updates per epoch. The LR scheduler ``epoch_polynomial_decay``
and the start-of-training log line read it from here, so the decay length and the Whisper
unfreeze update follow the real world size whether the run was started by fairseq's own
spawn, ``torchrun`` or Slurm.

fairseq builds the LR scheduler without access to the task (and, when resuming, before the
epoch iterator exists), so the measurement is handed over through this module: one training
per process, as fairseq-train runs it.
"""
import logging
import math
from dataclasses import dataclass
from typing import Optional

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeasuredSchedule:
    """What one epoch of training is, as the trainer's epoch iterator says."""

    world_size: int  # data-parallel processes the batches are sharded over
    batches_per_epoch: int  # on each process (shards are padded to equal length)
    batch_size: Optional[int]  # utterances per batch per process (--batch-size), None if by tokens
    update_freq: int  # batches accumulated per update (--update-freq)
    skip_remainder_batch: bool  # a last incomplete group of batches is dropped
    max_epoch: int  # 0 = no epoch limit
    max_update: int  # 0 = no update limit

    @property
    def updates_per_epoch(self) -> int:
        rounding = math.floor if self.skip_remainder_batch else math.ceil
        return max(1, int(rounding(self.batches_per_epoch / self.update_freq)))

    @property
    def total_updates(self) -> Optional[int]:
        """Where training stops: --max-epoch epochs or --max-update updates, the earlier;
        None if neither is set."""
        limits = [self.updates_per_epoch * self.max_epoch] if self.max_epoch > 0 else []
        limits += [self.max_update] if self.max_update > 0 else []
        return min(limits) if limits else None

    @property
    def global_batch(self) -> Optional[int]:
        """Utterances per update summed over processes (at most: the last batch can be short)."""
        return None if self.batch_size is None else self.batch_size * self.update_freq * self.world_size

    def unfreeze_update(self, freeze_updates: int, freeze_epochs: int) -> int:
        """First update with a trainable Whisper (0 = never frozen)."""
        return max(freeze_updates, freeze_epochs * self.updates_per_epoch)

    def describe(self, freeze_updates: int = 0, freeze_epochs: int = 0) -> str:
        total = self.total_updates
        batch = f"{self.batch_size} utterances" if self.batch_size else "--max-tokens"
        glob = f" (global batch {self.global_batch} utterances)" if self.global_batch else ""
        text = (f"training schedule (measured): world size {self.world_size}, {self.batches_per_epoch} batches of "
                f"<= {batch} per process per epoch, update_freq {self.update_freq}{glob} -> "
                f"{self.updates_per_epoch} updates per epoch; total updates "
                f"{total if total is not None else 'unbounded'} (max_epoch {self.max_epoch}, "
                f"max_update {self.max_update})")
        unfreeze = self.unfreeze_update(freeze_updates, freeze_epochs)
        if unfreeze > 0:
            text += (f"; Whisper frozen for {freeze_epochs} epoch(s) / {freeze_updates} update(s) -> "
                     f"unfreeze update {unfreeze}")
        else:
            text += "; Whisper is not frozen"
        return text


_measured: Optional[MeasuredSchedule] = None


def publish(schedule: MeasuredSchedule) -> None:
    """Record this process's training schedule (called by the task)."""
    global _measured
    if _measured is not None and _measured.updates_per_epoch != schedule.updates_per_epoch:
        logger.warning("updates per epoch changed from %d to %d (batches rebuilt); the LR decay follows the new "
                       "length", _measured.updates_per_epoch, schedule.updates_per_epoch)
    _measured = schedule


def measured() -> Optional[MeasuredSchedule]:
    """The schedule the task measured in this process, or None before the first epoch iterator."""
    return _measured
