"""Evaluating a model with and without the phase search: the loop, its predictions, classifier rows.

Every evaluation reports three numbers side by side (docs/semantics.md, "What an evaluation reports"):

- ``top1`` (and ``top5``): accuracy on the clean images;
- ``top1_shifted``: accuracy on the same images translated by a seeded random offset (the caller makes
  the shifted copies, e.g. with :func:`undiscard.data.shift_images`);
- ``consistency``: the share of images whose top-1 prediction is the same for the image and its
  shifted copy;

plus ``cost``: the mean cost per image in baseline-forward equivalents (``Undiscard.last_cost``), and
``cost_ideal``, what it would be if every state were recomputed only from its last non-zero unit on.

One search per batch at the largest budget serves every budget and every aggregation variant (the
search is incremental); budget 1 is the original model exactly. :func:`evaluate_states` scores every
single state on its own: the diagnostic for a model on which the search loses.

All runners, of either task, share one loop, :func:`run_batches`: it takes any iterable of :class:`Batch`
(clean images, targets, shifted copies or None, their offsets or None), e.g. a
``torch.utils.data.DataLoader`` that reads and shifts each batch as it goes (``undiscard eval``), so memory
stays flat in the data set size; each clean batch then its shifted copy is counted in one tally per row,
the task's (:meth:`undiscard.tasks.base.Task.tally`: top-k hits for a classifier, confusion matrices for
a segmenter, :mod:`undiscard.metrics`). :func:`run_pairs` is that loop over tensors held in memory,
:func:`evaluate_stream`/:func:`evaluate_tta_stream` are :func:`evaluate`/:func:`evaluate_tta` over a
stream. The runners differ only in the ``predict`` function they give the loop: :func:`search_predictions`
(one search per batch at the largest budget serves every budget and aggregation),
:func:`plain_predictions` (the network), :func:`tta_predictions` (a :class:`~undiscard.tta.TTA`, every
phase budget per view). A segmenter's rows are dicts (:func:`describe_rows`); a classifier's are
:class:`~undiscard.metrics.Row`. No runner changes the settings of the model it is given: budgets are
passed per call.
"""
from __future__ import annotations

import itertools
import time
from contextlib import contextmanager
from typing import (
    Callable,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    NamedTuple,
    Sequence,
    TypeVar,
)

import torch
from torch import Tensor, nn

from .._testtime import TestTimeModule
from ..analysis.outputs import select_output
from ..errors import UndiscardError
from ..metrics.classification import (
    ClassificationTally,
    Row,
    row_from_counts,
    topk_correct,
)
from ..metrics.tally import Tally
from ..search._best_first import state_offset
from ..wrapper import Undiscard, wrap

__all__ = ["Batch", "Counted", "Prediction", "Row", "Tally", "batches", "describe_rows", "evaluate",
           "evaluate_states", "evaluate_stream", "evaluate_tta", "evaluate_tta_grid", "evaluate_tta_stream",
           "plain_predictions", "row_from_counts", "run_batches", "run_pairs", "search_predictions", "tensor_batches",
           "search_logits", "topk_correct", "tta_predictions", "view_logits"]

Prediction = tuple[Tensor, float, float]  # logits (N, *output), mean cost and mean ideal cost per image
Key = TypeVar("Key", bound=Hashable)
Variant = tuple[str, bool]  # (aggregate, align)


