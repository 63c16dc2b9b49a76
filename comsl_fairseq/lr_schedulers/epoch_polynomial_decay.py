"""LR scheduler ``epoch_polynomial_decay``: polynomial decay over the training's real length.

LR scheduler ``epoch_polynomial_decay``: fairseq's polynomial decay (warm-up, then
power 2 down to 1e-7) whose length is the training's real length in updates.

fairseq's ``polynomial_decay`` needs ``--total-num-update`` typed in, which a recipe can only
estimate in shell arithmetic (and got wrong whenever the GPU count was not the one assumed).
Here the length is ``--max-epoch`` x the updates per epoch the task measured from the trainer's
epoch iterator (comsl_fairseq.training.schedule), or ``--max-update`` if that ends training
earlier, unless ``--total-num-update`` is given explicitly.
"""
import logging
import math
from dataclasses import dataclass, field

from fairseq.optim.lr_scheduler import FairseqLRScheduler, register_lr_scheduler
from fairseq.optim.lr_scheduler.polynomial_decay_schedule import (
    PolynomialDecayLRSchedule,
    PolynomialDecayLRScheduleConfig,
)

from comsl_fairseq.training import schedule as training_schedule

logger = logging.getLogger(__name__)


@dataclass
class EpochPolynomialDecayConfig(PolynomialDecayLRScheduleConfig):
    total_num_update: float = field(default=0, metadata={
        "help": "updates over which to decay; 0 (default) = measured: --max-epoch x updates per epoch of the "
                "trainer's epoch iterator, or --max-update if that ends training earlier"})


@register_lr_scheduler("epoch_polynomial_decay", dataclass=EpochPolynomialDecayConfig)
class EpochPolynomialDecaySchedule(PolynomialDecayLRSchedule):
    """Polynomial decay (fairseq's formula, reused) over the measured number of updates."""

    def __init__(self, cfg: EpochPolynomialDecayConfig, optimizer):
        FairseqLRScheduler.__init__(self, cfg, optimizer)
        self.lr = cfg.lr[0]
        self.warmup_factor = 1.0 / cfg.warmup_updates if cfg.warmup_updates > 0 else 1
        self.end_learning_rate = cfg.end_learning_rate
        self.power = cfg.power
        self.explicit_total = cfg.total_num_update if cfg.total_num_update > 0 else None
        # Until the epoch iterator is measured (only before the first update) the length is
        # unknown; the LR of update 0 does not depend on it.
        self.total_num_update = self.explicit_total or math.inf
        self.optimizer.set_lr(self.warmup_factor * self.lr)

    def _resolve_total(self, required: bool) -> None:
        if self.explicit_total is not None:
            return
        schedule = training_schedule.measured()
        if schedule is None or schedule.total_updates is None:
            if required:
                raise ValueError("--lr-scheduler epoch_polynomial_decay: the decay length is unknown; use it with "
                                 "--task comsl_speech_to_text and --max-epoch or --max-update, or pass "
                                 "--total-num-update")
            return
        if schedule.total_updates != self.total_num_update:
            self.total_num_update = schedule.total_updates
            logger.info("epoch_polynomial_decay: warm-up %d updates, then power %g decay from %g to %g over "
                        "updates %d..%d (measured length)", self.cfg.warmup_updates, self.power, self.lr,
                        self.end_learning_rate, self.cfg.warmup_updates, self.total_num_update)

    def step_begin_epoch(self, epoch):
        self._resolve_total(required=True)  # the trainer has built the epoch iterator by now
        return super().step_begin_epoch(epoch)

    def step_update(self, num_updates):
        self._resolve_total(required=False)
        return super().step_update(num_updates)
