"""Calibrated search orders: states ranked once per model on a labelled split (``criterion="calibrated"``).

A :class:`StateOrder` is a ranked list of states of a model's searched units (the all-zero state, the
original model, always first), with the units' names. With ``wrap(net, criterion="calibrated",
order=ORDER)`` a budget of B evaluates the first B states of the list — no tree, no scores, each state
run from its first non-zero unit on the root's cached activation (:meth:`undiscard.search._engine.Engine.evaluate`):
the cheapest search there is, and its cost is known before the call. An order may carry a ``stop``: the
search then evaluates at most its first ``stop`` states, whatever the budget (as a tree search stops when
its states run out) — :func:`calibrate` sets it where adding states stopped helping on the calibration
split, so a model whose discarded phases do not help it (the zoo's Swin) is searched little or not at all.

:func:`calibrate` makes one: every state of the searched units is evaluated on labelled images (never
the test set), then states are added greedily, each time the one whose addition gives the aggregate
(the model's own ``aggregate``/``align``) the highest top-1 accuracy, ties broken by the lower mean
negative log-likelihood and then by the state's index; states left after ``greedy`` steps follow by their
own accuracy. ``stop`` is the shortest greedy prefix with the highest aggregate accuracy (``stop=False``: none).
Without labels, ``objective="consistency"`` (or the smooth ``"agreement"``, ``"kl"``: :mod:`undiscard.fitting.objectives`)
ranks by how alike the aggregate's predictions are on pairs of views of the same scenes displaced by a few
pixels. The states are kept on disk while they are ranked (:mod:`undiscard.data.store`,
:mod:`undiscard.fitting._state_ranking`), so memory stays bounded at any number of images.
``undiscard calibrate`` (:mod:`undiscard.cli.calibrate`) writes one as a small JSON file;
``scripts/calibrate_zoo.py`` writes one per zoo model to ``undiscard/zoo/orders/NAME.json``
(:func:`zoo_order_path`), ranked on the 5,000 held-out validation images of the training split.

File format (JSON): ``{"format": "undiscard-state-order", "version": 1, "units": [names], "states":
[[phase, ...], ...], "stop": int or null, "fingerprint": {...}, "meta": {...}}`` — ``meta`` says how it was made
(data, images, seed, aggregate, accuracy after each greedy step, each state's own accuracy). Every field is
checked when read, in one place (:class:`StateOrder`): phases are integers (not ``1.7``, ``"12"`` or
``true``), ``units`` a list of names, ``meta`` and ``fingerprint`` objects.

``fingerprint`` (:func:`model_fingerprint`) identifies the model the order was ranked on: the network's
class, its parameter count, and per searched unit its name, rate and layers' classes and weight shapes.
An order used on a model whose fingerprint differs (another architecture whose unit names happen to
match) gets a ``UserWarning`` saying what differs; an order without one (made before fingerprints were
recorded) is not checked.
"""
from __future__ import annotations

import itertools
import json
import math
import numbers
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import Tensor

from ..errors import UndiscardError

if TYPE_CHECKING:  # type hints only
    from torch import nn

    from ..analysis.discovery import Unit
    from ..wrapper import Undiscard

