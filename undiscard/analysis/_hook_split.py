"""Splitting a model that graph capture cannot trace, by replaying its own forward (correct by construction).

Where ``torch.fx`` fails (Python control flow on tensor values or shapes, ``len(x)``, ...), the split is
made around one module, the *feature module*: the last module whose output is a 4-D (N, C, h, w) map
with h*w > 1 (the outermost such module where several return the same tensor), called once per
forward. Everything runs the model's own ``forward``; what changes is which of its module calls run:

- **features** run the forward until the feature module returns, and stop there;
- **cuts**: before each phased layer (the searched units' layers), at the outermost module call that
  receives the same tensor as that layer (a block, a stage), the forward can be *resumed* from that
  module's input: it is run on a blank image, every module call that finished before the cut module
  began (and is not one of its callers) is *skipped* — it returns zeros of the shape it returned in an
  example run, computing nothing — and the cut module gets the cached activation as its input. So the
  features are a chain of segments (input -> cut 1 -> cut 2 -> ... -> the feature map) and a state
  recomputes only from its unit's cut on (:mod:`undiscard.analysis._chain`, :mod:`undiscard.search._engine`);
- **head(maps)**: the forward resumed after the feature module, which returns ``maps``; the logits are
  selected from the model's output (:mod:`undiscard.analysis.outputs`). It costs the head only.

A cut (or the head) is only kept where resuming reproduces the model bit for bit on the example input:
the model's code after the cut must read what came before only through the cut module's input. A
residual read from before the cut, or the input image itself, makes that cut (or the skipping head)
differ; it is dropped — for the head, the head then runs the whole forward on a blank image with the
feature module's output replaced (the old fallback, about a full forward per head call). The split's
``method`` says what was kept, e.g. ``cached at 3 of 3 cuts before phased layers, head from the features``.
``model.last_cost`` counts what really runs (FLOPs), including any functional code between modules.

The gates that skip, resume and stop are installed once, on the wrapper's private copy of the model, as
the forward of the modules they concern; they act only while a ``ContextVar`` asks them to (thread-safe,
like phase plans), and otherwise run the module's own forward.
"""
from __future__ import annotations

import contextvars
import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..errors import UndiscardError
from ..layers.plans import is_phased, phase_plan
from ._split import Split
from .outputs import OutputSelector, select_output

__all__ = ["HookSplitError", "Gate", "hook_split"]


class HookSplitError(UndiscardError):
    """No module of the model can serve as the feature module (the reason is the message)."""


class _Stop(BaseException):  # BaseException: a model's own ``except Exception`` must not swallow it
    def __init__(self, value: Any):
        super().__init__()
        self.value = value


Key = tuple[int, int]  # (id of a module of the private copy, its call's ordinal in one forward)


@dataclass
class _Plan:
    """One resumed forward: the calls to skip (with their recorded output templates), where to start (the
    input of a call, or the output of one) and where to stop (the input or the output of a call)."""

    skip: dict[Key, Any] = field(default_factory=dict)
    start: Key | None = None
    start_at_output: bool = False
    stop: Key | None = None
    stop_at_output: bool = False


class _Run:
    """The state of one resumed forward: its plan, the batch size of its placeholders, the value it resumes
    from, and how often each module has been called so far."""

    def __init__(self, plan: _Plan, rows: int, value: Any):
        self.plan, self.rows, self.value = plan, rows, value
        self.calls: dict[int, int] = {}
        self.current: dict[int, Key] = {}  # each gated module's call in progress (set by its _Entry)
        self.started = False

    def key(self, module: nn.Module) -> Key:
        k = self.calls.get(id(module), 0)
        self.calls[id(module)] = k + 1
        return id(module), k


_ACTIVE: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("undiscard_hook_replay", default=None)


