"""Ranked state orders (``criterion="calibrated"``): the :class:`StateOrder` data type and its files.

A :class:`StateOrder` is a ranked list of states of a model's searched units (the all-zero state, the
original model, always first), with the units' names. With ``wrap(net, criterion="calibrated",
order=ORDER)`` a budget of B evaluates the first B states of the list, each state run from its first
non-zero unit on the root's cached activation: the cheapest search there is, and its cost is known before
the call. An order may carry a ``stop``: the search then evaluates at most its first ``stop`` states,
whatever the budget. Orders are made by :func:`undiscard.fitting.calibration.calibrate`
(``undiscard calibrate``); this module only holds, checks, reads and writes them.

An order records a fingerprint of the model it was ranked on (:func:`model_fingerprint`: class, parameter
count, each searched unit's rate and layer shapes); used on another model it warns with what differs
(orders without one are not checked).

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
import numbers
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from torch import Tensor

from .._atomic import write_text
from ..errors import UndiscardError

if TYPE_CHECKING:  # type hints only
    from torch import nn

    from ..analysis.discovery import Unit

__all__ = ["StateOrder", "as_order", "load_order", "save_order", "zoo_order_path", "all_states",
           "model_fingerprint", "fingerprint_difference", "ORDERS_DIR", "FORMAT", "State"]

FORMAT = "undiscard-state-order"
ORDERS_DIR = Path(__file__).resolve().parents[1] / "zoo" / "orders"
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
