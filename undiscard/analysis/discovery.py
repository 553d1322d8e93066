"""Finding the subsampling units of any model by running it once.

``find_units`` runs the model on an example input while tracking, for every tensor, the set of strided
layers it depends on (its *lineage*). Layers are found as the forward pass actually uses them, in
execution order, whatever the model's code looks like.

Grouping rule (docs/semantics.md, "Units"): when an operation combines two tensors whose lineages are not nested
(each has a strided layer the other lacks), those layers sit on parallel branches that are merged here —
a residual block's strided conv and strided shortcut, an Inception or ShuffleNet block's strided
branches — so they must share one phase and form one *unit*. Nested lineages (attention reading keys
from a spatially reduced copy, a decoder concatenating an encoder skip) do not merge anything.

Unsupported layers: a strided convolution or pooling that no adapter handles (an unknown class, a
subclass with its own forward, a functional ``F.conv2d(..., stride=2)`` in a model's code, a non-square
stride) cannot be phase-shifted. It is **left at phase 0** and reported by module name, class and reason
in a ``UserWarning`` (``strict=True`` raises ``UnsupportedLayerError`` instead). A unit that merges with
such a layer is unsupported too, since shifting only half of a merge would misalign it.

Global pooling: a layer whose stride exceeds its input in both dimensions (Hugging Face EfficientNet's
``AvgPool2d(hidden_dim, ceil_mode=True)`` on a 7x7 map) computes one window over the whole input and
subsamples nothing: every phase but 0 would read only the extension past the edge. It is not a unit.

Side units: a strided layer whose output does not carry the main feature grid forward (PVT's
spatial-reduction convs, which subsample only the keys and values of attention) is a unit with
``spatial=False``. Its phases are valid states, but they translate nothing, so it contributes no offset
and is not searched by default.
"""
from __future__ import annotations

import copy
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from .._compat import class_path
from ..errors import PhaseError, UnsupportedLayerError
from ..layers import get_adapter
from ..layers.functional import pair

__all__ = ["Unit", "find_units", "UnitReport", "discover", "units_within_offset"]


@dataclass(frozen=True)
class Unit:
    """Subsampling layers that share one phase.

    Attributes:
        name: the layers' longest common module path (the layer's own name for a single layer).
        rate: the subsampling rate R (a unit has R² phases).
        layers: module names (as in ``model.named_modules()``) of the layers, in execution order.
        spatial: False for side units (see module docstring): they add no offset and are not searched
            by default.
        in_size: spatial size (H, W) of the unit's input in the example run.
        out_size: spatial size (Ho, Wo) of its output.
    """

    name: str
    rate: int
    layers: tuple[str, ...]
    spatial: bool = True
    in_size: tuple[int, int] = field(default=(0, 0), compare=False)
    out_size: tuple[int, int] = field(default=(0, 0), compare=False)

    @property
    def num_phases(self) -> int:
        return self.rate * self.rate


@dataclass
class UnitReport:
    """Everything discovery found: the supported units and the strided layers left at phase 0."""

    units: list[Unit]
    unsupported: list[tuple[str, str, str]]  # (module name, class path, reason)

    def describe_unsupported(self) -> str:
        return "; ".join(f"{name} ({cls.rsplit('.', 1)[-1]}): {why}" for name, cls, why in self.unsupported)


_STRIDED_FUNCS = {  # function name -> (stride position, kernel_size position or None)
    "conv2d": (3, None),
    "max_pool2d": (2, 1),
    "max_pool2d_with_indices": (2, 1),
    "avg_pool2d": (2, 1),
    "lp_pool2d": (3, 2),
}


def _functional_stride(func: Any, args: tuple, kwargs: dict) -> tuple[int, int] | None:
    spec = _STRIDED_FUNCS.get(getattr(func, "__name__", ""))
    if spec is None:
        return None
    stride_pos, kernel_pos = spec
    stride = kwargs.get("stride", args[stride_pos] if len(args) > stride_pos else None)
    if stride is None or (not isinstance(stride, int) and len(stride) == 0):
        if kernel_pos is None:
            return None
        stride = kwargs.get("kernel_size", args[kernel_pos] if len(args) > kernel_pos else None)
    try:
        return pair(stride)
    except TypeError:
        return None


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, items: Iterable[int]) -> None:
        roots = [self.find(i) for i in items]
        for r in roots[1:]:
            self.parent[self.find(r)] = self.find(roots[0])


