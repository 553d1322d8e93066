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
search is incremental); budget 1 is the original model exactly. :func:`evaluate_states` scores every
single state on its own: the diagnostic for a model on which the search loses.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from .search import state_offset
from .wrapper import Undiscard, wrap

__all__ = ["Row", "evaluate", "evaluate_states", "evaluate_tta", "evaluate_tta_grid", "row_from_counts",
           "topk_correct"]


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
               units=template.units, seconds=template.seconds, counts=counts, tta=template.tta,
               tta_views=template.tta_views, total_budget=template.tta_views * template.budget)


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
    tallies = {k: _Tally() for k in keys}
    t0 = time.perf_counter()
    for sl in _batches(n, batch_size):
        y = labels[sl]
        for x, clean in [(images[sl], True)] + ([(shifted[sl], False)] if shifted is not None else []):
            cands = model.candidates(x, top)
            for b in budgets:
                cost, ideal = model.candidates_cost(cands, b)
                for v in variants:
                    logits = model.aggregate_candidates(cands, b, aggregate=v[0], align=v[1])
                    tallies[(b, v)].add(logits, y, clean, cost, ideal)
        if progress is not None:
            progress(sl.stop - sl.start)
    seconds = time.perf_counter() - t0
    return [row_from_counts(Row(model=name, budget=b, top1=0.0, top5=None, top1_shifted=None, consistency=None,
                                cost=0.0, cost_ideal=0.0, n=n, criterion=model.criterion, aggregate=agg, align=al,
                                units=[u.name for u in model.search_units], seconds=seconds),
                            tallies[(b, (agg, al))].counts(n, shifted is not None))
            for b, (agg, al) in keys]


class _Tally:
    """Running sums for one row; clean batches must come before their shifted copies."""

    def __init__(self) -> None:
        self.sums = dict.fromkeys(("correct1", "correct5", "correct_shifted", "agree", "cost_sum", "ideal_sum"), 0.0)
        self._preds: Tensor | None = None

    def add(self, logits: Tensor, y: Tensor, clean: bool, cost: float, ideal: float) -> None:
        s = self.sums
        if clean:
            s["correct1"] += topk_correct(logits, y, 1)
            s["correct5"] += topk_correct(logits, y, 5)
            s["cost_sum"] += cost * len(y)
            s["ideal_sum"] += ideal * len(y)
            self._preds = logits.argmax(-1)
        else:
            assert self._preds is not None
            s["correct_shifted"] += topk_correct(logits, y, 1)
            s["agree"] += int((self._preds == logits.argmax(-1)).sum())

    def counts(self, n: int, shifted: bool) -> dict[str, float]:
        return {**self.sums, "n": float(n), "shifted": float(shifted)}


@torch.no_grad()
def evaluate_tta(name: str, tta, images: Tensor, labels: Tensor, budgets: Sequence[int], *,
                 shifted: Tensor | None = None, batch_size: int = 128,
                 progress: Callable[[int], None] | None = None) -> list[Row]:
    """Evaluate a :class:`~undiscard.tta.TTA` at each phase budget per view (its model must be a
    ``wrap()``-ed one for budgets other than 1). Rows carry ``tta``, ``tta_views`` and ``total_budget``
    (views x budget); ``cost`` counts every view's forwards and searches."""
    inner = tta.model
    if not isinstance(inner, Undiscard) and any(b != 1 for b in budgets):
        raise ValueError("phase budgets other than 1 need TTA around a wrap()-ed model")
    n = images.shape[0]
    rows: list[Row] = []
    for b in budgets:
        if isinstance(inner, Undiscard):
            inner.budget = b
        tally = _Tally()
        t0 = time.perf_counter()
        for sl in _batches(n, batch_size):
            y = labels[sl]
            for x, clean in [(images[sl], True)] + ([(shifted[sl], False)] if shifted is not None else []):
                logits = tta(x)
                tally.add(logits, y, clean, tta.last_cost, tta.last_cost_ideal)
            if progress is not None:
                progress(sl.stop - sl.start)
        wrapped = isinstance(inner, Undiscard)
        template = Row(model=name, budget=b, top1=0.0, top5=None, top1_shifted=None, consistency=None, cost=0.0,
                       cost_ideal=0.0, n=n, criterion=inner.criterion if wrapped else "-",
                       aggregate=inner.aggregate if wrapped else "-", align=inner.align if wrapped else None,
                       units=[u.name for u in inner.search_units] if wrapped else [],
                       seconds=time.perf_counter() - t0, tta=f"{tta.policy_name}/{tta.aggregator.name}",
                       tta_views=len(tta.views))
        rows.append(row_from_counts(template, tally.counts(n, shifted is not None)))
    return rows