def batches(n: int, size: int) -> Iterator[slice]:
    """Slices of ``range(n)`` of at most ``size`` items, in order."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


class Batch(NamedTuple):
    """One batch of an evaluation: clean ``images`` (N, C, H, W), their ``targets`` (labels (N,) or label
    maps (N, H, W)), their ``shifted`` copies or None, and the ``offsets`` (N, 2) = (dy, dx) they were
    shifted by (down/right positive; what a segmentation tally moves the label maps by) or None. A plain
    ``(images, targets, shifted)`` tuple is a batch without offsets."""

    images: Tensor
    targets: Tensor
    shifted: Tensor | None = None
    offsets: Tensor | None = None


def tensor_batches(images: Tensor, targets: Tensor, shifted: Tensor | None = None, batch_size: int = 128,
                   offsets: Tensor | None = None) -> Iterator[Batch]:
    """Batches (:class:`Batch`) of at most ``batch_size`` rows of tensors held in memory, in order."""
    for sl in batches(images.shape[0], batch_size):
        yield Batch(images[sl], targets[sl], shifted[sl] if shifted is not None else None,
                    offsets[sl] if offsets is not None else None)


class Counted(NamedTuple):
    """What :func:`run_batches` counted: one tally per key, wall seconds, images, and whether every batch
    came with shifted copies."""

    tallies: dict
    seconds: float
    n: int
    shifted: bool

    def counts(self, key: Hashable) -> dict[str, float]:
        return self.tallies[key].counts()


def run_batches(stream: Iterable[Batch | tuple], predict: Callable[[Tensor], Mapping[Key, Prediction]],
                keys: Sequence[Key], *, tally: Callable[[], Tally] = ClassificationTally,
                progress: Callable[[int], None] | None = None) -> Counted:
    """The evaluation loop every runner here shares, for either task: for each :class:`Batch` ``(x, y, xs,
    offsets)`` of ``stream``, ``predict`` is called on the clean batch ``x``, then on its shifted copy ``xs``
    (if not None), and returns one :data:`Prediction` per key of ``keys`` (a budget, a variant, a TTA
    config); each is counted in that key's tally, made by ``tally`` (the task's:
    ``lambda: task.tally(num_classes, ignore_index)``; default: a classifier's top-k hits).

    ``stream`` is consumed once, one batch at a time, and no batch is kept: a ``DataLoader`` that reads
    images as it goes evaluates a data set of any size in the memory of a few batches. Either every
    batch has shifted copies or none has. ``progress`` is called with the number of images of each
    finished batch (for a progress bar).
    """
    tallies = {k: tally() for k in keys}
    t0 = time.perf_counter()
    n, with_shifted = 0, None
    for batch in stream:
        x, y, xs, offsets = Batch(*batch)
        if with_shifted is None:
            with_shifted = xs is not None
        elif with_shifted != (xs is not None):
            raise ValueError("run_batches: either every batch has shifted copies or none has")
        for images, clean in [(x, True)] + ([(xs, False)] if xs is not None else []):
            out = predict(images)
            for k, counter in tallies.items():
                logits, cost, ideal = out[k]
                counter.update(logits, y, clean=clean, cost=cost, ideal=ideal, offsets=None if clean else offsets)
        n += len(y)
        if progress is not None:
            progress(len(y))
    return Counted(tallies, time.perf_counter() - t0, n, bool(with_shifted))


def run_pairs(images: Tensor, targets: Tensor, predict: Callable[[Tensor], Mapping[Key, Prediction]],
              keys: Sequence[Key], *, shifted: Tensor | None = None, offsets: Tensor | None = None,
              batch_size: int = 128, tally: Callable[[], Tally] = ClassificationTally,
              progress: Callable[[int], None] | None = None) -> tuple[dict[Key, Tally], float]:
    """:func:`run_batches` over tensors in memory: batches of ``images`` (N, C, H, W) with ``targets``
    and the same rows of ``shifted`` and ``offsets`` (if given). Returns the tallies and the wall time in
    seconds."""
    counted = run_batches(tensor_batches(images, targets, shifted, batch_size, offsets), predict, keys, tally=tally,
                          progress=progress)
    return counted.tallies, counted.seconds


def describe_rows(tallies: Mapping[Key, Tally], describe: Callable[[Key], dict], seconds: float) -> list[dict]:
    """One result row (a dict) per key: ``describe(key)`` (model, method, budget, ...), then the tally's
    :meth:`~undiscard.metrics.tally.Tally.row` and the wall ``seconds`` (rounded to 0.01)."""
    return [{**describe(k), **t.row(), "seconds": round(seconds, 2)} for k, t in tallies.items()]


def _peeked(stream: Iterable[Batch]) -> tuple[Batch, Iterator[Batch]]:
    """The first batch of ``stream`` (to set a model up on) and the whole stream, that batch included."""
    it = iter(stream)
    try:
        first = next(it)
    except StopIteration:
        raise UndiscardError("nothing to evaluate: the stream of batches is empty") from None
    return first, itertools.chain([first], it)


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode inside the block, every submodule's own mode restored after it."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def view_logits(net: nn.Module, views: Sequence[str], x: Tensor, batch_size: int) -> Tensor:
    """Logits (N, V, K) of every view of ``x`` (a list of view names, :mod:`undiscard.tta.views`), run
    ``batch_size`` images at a time: what a measurement combines into any TTA aggregate without rerunning."""
    from ..tta import TTA

    tta = TTA(net, list(views), "mean")
    with torch.no_grad():
        return torch.cat([tta.view_logits(x[s]) for s in batches(len(x), batch_size)])


def search_logits(model: Undiscard, x: Tensor, budgets: Sequence[int], aggregates: Sequence[str],
                  batch_size: int) -> tuple[dict[tuple[int, str], Tensor], dict[int, float]]:
    """``{(budget, aggregate): logits (N, K)}`` and ``{budget: mean cost per image}`` of ``x`` from one
    search per batch of ``batch_size`` at the largest budget (:func:`search_predictions`, the model's own
    ``align``)."""
    predict = search_predictions(model, budgets, [(a, model.align) for a in aggregates])
    out: dict[tuple[int, str], list[Tensor]] = {}
    cost: dict[int, float] = dict.fromkeys(budgets, 0.0)
    with torch.no_grad():
        for s in batches(len(x), batch_size):
            for (b, (a, _)), (logits, c, _) in predict(x[s]).items():
                out.setdefault((b, a), []).append(logits)
                if a == aggregates[0]:  # the cost of a search does not depend on the aggregation
                    cost[b] += c * (s.stop - s.start)
    return {k: torch.cat(v) for k, v in out.items()}, {b: c / len(x) for b, c in cost.items()}


def search_predictions(model: Undiscard, budgets: Sequence[int],
                       variants: Sequence[Variant]) -> Callable[[Tensor], dict[tuple[int, Variant], Prediction]]:
    """A ``predict`` for :func:`run_batches`: one search per batch at the largest budget, and for every
    budget b and (aggregate, align) variant the logits of its first b candidates with the cost of a
    search at b (the search is incremental, so each prefix is exactly a run at that budget). Keys are
    ``(b, variant)``; ``model``'s own settings are left alone. When every budget is 1, the network runs
    itself (``model(x, budget=1)``, cost 1): no search, no setup."""
    top = max(budgets)

    def predict(x: Tensor) -> dict[tuple[int, Variant], Prediction]:
        if top == 1:
            y = select_output(model(x, budget=1))
            return {(1, v): (y, 1.0, 1.0) for v in variants}
        cands = model.candidates(x, top)
        out: dict[tuple[int, Variant], Prediction] = {}
        for b in budgets:
            cost, ideal = model.candidates_cost(cands, b)
            for agg, align in variants:
                out[(b, (agg, align))] = (model.aggregate_candidates(cands, b, aggregate=agg, align=align), cost,
                                          ideal)
        return out

    return predict


def plain_predictions(net: nn.Module, key: Hashable = 1) -> Callable[[Tensor], dict[Hashable, Prediction]]:
    """A ``predict`` for :func:`run_batches`: the plain network (one forward per image, cost 1), under ``key``."""

    def predict(x: Tensor) -> dict[Hashable, Prediction]:
        return {key: (select_output(net(x)), 1.0, 1.0)}

    return predict


def tta_predictions(tta, budgets: Sequence[int] = (1,), *,
                    baseline: bool = False) -> Callable[[Tensor], dict[int | str, Prediction]]:
    """A ``predict`` for a :class:`~undiscard.tta.TTA`: keys are phase budgets per view (around a plain
    model: only 1), each given per call (the wrapped model's own budget is left alone); costs count every
    view's forwards and searches. ``baseline``: also the plain network under key ``"plain"`` (budget 1,
    no TTA, cost 1). A classification TTA runs its views as one batch per budget; a segmentation TTA
    searches each view once at the largest budget, and every budget aggregates its first candidates,
    de-augmented and combined by the TTA's aggregator (the search is incremental)."""
    inner = tta.model
    wrapped = isinstance(inner, TestTimeModule)
    if not wrapped and any(b != 1 for b in budgets):
        raise ValueError("phase budgets other than 1 need TTA around a wrap()-ed model")
    top = max(budgets)

    def per_view_searches(x: Tensor) -> dict[int | str, Prediction]:
        size = (x.shape[-2], x.shape[-1])
        per_view: dict[int, list[Tensor]] = {b: [] for b in budgets}
        cost = {b: [0.0, 0.0] for b in budgets}
        for view in tta.views:
            ratio = tta.view_cost(x, view)
            cands = inner.candidates(tta.augment(x, view), top)
            for b in budgets:
                per_view[b].append(tta.deaugment(inner.aggregate_candidates(cands, b), view, size))
                c, i = inner.candidates_cost(cands, b)
                cost[b][0] += ratio * c
                cost[b][1] += ratio * i
        return {b: (tta.aggregator(torch.stack(per_view[b], 1)), *cost[b]) for b in budgets}

    def predict(x: Tensor) -> dict[int | str, Prediction]:
        out: dict[int | str, Prediction] = {}
        if baseline:
            out["plain"] = (select_output(inner(x, budget=1) if wrapped else inner(x)), 1.0, 1.0)
        if tta.dense and top > 1:
            out.update(per_view_searches(x))
            return out
        for b in budgets:
            logits = tta(x, phase_budget=b if wrapped else None)
            out[b] = (logits, tta.last_cost, tta.last_cost_ideal)
        return out

    return predict


