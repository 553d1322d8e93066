"""Calibrated search orders: states ranked once per model on a labelled split (``criterion="calibrated"``).

A :class:`StateOrder` is a ranked list of states of a model's searched units (the all-zero state, the
original model, always first), with the units' names. With ``wrap(net, criterion="calibrated",
order=ORDER)`` a budget of B evaluates the first B states of the list — no tree, no scores, each state
run from its first non-zero unit on the root's cached activation (:meth:`undiscard.engine.Engine.evaluate`):
the cheapest search there is, and its cost is known before the call. An order may carry a ``stop``: the
search then evaluates at most its first ``stop`` states, whatever the budget (as a tree search stops when
its states run out) — :func:`calibrate` sets it where adding states stopped helping on the calibration
split, so a model whose discarded phases do not help it (the zoo's Swin) is searched little or not at all.

:func:`calibrate` makes one: every state of the searched units is evaluated on labelled images (never
the test set), then states are added greedily, each time the one whose addition gives the aggregate
(the model's own ``aggregate``/``align``) the highest top-1 accuracy, ties broken by the lower mean
negative log-likelihood and then by the state's index; states left after ``greedy`` steps follow by their
own accuracy. ``stop`` is the shortest greedy prefix with the highest aggregate accuracy (``stop=False``: none).
``undiscard calibrate`` (:mod:`undiscard.cli.calibrate`) writes one as a small JSON file;
``scripts/calibrate_zoo.py`` writes one per zoo model to ``undiscard/zoo/orders/NAME.json``
(:func:`zoo_order_path`), ranked on the 5,000 held-out validation images of the training split.

File format (JSON): ``{"format": "undiscard-state-order", "version": 1, "units": [names], "states":
[[phase, ...], ...], "stop": int or null, "meta": {...}}`` — ``meta`` says how it was made (data, images, seed, aggregate,
accuracy after each greedy step, each state's own accuracy).
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import UndiscardError

if TYPE_CHECKING:  # type hints only
    from .discovery import Unit
    from .wrapper import Undiscard

__all__ = ["StateOrder", "as_order", "load_order", "save_order", "zoo_order_path", "greedy_order", "best_prefix",
           "calibrate", "ORDERS_DIR", "FORMAT"]

FORMAT = "undiscard-state-order"
ORDERS_DIR = Path(__file__).with_name("zoo") / "orders"
State = tuple[int, ...]


@dataclass
class StateOrder:
    """Ranked states (the first all zeros) of the units named ``units`` (None: any units of that count)."""

    states: list[State]
    units: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    stop: int | None = None  # the search evaluates at most the first ``stop`` states (None: all of them)

    def __post_init__(self) -> None:
        try:
            self.states = [tuple(int(p) for p in s) for s in self.states]
        except (TypeError, ValueError):
            raise UndiscardError("a state order is a list of states, each a list of phases (ints)") from None
        if not self.states:
            raise UndiscardError("the state order is empty")
        length = len(self.states[0])
        if any(len(s) != length for s in self.states):
            raise UndiscardError("the states of an order must all have one phase per searched unit")
        root = (0,) * length
        if root not in self.states:  # the original model is always the first state (budget 1 = the net)
            self.states.insert(0, root)
        elif self.states[0] != root:
            raise UndiscardError(f"the all-zero state (the original model) must come first in a state order, "
                                 f"found at position {self.states.index(root)}")
        if len(set(self.states)) != len(self.states):
            raise UndiscardError("a state order lists a state twice")
        if self.stop is not None and (isinstance(self.stop, bool) or not isinstance(self.stop, int)
                                      or not 1 <= self.stop <= len(self.states)):
            raise UndiscardError(f"a state order's stop must be an int in 1..{len(self.states)} (or null), "
                                 f"got {self.stop!r}")

    @property
    def searched(self) -> list[State]:
        """The states a search may evaluate, in order: the first ``stop`` (all when ``stop`` is None)."""
        return self.states if self.stop is None else self.states[:self.stop]

    def check(self, units: Sequence["Unit"]) -> None:
        """One :class:`UndiscardError` unless the states fit the searched ``units`` (names, count, rates)."""
        names = [u.name for u in units]
        if self.units is not None and self.units != names:
            raise UndiscardError(f"the state order was made for units {', '.join(self.units)} but "
                                 f"{', '.join(names) or 'none'} are searched: pass the same units=")
        if len(self.states[0]) != len(units):
            raise UndiscardError(f"the state order's states have {len(self.states[0])} phases but {len(units)} "
                                 "units are searched")
        for s in self.states:
            for p, u in zip(s, units):
                if not 0 <= p < u.num_phases:
                    raise UndiscardError(f"state {list(s)} of the order: phase {p} out of range for unit {u.name} "
                                         f"(rate {u.rate})")

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": 1, "units": self.units, "states": [list(s) for s in self.states],
                "stop": self.stop, "meta": self.meta}


def load_order(path: str | Path) -> StateOrder:
    """The :class:`StateOrder` in a JSON file (:func:`save_order`); one :class:`UndiscardError` if it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UndiscardError(f"state order file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UndiscardError(f"cannot read the state order {path}: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("states"), list):
        raise UndiscardError(f"{path} is not a state order file (undiscard calibrate writes them)")
    return StateOrder(data["states"], data.get("units"), dict(data.get("meta") or {}), data.get("stop"))