__all__ = ["StateOrder", "as_order", "load_order", "save_order", "zoo_order_path", "greedy_order", "best_prefix",
           "calibrate", "model_fingerprint", "fingerprint_difference", "ORDERS_DIR", "FORMAT"]

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
    fingerprint: dict[str, Any] | None = None  # the model it was ranked on (:func:`model_fingerprint`)

    def __post_init__(self) -> None:
        if isinstance(self.states, (str, bytes)) or not isinstance(self.states, Sequence):
            raise UndiscardError(f"a state order's states must be a list of states, got {type(self.states).__name__}")
        states = []
        for i, s in enumerate(self.states):
            if isinstance(s, (str, bytes)) or not isinstance(s, Sequence):
                raise UndiscardError(f"state {i} of the order is {s!r}: each state is a list of phases (integers)")
            bad = next((p for p in s if isinstance(p, bool) or not isinstance(p, numbers.Integral)), None)
            if bad is not None or any(p is None for p in s):
                raise UndiscardError(f"state {i} of the order, {list(s)!r}, has phase {bad!r} "
                                     f"({type(bad).__name__}): phases are integers")
            states.append(tuple(int(p) for p in s))
        self.states = states
        if self.units is not None and (isinstance(self.units, (str, bytes)) or not isinstance(self.units, Sequence)
                                       or not all(isinstance(u, str) for u in self.units)):
            raise UndiscardError(f"a state order's units must be a list of unit names (or null), got {self.units!r}")
        if self.units is not None:
            self.units = list(self.units)
        for name, value in (("meta", self.meta), ("fingerprint", self.fingerprint)):
            if value is not None and not isinstance(value, dict):
                raise UndiscardError(f"a state order's {name} must be an object (a mapping), got "
                                     f"{type(value).__name__}")
        self.meta = dict(self.meta or {})
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
            twice = next(s for i, s in enumerate(self.states) if s in self.states[:i])
            raise UndiscardError(f"a state order lists a state twice: {list(twice)}")
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

    def check_model(self, net: "nn.Module", units: Sequence["Unit"]) -> None:
        """A ``UserWarning`` when the order's fingerprint (if it has one) is not ``net``'s with these
        searched ``units``: it was ranked on another model."""
        if not self.fingerprint:
            return
        differs = fingerprint_difference(self.fingerprint, model_fingerprint(net, units))
        if differs:
            warnings.warn(f"the state order was calibrated on another model ({differs}): its states may rank "
                          "poorly here; calibrate one for this model (undiscard calibrate)", UserWarning, stacklevel=4)

    def to_json(self) -> dict[str, Any]:
        blob = {"format": FORMAT, "version": 1, "units": self.units, "states": [list(s) for s in self.states],
                "stop": self.stop}
        if self.fingerprint is not None:
            blob["fingerprint"] = self.fingerprint
        blob["meta"] = self.meta
        return blob


def model_fingerprint(net: "nn.Module", units: Sequence["Unit"]) -> dict[str, Any]:
    """What identifies the model an order is ranked on, cheaply and whatever the input size: the network's
    class (module path), its parameter count, and per searched unit its name, rate and, per layer, the
    layer's class and weight shape (None for a layer without weights, e.g. a pooling)."""
    modules = dict(net.named_modules())

    def layer(name: str) -> list:
        m = modules.get(name)
        weight = getattr(m, "weight", None)
        shape = list(weight.shape) if isinstance(weight, Tensor) else None
        return [type(m).__name__ if m is not None else None, shape]

    cls = type(net)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "parameters": int(sum(p.numel() for p in net.parameters())),
            "units": [{"name": u.name, "rate": int(u.rate), "layers": [layer(n) for n in u.layers]} for u in units]}


def fingerprint_difference(recorded: dict[str, Any], actual: dict[str, Any]) -> str | None:
    """What differs between two :func:`model_fingerprint` records, in a few words (None: they match)."""
    if recorded.get("class") != actual.get("class"):
        return f"{recorded.get('class')}, not {actual.get('class')}"
    if recorded.get("parameters") != actual.get("parameters"):
        return f"{recorded.get('parameters')} parameters, not {actual.get('parameters')}"
    for mine, theirs in itertools.zip_longest(recorded.get("units") or [], actual.get("units") or []):
        if mine != theirs:
            name = (mine or theirs or {}).get("name") if isinstance(mine or theirs, dict) else None
            return f"unit {name} has other layers or shapes" if name else "other searched units"
    return None