@torch.no_grad()
def evaluate_tta_grid(name: str, model: Undiscard, views: Sequence, images: Tensor, labels: Tensor,
                      configs: Sequence[tuple[int, int, str]], *, shifted: Tensor | None = None,
                      batch_size: int = 128, progress: Callable[[int], None] | None = None) -> list[Row]:
    """Mean-of-logits TTA over the first V ``views`` with b phase states per view, for every
    ``(V, b, label)`` in ``configs``, from one search per view at the largest b it needs (the search is
    incremental, so each prefix is exactly a run at that budget). Costs add up over the views."""
    model.eval()
    model.prepare(images[:1])
    for v_count, b, label in configs:
        if not 1 <= v_count <= len(views):
            raise ValueError(f"TTA config {label!r} asks for {v_count} views; there are {len(views)}")
        model._check_budget(b)
    need = [max((b for v_count, b, _ in configs if v < v_count), default=0) for v in range(len(views))]
    n = images.shape[0]
    tallies = {c: _Tally() for c in configs}
    t0 = time.perf_counter()
    for sl in _batches(n, batch_size):
        y = labels[sl]
        for x, clean in [(images[sl], True)] + ([(shifted[sl], False)] if shifted is not None else []):
            per_view: list[dict[int, tuple[Tensor, float, float]]] = []
            for v, top in enumerate(need):
                if top == 0:
                    break
                cands = model.candidates(views[v](x), top)
                per_view.append({b: (model.aggregate_candidates(cands, b), *model.candidates_cost(cands, b))
                                 for b in {b for v_count, b, _ in configs if v < v_count}})
            for c in configs:
                v_count, b, _ = c
                outs = [per_view[v][b] for v in range(v_count)]
                logits = torch.stack([o[0] for o in outs]).mean(0)
                tallies[c].add(logits, y, clean, sum(o[1] for o in outs), sum(o[2] for o in outs))
        if progress is not None:
            progress(sl.stop - sl.start)
    seconds = time.perf_counter() - t0
    return [row_from_counts(Row(model=name, budget=b, top1=0.0, top5=None, top1_shifted=None, consistency=None,
                                cost=0.0, cost_ideal=0.0, n=n, criterion=model.criterion, aggregate=model.aggregate,
                                align=model.align, units=[u.name for u in model.search_units], seconds=seconds,
                                tta=label, tta_views=v_count), tallies[(v_count, b, label)].counts(n, shifted is not None))
            for v_count, b, label in configs]


@torch.no_grad()
def evaluate_states(model: Undiscard, images: Tensor, labels: Tensor, *, batch_size: int = 250) -> list[dict]:
    """Top-1 of the network run at each single state of ``model``'s searched units (``run_state``).

    One dict per state, in the order of the state space (the first is the all-zero state, the original
    model): ``state`` (tuple), ``dy``/``dx`` (offset in pixels of the first searched unit's input),
    ``top1`` and ``delta`` (points against the original model). Costs one forward per state per image.
    """
    model.prepare(images[:1])
    units = model.search_units
    rates, spatial = [u.rate for u in units], [u.spatial for u in units]
    rows = []
    for state in itertools.product(*(range(u.num_phases) for u in units)):
        correct = sum(topk_correct(model.run_state(images[sl], state), labels[sl], 1)
                      for sl in _batches(len(images), batch_size))
        dy, dx = state_offset(state, rates, spatial)
        rows.append({"state": state, "dy": int(dy), "dx": int(dx), "top1": 100.0 * correct / max(1, len(images))})
    for r in rows:
        r["delta"] = r["top1"] - rows[0]["top1"]
    return rows
