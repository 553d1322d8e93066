"""Counting results, one module per task, all as exact sums that add up across batches and shards.

- :mod:`.classification`: top-k hits, the clean/shifted/consistency :class:`Tally`, result rows;
- :mod:`.segmentation`: confusion matrix, IoU / mIoU, pixel accuracy, boundary F-score, pixel shift
  consistency.
"""
from .classification import Row, Tally, row_from_counts, topk_correct

__all__ = ["Row", "Tally", "row_from_counts", "topk_correct"]
