"""A readable stand-in for empty batches.

When every clip of a batch fails to read, the collater returns ``{}`` and fairseq's
trainer substitutes a "dummy" batch (run with its loss ignored) -- the epoch iterator's
``first_batch``, collated once per epoch for training and for each validation set. If every
clip of that first (shortest) batch is unreadable too, the stand-in is ``{}`` and training
or validation later stops with ``AssertionError: Invalid dummy batch: {}``.

fairseq offers no hook for the stand-in but ``first_batch``, so :func:`readable_first_batch`
gives the iterator built by ``FairseqTask.get_batch_iterator`` a subclass whose
``first_batch`` falls back to the dataset's :meth:`stand_in_batch` (a batch of the
shortest readable clip). The iterator is otherwise fairseq's own, state and all.
"""
import logging

from fairseq.data import iterators

logger = logging.getLogger(__name__)


class ReadableFirstBatchIterator(iterators.EpochBatchIterator):
    """fairseq's ``EpochBatchIterator`` whose ``first_batch`` is never empty."""

    @property
    def first_batch(self):
        batch = super().first_batch
        if isinstance(batch, dict) and len(batch) == 0:
            batch = self.dataset.stand_in_batch()
        return batch


def readable_first_batch(epoch_iter):
    """Turn a fairseq ``EpochBatchIterator`` over a dataset with ``stand_in_batch`` into a
    :class:`ReadableFirstBatchIterator` (in place, idempotent); other iterators are returned as is."""
    if type(epoch_iter) is iterators.EpochBatchIterator and hasattr(epoch_iter.dataset, "stand_in_batch"):
        epoch_iter.__class__ = ReadableFirstBatchIterator
    return epoch_iter