def _template(name: str, model: Undiscard | None, budget: int, n: int, seconds: float, **kw) -> Row:
    """A row to fill from counts (:func:`row_from_counts`): ``model``'s settings, or "-" without one."""
    if model is None:
        settings = dict(criterion="-", aggregate="-", align=None, units=[])
    else:
        try:
            units = [u.name for u in model.search_units]
        except UndiscardError:  # only run at budget 1, which needs no setup: no units were looked for
            units = []
        settings = dict(criterion=model.criterion, aggregate=model.aggregate, align=model.align, units=units,
                        states=budget if model.order is None or model.criterion != "calibrated"
                        else min(budget, len(model.order.searched)))
    return Row(model=name, budget=budget, top1=0.0, top5=None, top1_shifted=None, consistency=None, cost=0.0,
               cost_ideal=0.0, n=n, seconds=seconds, **{**settings, **kw})


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
    ``progress``: called with the number of images just processed (for a progress bar). A wrapped
    ``net`` is used as it is, its settings untouched (it runs in eval mode, and its modes are restored).
    :func:`evaluate_stream` is the same over batches read as it goes.
    """
    return evaluate_stream(name, net, tensor_batches(images, labels, shifted, batch_size), budgets,
                           criterion=criterion, aggregate=aggregate, align=align, units=units, variants=variants,
                           progress=progress, **wrap_kwargs)


@torch.no_grad()
def evaluate_stream(name: str, net: nn.Module | Undiscard, stream: Iterable[Batch], budgets: Sequence[int], *,
                    criterion: str = "entropy", aggregate: str = "entropy", align: bool = True, units=None,
                    variants: Sequence[Variant] | None = None, progress: Callable[[int], None] | None = None,
                    **wrap_kwargs) -> list[Row]:
    """:func:`evaluate` over a stream of batches (:data:`Batch`, e.g. a ``DataLoader``), consumed once: the
    model is set up on the first batch's first image and every budget checked before any counting."""
    model = net if isinstance(net, Undiscard) else wrap(net, budget=1, criterion=criterion, aggregate=aggregate,
                                                       align=align, units=units, **wrap_kwargs)
    with _eval_mode(model):
        first, stream = _peeked(stream)
        model.prepare(first[0][:1])
        variants = list(variants) if variants is not None else [(model.aggregate, model.align)]
        model.check_budget(max(budgets))  # against the state space, before any work
        keys = [(b, v) for b in budgets for v in variants]
        counted = run_batches(stream, search_predictions(model, budgets, variants), keys, progress=progress)
    return [row_from_counts(_template(name, model, b, counted.n, counted.seconds, aggregate=agg, align=al),
                            counted.counts((b, (agg, al))))
            for b, (agg, al) in keys]


