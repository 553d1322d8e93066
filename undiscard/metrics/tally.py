"""What every task's result counter is: a :class:`Tally` of exact sums behind one result row.

An evaluation (:func:`undiscard.evaluation.runner.run_batches`) keeps one tally per row (a budget, a
variant, a TTA config) and feeds it each batch's predictions twice: for the clean images, then for
their shifted copies (when there are any), so that shift consistency compares the two. The task says
which tally it counts with (:meth:`undiscard.tasks.base.Task.tally`):
:class:`~undiscard.metrics.classification.ClassificationTally` (top-k hits) and
:class:`~undiscard.metrics.segmentation.SegmentationTally` (confusion matrices, boundaries, pixels).

Every tally is a flat dict of exact sums (:meth:`Tally.counts`): shards of one evaluation add up to the
single-process numbers (:meth:`Tally.merge` in one process; ``all_reduce`` of the counts across
processes, :func:`undiscard.evaluation.distributed.sum_counts`, then :meth:`Tally.load_counts`), and
the row's percentages are made only at the end (:meth:`Tally.row`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Mapping

from torch import Tensor

__all__ = ["Tally", "FLAGS"]

FLAGS = ("shifted",)  # counts that say whether something happened: merged by max, not summed


class Tally(ABC):
    """Exact sums of one result row (see the module docstring)."""

    @abstractmethod
    def update(self, logits: Tensor, target: Tensor, *, clean: bool = True, cost: float = 1.0, ideal: float = 1.0,
               offsets: Tensor | None = None) -> None:
        """Count one batch: ``logits`` of the clean images (``clean``) or, after them, of their shifted
        copies (the same images in the same order, translated by ``offsets`` (N, 2) = (dy, dx)); ``target``
        holds the clean images' targets; ``cost``/``ideal``: mean cost per image of the batch."""

    @abstractmethod
    def counts(self) -> dict[str, float]:
        """The sums, as a flat dict (the same keys in the same order for every tally of this kind and size)."""

    @abstractmethod
    def load_counts(self, counts: Mapping[str, float]) -> None:
        """Replace the sums with ``counts`` (e.g. :meth:`counts` summed over the processes of one run)."""

    @abstractmethod
    def row(self) -> dict[str, Any]:
        """The row's numbers (percentages, mean costs, images) made from the sums."""

    def merge(self, other: "Tally") -> "Tally":
        """Add ``other``'s sums (another shard of the same evaluation) to this tally's; returns it."""
        mine, theirs = self.counts(), other.counts()
        if list(mine) != list(theirs):
            raise ValueError("only tallies of the same kind and size merge")
        self.load_counts({k: max(v, theirs[k]) if k in FLAGS else v + theirs[k] for k, v in mine.items()})
        return self