@dataclass
class _StridedCall:
    tag: int
    name: str
    cls: str
    rate: int  # 0 for unsupported
    in_tags: frozenset
    in_grid: tuple[int, int] = (0, 0)
    out_grid: tuple[int, int] = (0, 0)
    reason: str = ""


class _Tracer(TorchFunctionMode):
    """Tracks tensor lineage (sets of strided-call tags) through every torch op and module call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.tags: dict[int, frozenset] = {}
        self.calls: list[_StridedCall] = []
        self.merges = _UnionFind()
        self.stack: list[tuple[str, nn.Module]] = []
        self.adapter_depth = 0
        self.names = {m: n for n, m in model.named_modules()}
        self.seen_names: dict[str, int] = {}

    # --- lineage bookkeeping -------------------------------------------------------------------
    def lineage(self, obj: Any) -> list[frozenset]:
        return [self.tags.get(id(t), frozenset()) for t in tree_leaves(obj) if isinstance(t, Tensor)]

    def mark(self, obj: Any, tags: frozenset) -> None:
        for t in tree_leaves(obj):
            if isinstance(t, Tensor):
                key = id(t)
                if key not in self.tags:
                    weakref.finalize(t, self.tags.pop, key, None)
                self.tags[key] = tags

    def combine(self, sets: list[frozenset]) -> None:
        distinct = {s for s in sets if s}
        if len(distinct) < 2:
            return
        distinct_list = list(distinct)
        for i, a in enumerate(distinct_list):
            for b in distinct_list[i + 1:]:
                if not (a <= b or b <= a):
                    self.merges.union(a ^ b)

    def new_call(self, name: str, cls: str, rate: int, in_tags: frozenset, reason: str = "") -> _StridedCall:
        call = _StridedCall(len(self.calls), name, cls, rate, in_tags, reason=reason)
        self.calls.append(call)
        self.merges.find(call.tag)
        return call

    # --- torch ops -----------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        sets = self.lineage((args, kwargs))
        self.combine(sets)
        union = frozenset().union(*sets) if sets else frozenset()
        stride = _functional_stride(func, args, kwargs) if self.adapter_depth == 0 else None
        if stride is not None and max(stride) > 1:
            name, module = self.stack[-1] if self.stack else ("<model>", None)
            fname = getattr(func, '__name__', str(func))
            pool = {"max_pool2d": "MaxPool2d", "max_pool2d_with_indices": "MaxPool2d", "avg_pool2d": "AvgPool2d",
                    "lp_pool2d": "LPPool2d"}.get(fname, "Conv2d")
            call = self.new_call(name or "forward", class_path(module) if module is not None else "function", 0, union,
                                 f"F.{fname} with stride {stride} is a function call in the model's code, which "
                                 f"has no phase adapter (an nn.{pool} module would be searchable)")
            union = union | {call.tag}
        self.mark(out, union)
        return out

    # --- module hooks --------------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args: tuple) -> None:
        self.stack.append((self.names.get(module, "?"), module))
        if get_adapter(module) is not None:
            self.adapter_depth += 1

    def post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        name, _ = self.stack.pop()
        adapter = get_adapter(module)
        if adapter is None:
            if not any(self.tags.get(id(t)) is not None for t in tree_leaves(output) if isinstance(t, Tensor)):
                sets = self.lineage(args)  # e.g. a custom autograd Function inside: keep lineage flowing
                self.mark(output, frozenset().union(*sets) if sets else frozenset())
            return
        self.adapter_depth -= 1
        sets = self.lineage(args)
        union = frozenset().union(*sets) if sets else frozenset()
        try:
            rate = adapter.rate(module)
        except UnsupportedLayerError as err:
            call = self.new_call(name, class_path(module), 0, union, str(err))
            self.mark(output, union | {call.tag})
            return
        if rate <= 1:
            self.mark(output, union)
            return
        x = next(t for t in tree_leaves(args) if isinstance(t, Tensor))
        out = output if isinstance(output, Tensor) else next(t for t in tree_leaves(output) if isinstance(t, Tensor))
        in_grid, out_grid = adapter.grids(module, x, out, tuple(args[1:]))
        if rate > max(in_grid):  # one window over the whole input (a global pooling): nothing is subsampled
            self.mark(output, union)
            return
        call = self.new_call(name, class_path(module), rate, union)
        self.seen_names[name] = self.seen_names.get(name, 0) + 1
        call.in_grid, call.out_grid = in_grid, out_grid
        self.mark(output, union | {call.tag})


def _common_name(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    common: list[str] = []
    for level in zip(*parts):
        if all(p == level[0] for p in level):
            common.append(level[0])
        else:
            break
    return ".".join(common) if common else names[0]


def discover(model: nn.Module, example_input: Tensor) -> UnitReport:
    """Run ``model`` once on ``example_input`` and return every unit plus the unsupported layers.

    The model is traced on a private deep copy, so hooks never touch the caller's modules.
    """
    if not isinstance(example_input, Tensor):
        raise PhaseError(f"example_input must be a tensor, got {type(example_input).__name__}")
    clone = copy.deepcopy(model)
    tracer = _Tracer(clone)
    handles = []
    for module in clone.modules():
        handles.append(module.register_forward_pre_hook(tracer.pre_hook))
        handles.append(module.register_forward_hook(tracer.post_hook))
    try:
        with torch.no_grad(), tracer:
            tracer.mark(example_input, frozenset())
            clone(example_input)
    finally:
        for h in handles:
            h.remove()
    return _group(tracer)


def _group(tracer: _Tracer) -> UnitReport:
    groups: dict[int, list[_StridedCall]] = {}
    for call in tracer.calls:
        groups.setdefault(tracer.merges.find(call.tag), []).append(call)
    unsupported: list[tuple[str, str, str]] = []
    candidates: list[tuple[list[_StridedCall], str]] = []
    for members in sorted(groups.values(), key=lambda g: g[0].tag):
        bad = [c for c in members if c.rate == 0]
        unsupported += [(c.name, c.cls, c.reason) for c in bad]
        reason = ""
        if bad:
            reason = f"merged with unsupported layer {bad[0].name}"
        elif len({c.rate for c in members}) > 1:
            reason = f"merged layers have different rates {[c.rate for c in members]}"
        elif any(tracer.seen_names.get(c.name, 0) > 1 for c in members):
            reason = "the layer is called more than once per forward (shared weights)"
        elif any(o.tag in c.in_tags for c in members for o in members if o is not c):
            reason = "merged layers run in sequence (one feeds another)"
        elif len({c.in_grid for c in members}) > 1:
            reason = "merged layers see different input sizes"
        if reason:
            unsupported += [(c.name, c.cls, reason) for c in members if c.rate > 0]
            continue
        candidates.append((members, ""))
    units = []
    for i, (members, _) in enumerate(candidates):
        first = members[0]
        nxt = candidates[i + 1][0][0] if i + 1 < len(candidates) else None
        side = nxt is not None and first.out_grid != nxt.in_grid and first.in_grid == nxt.in_grid
        names = [c.name for c in members]
        units.append(Unit(name=_common_name(names), rate=first.rate, layers=tuple(names), spatial=not side,
                          in_size=first.in_grid, out_size=first.out_grid))
    return UnitReport(units=units, unsupported=unsupported)


def find_units(model: nn.Module, example_input: Tensor, strict: bool = False) -> list[Unit]:
    """The subsampling units of ``model``, in execution order (see the module docstring).

    Args:
        model: any nn.Module; it is not modified (a private copy is traced).
        example_input: a batch the model accepts, e.g. ``torch.randn(1, 3, 224, 224)``.
        strict: raise ``UnsupportedLayerError`` instead of warning when a strided layer has no adapter.

    Returns:
        list of ``Unit(name, rate, layers, spatial, in_size, out_size)``.
    """
    report = discover(model, example_input)
    if report.unsupported:
        msg = f"strided layers left at phase 0: {report.describe_unsupported()}"
        if strict:
            raise UnsupportedLayerError(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    return report.units


def units_within_offset(units: list[Unit], image_size: tuple[int, int], max_offset: int) -> list[int]:
    """Indices of the leading spatial units whose phases together move the input by at most ``max_offset``
    pixels — the units whose states are translations a model trained with random crops of
    ±``max_offset`` px has seen.

    A phase dy of a unit whose input grid has g image pixels per cell moves the input by dy*g pixels, so
    unit l can add up to (R_l - 1)*g_l. Units are taken in execution order while the sum stays within
    ``max_offset``; side units are skipped. At least the first spatial unit is returned (if any).
    """
    chosen: list[int] = []
    reach = 0
    for i, u in enumerate(units):
        if not u.spatial:
            continue
        g = max(1, image_size[0] // max(1, u.in_size[0]))
        reach += (u.rate - 1) * g
        if chosen and reach > max_offset:
            break
        chosen.append(i)
    return chosen