def save_order(order: StateOrder, path: str | Path) -> Path:
    """Write ``order`` as JSON to ``path`` atomically (a temporary file renamed); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(order.to_json(), indent=1) + "\n")
    tmp.replace(path)
    return path


def as_order(order: "StateOrder | str | Path | Sequence[Sequence[int]] | None") -> StateOrder | None:
    """What ``wrap(order=...)`` accepts, as a :class:`StateOrder`: a file (:func:`load_order`), a list of
    states (the all-zero state is put first when missing), an order, or None."""
    if order is None or isinstance(order, StateOrder):
        return order
    if isinstance(order, (str, Path)):
        return load_order(order)
    if isinstance(order, Sequence):
        return StateOrder(list(order))
    raise UndiscardError(f"order must be a state order file or a list of states, got {type(order).__name__}")


def zoo_order_path(name: str) -> Path:
    """Where the shipped calibrated order of zoo model ``name`` is (``scripts/calibrate_zoo.py``)."""
    return ORDERS_DIR / f"{name}.json"


def all_states(units: Sequence["Unit"]) -> list[State]:
    """Every state of ``units``, the all-zero state first (row-major over the units' phases)."""
    return list(itertools.product(*[range(u.num_phases) for u in units]))


# --- ranking -------------------------------------------------------------------------------------------
def _score(logits: Tensor, labels: Tensor) -> tuple[float, float]:
    """(top-1 accuracy, mean NLL) of (N, K) logits: the classification task's calibration score."""
    from .task import ClassificationTask  # lazy: calibration sits below the tasks in the layers

    return ClassificationTask().calibration_score(logits, labels)


def greedy_order(combine: Callable[[list[int]], Tensor], single: Tensor, labels: Tensor, greedy: int,
                 progress: Callable[[int], None] | None = None,
                 score: Callable[[Tensor, Tensor], tuple[float, float]] = _score) -> tuple[list[int], list[float]]:
    """Positions 0..S-1 of S states ranked: 0 first, then ``greedy`` greedy steps, each adding the state whose
    addition makes ``combine(positions)`` (aggregated logits (N, *output)) score best (``score(logits,
    labels)`` -> (quality, NLL), default top-1 accuracy; ties: lower NLL, then the position); the rest by
    their own logits ``single`` (N, S, *output) (quality, then NLL, then position).
    Returns the ranking and the aggregate's quality after each greedy step (the first: state 0 alone)."""
    s = single.shape[1]
    chosen = [0]
    curve = [score(single[:, 0], labels)[0]]
    left = list(range(1, s))
    for _ in range(min(greedy, s - 1)):
        best = min(left, key=lambda r: (-(sc := score(combine(chosen + [r]), labels))[0], sc[1], r))
        chosen.append(best)
        left.remove(best)
        curve.append(score(combine(chosen), labels)[0])
        if progress is not None:
            progress(1)
    own = {r: score(single[:, r], labels) for r in left}
    chosen += sorted(left, key=lambda r: (-own[r][0], own[r][1], r))
    return chosen, curve


def best_prefix(curve: Sequence[float]) -> int:
    """The length of the shortest prefix of a greedy order with the highest accuracy (``curve[k]``: the
    aggregate's accuracy with the first k + 1 states)."""
    return 1 + max(range(len(curve)), key=lambda k: (curve[k], -k))


@torch.no_grad()
def calibrate(model: "Undiscard", images: Tensor, labels: Tensor, greedy: int = 16, batch_size: int = 256,
              progress: Callable[[int], None] | None = None, meta: dict[str, Any] | None = None,
              stop: bool = True, dtype: torch.dtype | None = None) -> StateOrder:
    """Rank the states of ``model``'s searched units on labelled ``images`` (N, C, H, W) and ``labels``
    ((N,) classes; (N, H, W) label maps for a dense task).

    Every state is evaluated on every image (``progress(images done)`` after each batch, then
    ``progress(1)`` per greedy step), aligned and aggregated as the model aggregates (its ``aggregate``,
    ``align`` and aggregator), and ranked by :func:`greedy_order` with the model's task's
    :meth:`~undiscard.task.Task.calibration_score` (top-1 accuracy; mIoU for segmentation). With
    ``stop``, the order's ``stop`` is :func:`best_prefix` of the greedy scores. ``meta`` is added to the
    order's record. ``dtype`` (e.g. ``torch.float16``): the states' aligned maps and logits are kept in it
    between evaluation and ranking, and each combination is computed in float32 — half the memory, for
    dense outputs (every state of every image is held: N x S x K x H x W values)."""
    from .aggregate import get_aggregate  # lazy: calibration sits below the search in the layers
    from .candidates import find_candidates, stack_candidates
    from .criteria import SearchContext, get_criterion
    from .task import StateMaps

    if images.shape[0] < 1 or images.shape[0] != labels.shape[0]:
        raise UndiscardError(f"calibration needs labelled images: got {images.shape[0]} images and "
                             f"{labels.shape[0]} labels")
    engine = model.prepare(images[:1])
    units = engine.search_units
    if not units:
        raise UndiscardError("no unit is searched: there is nothing to calibrate")
    states = all_states(units)
    full = StateOrder(states, [u.name for u in units])
    ctx = SearchContext.of(engine, model.task, model.seed, full)
    task = model.task
    entropy = model.aggregate == "entropy"  # each state's entropies once, not once per subset combined
    n, stride = images.shape[0], None
    held: dict[str, Tensor | None] = {}  # every image's states, filled batch by batch (no concatenation copy)

    def hold(key: str, t: Tensor | None, start: int, cast: bool) -> None:
        if t is None:
            held[key] = None
            return
        if key not in held:
            held[key] = t.new_empty((n, *t.shape[1:]), dtype=dtype if cast and dtype is not None else t.dtype)
        held[key][start:start + t.shape[0]] = t

    for start in range(0, n, batch_size):
        x = images[start:start + batch_size]
        cands = find_candidates(engine, x, len(states), get_criterion("calibrated"), ctx, chunk_size=model.chunk_size)
        f, lg, off = stack_candidates(cands, engine)
        aligned = task.aligned_states(engine, f, lg, off, model.align)  # once: each state aligns on its own
        del cands, f  # only the aligned maps are combined: the batch's native features are freed here
        if entropy:
            aligned = task.with_entropy(aligned, lg)
        hold("maps", aligned.maps, start, True), hold("extra", aligned.extra, start, True)
        hold("entropy", aligned.entropy, start, False), hold("logits", lg, start, True), hold("offsets", off, start, False)
        stride = aligned.stride
        del aligned, lg, off
        if progress is not None:
            progress(x.shape[0])
    aligned = StateMaps(held["maps"], held["extra"], stride, held["entropy"])
    lg, off = held["logits"], held["offsets"]
    del held
    how = get_aggregate(model.aggregate)
    labels = labels.to(lg.device).long()
    score = task.calibration_score
    wide = (lambda t: t) if dtype is None else (lambda t: None if t is None else t.float())

    def combine(idx: list[int]) -> Tensor:
        sel = aligned.select(idx)
        sel = replace(sel, maps=wide(sel.maps), extra=wide(sel.extra))
        return task.combine_aligned(engine, how, sel, wide(lg[:, idx]), off[:, idx], model.aggregator)

    ranking, curve = greedy_order(combine, lg, labels, greedy, progress, score)  # scores cast what they need
    own = [score(lg[:, r], labels)[0] for r in range(len(states))]
    record = {"images": int(images.shape[0]), "aggregate": model.aggregate, "align": bool(model.align),
              "task": task.resolved_name,
              "greedy_steps": len(curve) - 1, "greedy_accuracy": curve,
              "state_accuracy": {",".join(map(str, states[r])): own[r] for r in ranking},
              "method": "greedy: each step adds the state that makes the aggregate most accurate"}
    record.update(meta or {})
    if not all(math.isfinite(a) for a in curve):
        raise UndiscardError("calibration produced non-finite accuracies")
    return StateOrder([states[r] for r in ranking], full.units, record, best_prefix(curve) if stop else None)
