"""Evaluating a classifier with and without the phase search: accuracy, robustness to shifts, cost.

Every evaluation reports the three numbers of DESIGN §1b side by side:

- ``top1`` (and ``top5``): accuracy on the clean images;
- ``top1_shifted``: accuracy on the same images translated by a seeded random offset (the caller makes
  the shifted copies, e.g. with :func:`undiscard.data.shift_images`);
- ``consistency``: the share of images whose top-1 prediction is the same for the image and its
  shifted copy;

plus ``cost``: the mean cost per image in baseline-forward equivalents (``Undiscard.last_cost``), and
``cost_ideal``, what it would be if every expansion recomputed only from its unit on.

One search per batch at the largest budget serves every budget and every aggregation variant (the
search is incremental); budget 1 is the original model exactly.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from .wrapper import Undiscard, wrap

__all__ = ["Row", "evaluate", "row_from_counts", "topk_correct"]


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
    align: bool
    units: list[str]
    seconds: float  # wall time of the model's whole evaluation (one search serves all budgets and variants)
    counts: dict[str, float] | None = None  # exact sums behind the percentages (for sharded evaluation)

    def as_dict(self) -> dict:
        return asdict(self)


def row_from_counts(template: Row, counts: dict[str, float]) -> Row:
    """A row recomputed from (possibly summed across processes) counts: n, correct1, correct5,
    correct_shifted, agree, cost_sum, ideal_sum, shifted (0/1)."""
    n = counts["n"]
    shifted = counts["shifted"] > 0
    return Row(model=template.model, budget=template.budget, top1=100.0 * counts["correct1"] / n,
               top5=100.0 * counts["correct5"] / n,
               top1_shifted=100.0 * counts["correct_shifted"] / n if shifted else None,
               consistency=100.0 * counts["agree"] / n if shifted else None,
               cost=counts["cost_sum"] / n, cost_ideal=counts["ideal_sum"] / n, n=int(n),
               criterion=template.criterion, aggregate=template.aggregate, align=template.align,
               units=template.units, seconds=template.seconds, counts=counts)


def topk_correct(logits: Tensor, labels: Tensor, k: int) -> int:
    k = min(k, logits.shape[-1])
    return int((logits.topk(k, dim=-1).indices == labels[:, None]).any(-1).sum())


def _batches(n: int, size: int) -> Iterable[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


Variant = tuple[str, bool]  # (aggregate, align)


@torch.no_grad()
def evaluate(name: str, net: nn.Module | Undiscard, images: Tensor, labels: Tensor, budgets: Sequence[int], *,
             shifted: Tensor | None = None, criterion: str = "entropy", aggregate: str = "entropy",
             align: bool = True, units=None, batch_size: int = 128, variants: Sequence[Variant] | None = None,
             progress: Callable[[int], None] | None = None, **wrap_kwargs) -> list[Row]:
    """Evaluate ``net`` at each budget on ``images`` (N, C, H, W) with ``labels`` (N,).

    Each batch is searched once, at the largest budget; every smaller budget uses the first candidates
    of that search (the search is incremental, so they are exactly the states a search at that budget
    picks) and its cost is what such a search costs. ``variants``: (aggregate, align) pairs evaluated on
    the same searches (default: the model's own); rows come budget-major, then variant.

    ``shifted``: the same images translated (same order); enables ``top1_shifted`` and ``consistency``.
    ``progress``: called with the number of images just processed (for a progress bar).
    """
    model = net if isinstance(net, Undiscard) else wrap(net, budget=1, criterion=criterion, aggregate=aggregate,
                                                       align=align, units=units, **wrap_kwargs)
    model.eval()
    model.prepare(images[:1])
    variants = list(variants) if variants is not None else [(model.aggregate, model.align)]
    top = max(budgets)
    model.budget = top  # validates the budget against the state space
    n = images.shape[0]
    keys = [(b, v) for b in budgets for v in variants]
    counts = {k: dict.fromkeys(("correct1", "correct5", "correct_shifted", "agree", "cost_sum", "ideal_sum"), 0.0)
              for k in keys}
    t0 = time.perf_counter()
    for sl in _batches(n, batch_size):
        m = sl.stop - sl.start
        runs = [(images[sl], True)] + ([(shifted[sl], False)] if shifted is not None else [])
        preds: dict[tuple, Tensor] = {}
        for x, clean in runs:
            cands = model.candidates(x, top)
            for b in budgets:
                cost, ideal = model.candidates_cost(cands, b)
                for v in variants:
                    c = counts[(b, v)]
                    logits = model.aggregate_candidates(cands, b, aggregate=v[0], align=v[1])
                    y = labels[sl]
                    if clean:
                        c["correct1"] += topk_correct(logits, y, 1)
                        c["correct5"] += topk_correct(logits, y, 5)
                        c["cost_sum"] += cost * m
                        c["ideal_sum"] += ideal * m
                        preds[(b, v)] = logits.argmax(-1)
                    else:
                        c["correct_shifted"] += topk_correct(logits, y, 1)
                        c["agree"] += int((preds[(b, v)] == logits.argmax(-1)).sum())
        if progress is not None:
            progress(m)
    seconds = time.perf_counter() - t0
    rows: list[Row] = []
    for b, (agg, al) in keys:
        c = {**counts[(b, (agg, al))], "n": float(n), "shifted": float(shifted is not None)}
        template = Row(model=name, budget=b, top1=0.0, top5=None, top1_shifted=None, consistency=None,
                       cost=0.0, cost_ideal=0.0, n=n, criterion=model.criterion, aggregate=agg, align=al,
                       units=[u.name for u in model.search_units], seconds=seconds)
        rows.append(row_from_counts(template, c))
    return rows