@torch.no_grad()
def evaluate_tta(name: str, tta, images: Tensor, labels: Tensor, budgets: Sequence[int], *,
                 shifted: Tensor | None = None, batch_size: int = 128,
                 progress: Callable[[int], None] | None = None) -> list[Row]:
    """Evaluate a :class:`~undiscard.tta.TTA` at each phase budget per view (its model must be a
    ``wrap()``-ed one for budgets other than 1). Rows carry ``tta``, ``tta_views`` and ``total_budget``
    (views x budget); ``cost`` counts every view's forwards and searches. Each budget is given per call
    (``tta(x, phase_budget=b)``): the wrapped model's own budget is left alone. One pass over the
    images serves every budget (``progress`` counts each image once). :func:`evaluate_tta_stream` is
    the same over batches read as it goes."""
    return evaluate_tta_stream(name, tta, tensor_batches(images, labels, shifted, batch_size), budgets,
                               progress=progress)


@torch.no_grad()
def evaluate_tta_stream(name: str, tta, stream: Iterable[Batch], budgets: Sequence[int], *,
                        progress: Callable[[int], None] | None = None, baseline: bool = False) -> list[Row]:
    """:func:`evaluate_tta` over a stream of batches (:data:`Batch`), consumed once. ``baseline``: the
    plain network's row too (budget 1, no TTA, cost 1), first, measured on the same batches — the
    reference every TTA row is compared with."""
    inner = tta.model
    wrapped = isinstance(inner, Undiscard)
    if not wrapped and any(b != 1 for b in budgets):
        raise ValueError("phase budgets other than 1 need TTA around a wrap()-ed model")
    first, stream = _peeked(stream)
    if wrapped:  # units known (for the rows) and every budget checked before any work
        inner.prepare(first[0][:1])
        for b in budgets:
            inner.check_budget(b)

    keys: list[int | str] = (["plain"] if baseline else []) + list(budgets)
    counted = run_batches(stream, tta_predictions(tta, budgets, baseline=baseline), keys, progress=progress)
    model = inner if wrapped else None
    plain = [row_from_counts(_template(name, model, 1, counted.n, counted.seconds), counted.counts("plain"))] \
        if baseline else []
    return plain + [row_from_counts(_template(name, model, b, counted.n, counted.seconds,
                                              tta=f"{tta.policy_name}/{tta.aggregator.name}", tta_views=len(tta.views)),
                                    counted.counts(b))
                    for b in budgets]


