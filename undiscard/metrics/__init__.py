"""Counting results, one module per task, all as exact sums that add up across batches and shards.

- :mod:`.tally`: what every task's counter is, :class:`Tally` (update, counts, merge, row);
- :mod:`.classification`: top-k hits, :class:`ClassificationTally`, result rows;
- :mod:`.segmentation`: confusion matrix, IoU / mIoU, pixel accuracy, boundary F-score, pixel shift
  consistency, :class:`SegmentationTally`.
"""
from .classification import ClassificationTally, Row, row_from_counts, topk_correct
from .segmentation import SegmentationTally
from .tally import Tally

__all__ = ["Row", "Tally", "ClassificationTally", "SegmentationTally", "row_from_counts", "topk_correct"]