class Gate:
    """The forward installed on a module of the private copy: its own forward, unless the current resumed
    forward (:data:`_ACTIVE`) skips, resumes or stops at this call."""

    def __init__(self, module: nn.Module, wrapped: Any = None):
        self.module, self.wrapped = module, wrapped  # wrapped: an instance forward it replaced (a phased layer's)

    def call(self, *args: Any, **kwargs: Any) -> Any:
        if self.wrapped is not None:
            return self.wrapped(*args, **kwargs)
        return type(self.module).forward(self.module, *args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        run = _ACTIVE.get()
        if run is None:
            return self.call(*args, **kwargs)
        plan = run.plan
        key = run.current.pop(id(self.module), None) or run.key(self.module)
        if key == plan.start:
            run.started = True
            out = run.value if plan.start_at_output else self.call(run.value, *args[1:], **kwargs)
        elif key in plan.skip:
            out = _placeholder(plan.skip[key], run.rows)
        else:
            out = self.call(*args, **kwargs)
        if key == plan.stop:
            raise _Stop(out)
        return out

    def __deepcopy__(self, memo: dict) -> "Gate":
        return Gate(copy.deepcopy(self.module, memo), copy.deepcopy(self.wrapped, memo))

    def __reduce__(self):
        return Gate, (self.module, self.wrapped)


class _Entry:
    """The forward pre-hook of a gated module: counts its call and stops a resumed forward at its input,
    before any later hook (the chain's tracing) sees the call begin."""

    def __call__(self, module: nn.Module, args: tuple) -> None:
        run = _ACTIVE.get()
        if run is None:
            return None
        key = run.current[id(module)] = run.key(module)
        if key == run.plan.stop and not run.plan.stop_at_output:
            raise _Stop(args[0])
        return None


def _gate(module: nn.Module) -> None:
    """Install the module's Gate and _Entry once (a copied or unpickled model keeps its own)."""
    current = module.__dict__.get("forward")
    if not isinstance(current, Gate):
        module.forward = Gate(module, current)  # on the private copy, at setup
        module.register_forward_pre_hook(_Entry(), prepend=True)


@dataclass
class _Batched:
    """A placeholder leaf: zeros of (rows, *shape)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device


def _template(out: Any, rows: int) -> Any:
    leaves, spec = tree_flatten(out)
    return spec, [(_Batched(tuple(t.shape[1:]), t.dtype, t.device)
                   if isinstance(t, Tensor) and t.dim() and t.shape[0] == rows else t) for t in leaves]


def _placeholder(template: Any, rows: int) -> Any:
    spec, leaves = template
    return tree_unflatten([torch.zeros((rows, *t.shape), dtype=t.dtype, device=t.device)
                           if isinstance(t, _Batched) else t for t in leaves], spec)


@dataclass
class _Call:
    module: nn.Module
    ordinal: int
    parent: int | None
    begin: int
    end: int = -1
    input: Any = None
    template: Any = None
    is_map: bool = False  # it returned a 4-D tensor (N, C, h, w) with h*w > 1

    @property
    def key(self) -> Key:
        return id(self.module), self.ordinal


def _record(model: nn.Module, x: Tensor) -> tuple[list[_Call], Any]:
    """Every module call of one forward on ``x`` (pre-order), and the output."""
    calls: list[_Call] = []
    stack: list[int] = []
    counts: dict[int, int] = {}
    clock = [0]

    def pre(module: nn.Module, args: tuple) -> None:
        k = counts.get(id(module), 0)
        counts[id(module)] = k + 1
        calls.append(_Call(module, k, stack[-1] if stack else None, clock[0], input=args[0] if args else None))
        clock[0] += 1
        stack.append(len(calls) - 1)

    def post(module: nn.Module, args: tuple, output: Any) -> None:
        call = calls[stack.pop()]
        call.end, clock[0] = clock[0], clock[0] + 1
        call.template = _template(output, x.shape[0])
        call.is_map = isinstance(output, Tensor) and output.dim() == 4 and output.shape[-1] * output.shape[-2] > 1

    handles = [h for m in model.modules() if m is not model
               for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        with torch.no_grad(), phase_plan(None):
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    return calls, out


def _feature_call(calls: list[_Call]) -> int:
    """Index of the feature module's call: the last module returning a 4-D map with h*w > 1, called once."""
    per_module: dict[int, int] = {}
    for c in calls:
        per_module[id(c.module)] = per_module.get(id(c.module), 0) + 1
    ends = sorted(range(len(calls)), key=lambda i: calls[i].end)
    for i in reversed(ends):
        if calls[i].is_map and per_module[id(calls[i].module)] == 1:
            return i
    raise HookSplitError("no module called once returns a 4-D feature map (N, C, h, w) with h*w > 1")


def _ancestors(calls: list[_Call], i: int) -> set[int]:
    out: set[int] = set()
    p = calls[i].parent
    while p is not None:
        out.add(p)
        p = calls[p].parent
    return out


def _skips(calls: list[_Call], i: int) -> dict[Key, Any]:
    """The calls that finished before call ``i`` began, at the outermost level (children of its callers)."""
    callers = _ancestors(calls, i)
    return {c.key: c.template for c in calls
            if (c.parent is None or c.parent in callers) and c.end < calls[i].begin}


def _cuts(calls: list[_Call], feature: int, x: Tensor) -> list[int]:
    """Per phased layer called before the feature module returns, the outermost call receiving its input
    (not the model's input itself), in order, once each."""
    found: list[int] = []
    for i, c in enumerate(calls):
        if not is_phased(c.module) or c.begin > calls[feature].end or not isinstance(c.input, Tensor):
            continue
        j = i
        while calls[j].parent is not None and calls[calls[j].parent].input is c.input:
            j = calls[j].parent
        if c.input is not x and j not in found:
            found.append(j)
    return sorted(found, key=lambda j: calls[j].begin)


class _Resumed:
    """Run the model's forward under one plan: from the input (no start) or from a value, to its stop (or
    its output)."""

    def __init__(self, model: nn.Module, plan: _Plan, image: tuple[int, ...], dtype: torch.dtype):
        self.model, self.plan, self.image, self.dtype = model, plan, image, dtype

    def run(self, value: Any, rows: int, device: torch.device) -> Any:
        resumed = self.plan.start is not None
        x = torch.zeros((rows, *self.image), dtype=self.dtype, device=device) if resumed else value
        run = _Run(self.plan, rows, value)
        token = _ACTIVE.set(run)
        try:
            out = self.model(x)
        except _Stop as stop:
            out = stop.value
        finally:
            _ACTIVE.reset(token)
        if resumed and not run.started:
            raise UndiscardError("the model's forward took another path than in its example run: pass features=/head=")
        return out


class HookSegment(_Resumed):
    """One segment of the features: from the input or a cut's input, to the next cut's input or the map."""

    def __call__(self, x: Tensor) -> Tensor:
        return self.run(x, x.shape[0], x.device)


class HookHead(_Resumed):
    """``head(maps)``: the forward resumed with the feature module returning ``maps``; the logits selected."""

    def __init__(self, model: nn.Module, plan: _Plan, image: tuple[int, ...], dtype: torch.dtype,
                 output: OutputSelector):
        super().__init__(model, plan, image, dtype)
        self.output = output

    def __call__(self, maps: Tensor) -> Tensor:
        return select_output(self.run(maps, maps.shape[0], maps.device), self.output)


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and torch.equal(a, b)


def hook_split(model: nn.Module, x: Tensor, output: OutputSelector = None):
    """The hook-based split of ``model`` (see module docstring); ``x``: an example input batch."""

    example = torch.cat([x, x])  # two rows: a recorded tensor whose dim 0 is 2 is per image
    calls, out = _record(model, example)
    feature = _feature_call(calls)
    f_key, image, dtype = calls[feature].key, tuple(x.shape[1:]), x.dtype
    cuts = _cuts(calls, feature, example)
    skips = {i: _skips(calls, i) for i in (feature, *cuts)}
    for i in {*skips, *(k for k, c in enumerate(calls) if any(c.key in s for s in skips.values()))}:
        _gate(calls[i].module)
    with torch.no_grad():
        reference = HookSegment(model, _Plan(stop=f_key, stop_at_output=True), image, dtype)(example)
        kept = [j for j in cuts if _same(HookSegment(model, _Plan(skips[j], calls[j].key, stop=f_key,
                                                                   stop_at_output=True), image, dtype)(calls[j].input),
                                         reference)]
    bounds = [None, *kept]
    stages = []
    for k, start in enumerate(bounds):
        stop = bounds[k + 1] if k + 1 < len(bounds) else None
        plan = _Plan({} if start is None else skips[start], None if start is None else calls[start].key,
                     stop=f_key if stop is None else calls[stop].key, stop_at_output=stop is None)
        stages.append(HookSegment(model, plan, image, dtype))
    expected = select_output(out, output)
    head = HookHead(model, _Plan(skips[feature], f_key, start_at_output=True), image, dtype, output)
    with torch.no_grad():
        cheap = _same(head(reference), expected)
    if not cheap:  # the code after the feature map reads more than it: the whole forward, the map replaced
        head = HookHead(model, _Plan({}, f_key, start_at_output=True), image, dtype, output)
    method = (f"cached at {len(kept)} of {len(cuts)} cuts before phased layers, "
              + ("head from the features" if cheap else "head re-runs the forward"))
    return Split(stages, head, method=method)