def load_order(path: str | Path) -> StateOrder:
    """The :class:`StateOrder` in a JSON file (:func:`save_order`); one :class:`UndiscardError` naming the
    file if it is not one, or if any field is malformed."""
    from .._files import check_file

    path = check_file(path, "state order file")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UndiscardError(f"cannot read the state order {path}: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("states"), list):
        raise UndiscardError(f"{path} is not a state order file (undiscard calibrate writes them)")
    if data.get("version", 1) != 1:
        raise UndiscardError(f"{path} is a state order of version {data.get('version')!r}; this undiscard reads "
                             "version 1")
    try:
        return StateOrder(data["states"], data.get("units"), data.get("meta") or {}, data.get("stop"),
                          data.get("fingerprint"))
    except UndiscardError as err:
        raise UndiscardError(f"state order {path}: {err}") from None


def save_order(order: StateOrder, path: str | Path) -> Path:
    """Write ``order`` as JSON to ``path`` atomically (:func:`undiscard._atomic.atomic_write`: a new temporary
    file, renamed over ``path`` when complete; a link or a directory at ``path`` is refused); returns the path."""
    from ..evaluation.report import write_text

    return write_text(path, json.dumps(order.to_json(), indent=1) + "\n")


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
    from ..tasks.base import ClassificationTask  # lazy: calibration sits below the tasks in the layers

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


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (``ru_maxrss``: KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rows(images: Tensor, labels: Tensor | None, shifted: Tensor | None, pairs: bool,
          name: str) -> tuple[int, Callable[[int, int], Tensor]]:
    """The number of rows calibration evaluates and how to read rows ``a..b-1``: ``images``' rows, or for a
    pair objective ``images`` and ``shifted`` interleaved (row 2i is image i, row 2i+1 its displaced view; ``a``
    and ``b`` even). ``images`` and ``shifted`` may be any tensors sliced by rows (a file-backed
    :class:`~undiscard.data.store.DiskTensor`): only the rows asked for are read. One UndiscardError for
    inputs that do not fit the objective."""
    n = int(images.shape[0])
    if pairs:
        if shifted is None or tuple(shifted.shape) != tuple(images.shape) or n < 1:
            raise UndiscardError(f"objective {name!r} needs pairs of views: images and shifted= of the same shape "
                                 f"(the same scenes displaced by a few pixels), got "
                                 f"{None if shifted is None else tuple(shifted.shape)} for {tuple(images.shape)}")
        return 2 * n, lambda a, b: torch.stack([images[a // 2:b // 2], shifted[a // 2:b // 2]], 1).flatten(0, 1)
    if labels is None or n < 1 or n != labels.shape[0]:
        raise UndiscardError(f"calibration needs labelled images: got {n} images and "
                             f"{0 if labels is None else labels.shape[0]} labels (objective='consistency' needs none)")
    return n, lambda a, b: images[a:b]


@torch.no_grad()
def calibrate(model: "Undiscard", images: Tensor, labels: Tensor | None = None, greedy: int = 16,
              batch_size: int = 256, progress: Callable[[int], None] | None = None, meta: dict[str, Any] | None = None,
              stop: bool = True, dtype: torch.dtype | None = None, *, objective: str = "accuracy",
              shifted: Tensor | None = None, memory_mb: float = 1024, workdir: str | Path | None = None) -> StateOrder:
    """Rank the states of ``model``'s searched units on ``images`` (N, C, H, W).

    ``objective`` (:mod:`undiscard.fitting.objectives`): ``"accuracy"`` (default) needs ``labels`` ((N,) classes;
    (N, H, W) label maps for a dense task) and ranks by the task's score (top-1; mIoU for segmentation);
    ``"consistency"``, ``"agreement"`` and ``"kl"`` need no labels but ``shifted`` (N, C, H, W): the same
    scenes displaced by a few pixels of real content, and rank by how alike the aggregate's predictions on
    the two views are (top-1 agreement; the probability they agree; minus the symmetric KL).

    Every state is evaluated on every image, batch by batch (``progress(images done)`` after each), aligned
    as the model aggregates (its ``aggregate``, ``align`` and aggregator), and written to a
    :class:`~undiscard.data.store.StateStore` (memory-mapped files in a temporary directory under
    ``workdir``; maps and logits kept in ``dtype``, e.g. ``torch.float16``, each combination computed in
    float32); then ranked by :func:`~undiscard.fitting._state_ranking.rank_states` (``progress(1)`` per greedy step),
    streaming the store a chunk of images at a time. Batches and chunks are sized from ``memory_mb`` (and at
    most ``batch_size`` images), never from N, so memory stays bounded at any number of images. With
    ``stop``, the order's ``stop`` is :func:`best_prefix` of the greedy scores. ``meta`` is added to the
    order's record, which also says what it cost: ``seconds``, ``peak_rss_mb`` (this process's peak so far),
    ``store_mb`` and the rows per batch and chunk."""
    import time

    from ..tasks.aggregation import get_aggregate  # lazy: calibration sits below the search in the layers
    from ..search._candidates import find_candidates, stack_candidates
    from ..search.criteria import SearchContext, get_criterion
    from .objectives import get_objective
    from ._state_ranking import rank_states, working_rows
    from ..data.store import StateStore
    from ..tasks.base import StateMaps

    t0 = time.perf_counter()
    goal = get_objective(objective)
    n, rows_of = _rows(images, labels if goal.needs_labels else None, shifted, goal.pairs, objective)
    device = next((p.device for p in model.net.parameters()), torch.device("cpu"))
    first = rows_of(0, 2 if goal.pairs else 1).to(device)[:1]
    engine = model.prepare(first)
    units = engine.search_units
    if not units:
        raise UndiscardError("no unit is searched: there is nothing to calibrate")
    states = all_states(units)
    full = StateOrder(states, [u.name for u in units])
    ctx = SearchContext.of(engine, model.task, model.seed, full)
    task = model.task
    entropy = model.aggregate == "entropy"  # each state's entropies once, not once per subset combined
    budget, s = int(memory_mb * 2 ** 20), len(states)
    with torch.no_grad():  # per-row sizes from one image: native features, logits (the maps are as large)
        probe = engine.split.features(first)
        out = engine.split.head(probe)
    feature, output = probe[0].numel() + out[0].numel(), out[0].numel()
    # evaluation: the search's features, their aligned copies and the maps, all states, in float32; the search
    # itself runs at most ``search`` rows (images x states) per pass (~32 input-sized activations each)
    evaluate = working_rows(budget // 2, s * 4 * (3 * feature + 2 * output), batch_size, even=goal.pairs)
    search = working_rows(budget // 2, 32 * 4 * first[0].numel(), model.chunk_size)
    store = StateStore(n, dtype, workdir)
    stride = None
    try:
        for start in range(0, n, evaluate):
            x = rows_of(start, min(n, start + evaluate)).to(device)
            cands = find_candidates(engine, x, s, get_criterion("calibrated"), ctx, chunk_size=search)
            f, lg, off = stack_candidates(cands, engine)
            aligned = task.aligned_states(engine, f, lg, off, model.align)  # once: each state aligns on its own
            del cands, f  # only the aligned maps are combined: the batch's native features are freed here
            if entropy:
                aligned = task.with_entropy(aligned, lg)
            store.write(start, {"maps": aligned.maps, "extra": aligned.extra, "logits": lg},
                        {"entropy": aligned.entropy, "offsets": off})
            stride = aligned.stride
            del aligned, lg, off
            if progress is not None:
                progress(x.shape[0])
        how = get_aggregate(model.aggregate)
        targets = labels.long() if goal.needs_labels and labels is not None else None

        if targets is not None:
            targets = targets.to(device)

        def read(key: str, rows: slice) -> Tensor | None:  # combinations are computed in float32 at least
            t = store.read(key, rows)
            return None if t is None else (t.float() if t.dtype == torch.float16 else t).to(device)

        def chunk(rows: slice) -> tuple[StateMaps, Tensor, Tensor]:
            maps, logits, offsets = read("maps", rows), read("logits", rows), read("offsets", rows)
            assert maps is not None and logits is not None and offsets is not None
            return StateMaps(maps, read("extra", rows), stride, read("entropy", rows)), logits, offsets

        def combine(maps: StateMaps, logits: Tensor, offsets: Tensor, idx: list[int]) -> Tensor:
            return task.combine_aligned(engine, how, maps.select(idx), logits[:, idx], offsets[:, idx],
                                        model.aggregator)

        rows = working_rows(budget, 2 * s * 4 * feature, 1 << 16, even=goal.pairs)
        ranked = rank_states(store, chunk, combine, goal, task, targets, s, greedy, rows, progress)
        store_mb, max_rows = store.nbytes / 2 ** 20, store.max_rows
    finally:
        store.close()
    curve = ranked.curve
    record = {"images": int(images.shape[0]), "aggregate": model.aggregate, "align": bool(model.align),
              "task": task.resolved_name, "objective": objective,
              "greedy_steps": len(curve) - 1, "greedy_accuracy": curve, "greedy_tiebreak": ranked.ties,
              "state_accuracy": {",".join(map(str, states[r])): ranked.own[r][0] for r in ranked.positions},
              "method": (f"greedy: each step adds the state that makes the aggregate score best by {objective!r}"
                         + (" (label-free, on pairs of views)" if goal.pairs else "")),
              "seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb(), "store_mb": store_mb,
              "rows_per_batch": evaluate, "rows_per_search_pass": search, "rows_per_chunk": rows,
              "max_rows_in_memory": max_rows}
    record.update(meta or {})
    if not all(math.isfinite(a) for a in curve):
        raise UndiscardError("calibration produced non-finite scores")
    return StateOrder([states[r] for r in ranked.positions], full.units, record, best_prefix(curve) if stop else None,
                      model_fingerprint(model.net, units))
