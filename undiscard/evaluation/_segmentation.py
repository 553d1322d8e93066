"""Evaluating a segmenter with and without the phase search and dense TTA: mIoU, shifted mIoU, pixel consistency.

Per method (a key: a budget, an aggregation, a TTA policy...), over a labelled set of images:

- ``miou`` / ``pixel_acc`` / ``boundary_f1`` on the clean images (:mod:`undiscard.metrics.segmentation`);
- ``miou_shifted`` / ``pixel_acc_shifted``: the same on copies translated by seeded offsets (the caller
  makes them, e.g. :func:`undiscard.data.shift_images` on raw images, so the fill is black); their
  targets are the label maps translated alike, with ``ignore_index`` where nothing moved in;
- ``consistency``: *pixel shift consistency*, the share of pixels whose predicted label is unchanged
  after shifting the input and shifting the prediction back (pixels present in both views; pixels
  whose target is ``ignore_index`` are left out);
- ``cost``: mean cost per image in plain forwards (the phase search's ``last_cost``, every TTA view
  counted by FLOPs: :class:`~undiscard.tta.DenseTTA`), and ``cost_ideal``.

All counts are exact integer sums (:class:`SegTally`), so batches add up to the whole set. The
``predict`` functions return, per key, ``(logits (N, K, H, W), cost, ideal)``; one search per batch at the
largest budget serves every budget and aggregation (the search is incremental), and one search per
TTA view serves every phase budget of that view.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Hashable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .._testtime import TestTimeModule
from ..analysis.outputs import select_output
from ..metrics.segmentation import (
    ConfusionMatrix,
    boundary_counts,
    boundary_f1,
    shift_consistency_counts,
    shift_labels,
)

__all__ = ["SegTally", "SegPrediction", "run_seg_pairs", "plain_predictions", "search_predictions_dense",
           "tta_predictions", "seg_rows"]

SegPrediction = tuple[Tensor, float, float]  # logits (N, K, H, W), mean cost and mean ideal cost per image


@dataclass
class SegTally:
    """Exact sums of one method's results: confusion matrices (clean, shifted), boundary counts, pixel
    agreement between clean and shifted predictions, cost."""

    num_classes: int
    ignore_index: int | None = 255
    clean: ConfusionMatrix = field(init=False)
    shifted: ConfusionMatrix = field(init=False)
    boundary: Tensor = field(init=False)
    agree: Tensor = field(init=False)
    cost: float = 0.0
    cost_ideal: float = 0.0
    images: int = 0  # clean images counted
    calls: int = 0  # images run (clean and shifted)

    def __post_init__(self) -> None:
        self.clean = ConfusionMatrix(self.num_classes, self.ignore_index)
        self.shifted = ConfusionMatrix(self.num_classes, self.ignore_index)
        self.boundary = torch.zeros(4, dtype=torch.int64)
        self.agree = torch.zeros(2, dtype=torch.int64)

    def _valid(self, target: Tensor) -> Tensor | None:
        return None if self.ignore_index is None else target != self.ignore_index

    def add_clean(self, pred: Tensor, target: Tensor, cost: float, ideal: float) -> None:
        """Label maps ``pred``, ``target`` (N, H, W) of clean images; ``cost``/``ideal`` per image."""
        pred, target = pred.cpu(), target.cpu()
        self.clean.update(pred, target)
        self.boundary += boundary_counts(pred, target, valid=self._valid(target))
        self.images += pred.shape[0]
        self._charge(pred.shape[0], cost, ideal)

    def add_shifted(self, pred: Tensor, target: Tensor, pred_clean: Tensor, target_clean: Tensor, offsets: Tensor,
                    cost: float, ideal: float) -> None:
        """Label maps of the shifted copies: ``pred`` and their (shifted) ``target``; the clean images'
        ``pred_clean``/``target_clean`` and ``offsets`` (N, 2) for the consistency."""
        pred, target = pred.cpu(), target.cpu()
        self.shifted.update(pred, target)
        self.agree += shift_consistency_counts(pred_clean.cpu(), pred, offsets.cpu(),
                                               valid=self._valid(target_clean.cpu()))
        self._charge(pred.shape[0], cost, ideal)

    def _charge(self, n: int, cost: float, ideal: float) -> None:
        self.cost += cost * n
        self.cost_ideal += ideal * n
        self.calls += n

    def summary(self) -> dict:
        """Percentages (mIoU, pixel accuracy, boundary F1, shifted mIoU/accuracy, consistency) and the mean
        cost per image run; shifted values are None when no shifted copy was counted."""
        shifted = self.shifted.cm.sum() > 0
        return {"miou": 100 * self.clean.miou, "pixel_acc": 100 * self.clean.acc,
                "boundary_f1": 100 * boundary_f1(self.boundary),
                "miou_shifted": 100 * self.shifted.miou if shifted else None,
                "pixel_acc_shifted": 100 * self.shifted.acc if shifted else None,
                "consistency": 100 * float(self.agree[0]) / float(self.agree[1]) if self.agree[1] > 0 else None,
                "cost": self.cost / max(self.calls, 1), "cost_ideal": self.cost_ideal / max(self.calls, 1),
                "n": self.images}


Key = Hashable


@torch.no_grad()
def run_seg_pairs(images: Tensor, targets: Tensor, predict: Callable[[Tensor], Mapping[Key, SegPrediction]],
                  keys: Sequence[Key], num_classes: int, *, ignore_index: int | None = 255,
                  shifted: Tensor | None = None, offsets: Tensor | None = None, batch_size: int = 50,
                  progress: Callable[[int], None] | None = None) -> tuple[dict[Key, SegTally], float]:
    """Per batch of ``images`` (N, C, H, W) with label maps ``targets`` (N, H, W): ``predict`` on the clean
    batch, then on the same rows of ``shifted`` (translated by ``offsets`` (N, 2), down/right positive),
    each key counted in its :class:`SegTally`. Returns the tallies and the wall time in seconds."""
    if (shifted is None) != (offsets is None):
        raise ValueError("shifted images need their offsets (and offsets their images)")
    fill = 255 if ignore_index is None else ignore_index
    tallies = {k: SegTally(num_classes, ignore_index) for k in keys}
    t0 = time.perf_counter()
    for start in range(0, images.shape[0], batch_size):
        sl = slice(start, min(images.shape[0], start + batch_size))
        y = targets[sl].long()
        out = predict(images[sl])
        clean_preds = {}
        for k, tally in tallies.items():
            logits, cost, ideal = out[k]
            clean_preds[k] = logits.argmax(1)
            tally.add_clean(clean_preds[k], y, cost, ideal)
        if shifted is not None:
            off = offsets[sl]
            ys = torch.stack([shift_labels(y[i], int(dy), int(dx), fill) for i, (dy, dx) in enumerate(off.tolist())])
            out = predict(shifted[sl])
            for k, tally in tallies.items():
                logits, cost, ideal = out[k]
                tally.add_shifted(logits.argmax(1), ys, clean_preds[k], y, off, cost, ideal)
        if progress is not None:
            progress(sl.stop - sl.start)
    return tallies, time.perf_counter() - t0


def plain_predictions(net: nn.Module, key: Key = 1) -> Callable[[Tensor], dict[Key, SegPrediction]]:
    """A ``predict`` for :func:`run_seg_pairs`: the plain network (one forward per image), under ``key``."""

    def predict(x: Tensor) -> dict[Key, SegPrediction]:
        return {key: (select_output(net(x)), 1.0, 1.0)}

    return predict


def search_predictions_dense(model: nn.Module, budgets: Sequence[int],
                             aggregates: Sequence[str]) -> Callable[[Tensor], dict[tuple[int, str], SegPrediction]]:
    """A ``predict``: one search per batch at the largest budget of a ``wrap(..., task="segmentation")``-ed
    ``model``; keys ``(budget, aggregate)``, each the first ``budget`` candidates aggregated, with the cost
    of a search at that budget. Budget 1 is the plain network (cost 1)."""
    top = max(budgets)

    def predict(x: Tensor) -> dict[tuple[int, str], SegPrediction]:
        out: dict[tuple[int, str], SegPrediction] = {}
        if top == 1:
            y = select_output(model(x, budget=1))
            return {(1, a): (y, 1.0, 1.0) for a in aggregates}
        cands = model.candidates(x, top)
        for b in budgets:
            cost, ideal = model.candidates_cost(cands, b)
            for a in aggregates:
                out[(b, a)] = (model.aggregate_candidates(cands, b, aggregate=a), cost, ideal)
        return out

    return predict


def tta_predictions(tta, budgets: Sequence[int] = (1,)) -> Callable[[Tensor], dict[int, SegPrediction]]:
    """A ``predict`` for a :class:`~undiscard.tta.DenseTTA`: keys are phase budgets per view (a plain
    model: only 1). Each view is searched once at the largest budget (a wrapped model) and every budget
    aggregates its first candidates, de-augmented and combined by the TTA's aggregator; costs add up
    over the views (FLOP ratio of the view x the search's cost)."""
    from ..tta import combine_dense

    wrapped = isinstance(tta.model, TestTimeModule)
    if not wrapped and any(b != 1 for b in budgets):
        raise ValueError("phase budgets other than 1 need DenseTTA around a wrap()-ed model")
    top = max(budgets)

    def predict(x: Tensor) -> dict[int, SegPrediction]:
        if top == 1:
            logits = tta(x, phase_budget=1 if wrapped else None)
            return {1: (logits, tta.last_cost, tta.last_cost_ideal)}
        size = (x.shape[-2], x.shape[-1])
        per_view: dict[int, list[Tensor]] = {b: [] for b in budgets}
        cost = {b: [0.0, 0.0] for b in budgets}
        for view in tta.views:
            ratio = tta.view_cost(x, view)
            cands = tta.model.candidates(tta.augment(x, view), top)
            for b in budgets:
                y = tta.model.aggregate_candidates(cands, b)
                per_view[b].append(tta.deaugment(y, view, size))
                c, i = tta.model.candidates_cost(cands, b)
                cost[b][0] += ratio * c
                cost[b][1] += ratio * i
        return {b: (combine_dense(torch.stack(per_view[b], 1), tta.aggregate), *cost[b]) for b in budgets}

    return predict


def seg_rows(tallies: Mapping[Key, SegTally], describe: Callable[[Key], dict], seconds: float) -> list[dict]:
    """One result row per key: ``describe(key)`` (model, method, budget, ...) plus the tally's summary."""
    return [{**describe(k), **t.summary(), "seconds": round(seconds, 2)} for k, t in tallies.items()]