@torch.no_grad()
def evaluate_tta_grid(name: str, model: Undiscard, views: Sequence, images: Tensor, labels: Tensor,
                      configs: Sequence[tuple[int, int, str]], *, shifted: Tensor | None = None,
                      batch_size: int = 128, progress: Callable[[int], None] | None = None) -> list[Row]:
    """Mean-of-logits TTA over the first V ``views`` with b phase states per view, for every
    ``(V, b, label)`` in ``configs``, from one search per view at the largest b it needs (the search is
    incremental, so each prefix is exactly a run at that budget). Costs add up over the views."""
    with _eval_mode(model):
        model.prepare(images[:1])
        for v_count, b, label in configs:
            if not 1 <= v_count <= len(views):
                raise ValueError(f"TTA config {label!r} asks for {v_count} views; there are {len(views)}")
            model.check_budget(b)
        need = [max((b for v_count, b, _ in configs if v < v_count), default=0) for v in range(len(views))]

        def predict(x: Tensor) -> dict[tuple[int, int, str], Prediction]:
            per_view: list[dict[int, tuple[Tensor, float, float]]] = []
            for v, top in enumerate(need):
                if top == 0:
                    break
                cands = model.candidates(views[v](x), top)
                per_view.append({b: (model.aggregate_candidates(cands, b), *model.candidates_cost(cands, b))
                                 for b in {b for v_count, b, _ in configs if v < v_count}})
            out: dict[tuple[int, int, str], Prediction] = {}
            for c in configs:
                v_count, b, _ = c
                outs = [per_view[v][b] for v in range(v_count)]
                out[c] = (torch.stack([o[0] for o in outs]).mean(0), sum(o[1] for o in outs),
                          sum(o[2] for o in outs))
            return out

        tallies, seconds = run_pairs(images, labels, predict, list(configs), shifted=shifted,
                                     batch_size=batch_size, progress=progress)
    n = images.shape[0]
    return [row_from_counts(_template(name, model, b, n, seconds, tta=label, tta_views=v_count),
                            tallies[(v_count, b, label)].counts())
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
                      for sl in batches(len(images), batch_size))
        dy, dx = state_offset(state, rates, spatial)
        rows.append({"state": state, "dy": int(dy), "dx": int(dx), "top1": 100.0 * correct / max(1, len(images))})
    for r in rows:
        r["delta"] = r["top1"] - rows[0]["top1"]
    return rows
