"""Counting a classifier's results: top-k hits, clean/shifted/consistency tallies, result rows.

Everything is kept as exact sums (integer hit counts, cost sums) so that shards of one evaluation
(:mod:`undiscard.evaluation.distributed`) add up to the single-process numbers; percentages are made only at the
end, by :func:`row_from_counts`. The sums of one row (:meth:`ClassificationTally.counts`):

- ``correct1``, ``correct5``: clean images whose label is the top-1 / among the top-5 predictions;
- ``correct_shifted``: shifted copies whose label is the top-1 prediction;
- ``agree``: images whose top-1 prediction is the same for the image and its shifted copy;
- ``cost_sum``, ``ideal_sum``: cost per image (baseline forwards) summed over the clean images;
- ``n`` (images) and ``shifted`` (1.0 when shifted copies were evaluated, else 0.0).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from torch import Tensor

from .tally import Tally

__all__ = ["Row", "ClassificationTally", "row_from_counts", "topk_correct"]

SUMS = ("correct1", "correct5", "correct_shifted", "agree", "cost_sum", "ideal_sum")


def topk_correct(logits: Tensor, labels: Tensor, k: int) -> int:
    """How many rows of ``logits`` (N, K) have their label (N,) among their ``k`` largest (k capped at K)."""
    k = min(k, logits.shape[-1])
    return int((logits.topk(k, dim=-1).indices == labels[:, None]).any(-1).sum())


class ClassificationTally(Tally):
    """The sums of one row (see the module docstring): what ``task="classification"`` counts with.

    Feed each batch's clean logits first, then the logits of its shifted copies (the same images in the
    same order): consistency compares the two.
    """

    def __init__(self) -> None:
        self.sums = dict.fromkeys(SUMS + ("n", "shifted"), 0.0)
        self._preds: Tensor | None = None

    def update(self, logits: Tensor, target: Tensor, *, clean: bool = True, cost: float = 1.0, ideal: float = 1.0,
               offsets: Tensor | None = None) -> None:
        """Count one batch: ``logits`` (N, K) of clean images (``clean``) or of their shifted copies, with
        their labels ``target`` (N,); ``cost``/``ideal``: mean cost per image of the batch (counted for
        clean batches only). ``offsets`` are not needed (a label does not move)."""
        s = self.sums
        if clean:
            s["correct1"] += topk_correct(logits, target, 1)
            s["correct5"] += topk_correct(logits, target, 5)
            s["cost_sum"] += cost * len(target)
            s["ideal_sum"] += ideal * len(target)
            s["n"] += len(target)
            self._preds = logits.argmax(-1)
        else:
            if self._preds is None:
                raise RuntimeError("ClassificationTally.update: a shifted batch must follow its clean batch")
            s["correct_shifted"] += topk_correct(logits, target, 1)
            s["agree"] += int((self._preds == logits.argmax(-1)).sum())
            s["shifted"] = 1.0

    def counts(self) -> dict[str, float]:
        """The sums with ``n`` (images counted) and ``shifted`` (1.0 when shifted copies were counted), as
        :func:`row_from_counts` takes."""
        return dict(self.sums)

    def load_counts(self, counts: Mapping[str, float]) -> None:
        self.sums = {k: float(counts[k]) for k in self.sums}

    def row(self) -> dict[str, Any]:
        """top1, top5, top1_shifted, consistency (percentages; None without shifted copies), cost,
        cost_ideal (means per image), n and the counts themselves."""
        return _metrics(self.counts())


@dataclass
class Row:
    """One result row: one model at one budget (the JSON schema of ``demo``/``eval``)."""

    model: str
    budget: int
    top1: float
    top5: float | None
    top1_shifted: float | None
    consistency: float | None
    cost: float
    cost_ideal: float
    n: int
    criterion: str
    aggregate: str
    align: bool | None
    units: list[str]
    seconds: float  # wall time of the model's whole evaluation (one search serves all budgets and variants)
    counts: dict[str, float] | None = None  # exact sums behind the percentages (for sharded evaluation)
    tta: str | None = None  # image-space TTA: "policy/aggregate", None without
    tta_views: int = 1  # views run per image
    total_budget: int | None = None  # views x budget: states evaluated per image
    states: int | None = None  # states a search evaluates per view: below ``budget`` where an order's stop caps it

    def as_dict(self) -> dict:
        return asdict(self)


def _metrics(counts: Mapping[str, float]) -> dict[str, Any]:
    """A row's numbers from its counts (see :meth:`ClassificationTally.row`)."""
    n = counts["n"]
    shifted = counts["shifted"] > 0
    return dict(top1=100.0 * counts["correct1"] / n, top5=100.0 * counts["correct5"] / n,
                top1_shifted=100.0 * counts["correct_shifted"] / n if shifted else None,
                consistency=100.0 * counts["agree"] / n if shifted else None,
                cost=counts["cost_sum"] / n, cost_ideal=counts["ideal_sum"] / n, n=int(n), counts=dict(counts))


def row_from_counts(template: Row, counts: dict[str, float]) -> Row:
    """A row recomputed from (possibly summed across processes) counts: n, correct1, correct5,
    correct_shifted, agree, cost_sum, ideal_sum, shifted (0/1). Everything else comes from ``template``."""
    return Row(model=template.model, budget=template.budget, **_metrics(counts), criterion=template.criterion,
               aggregate=template.aggregate, align=template.align, units=template.units, seconds=template.seconds,
               tta=template.tta, tta_views=template.tta_views, total_budget=template.tta_views * template.budget,
               states=template.states)
