"""Running a model at chosen phases without touching its modules during forward.

A *phase plan* maps a unit index to what its layers should compute for the current batch:

- absent (or phase 0 for every sample): the layer's own forward, bit for bit;
- a LongTensor of shape (N,): a per-sample phase (samples are grouped by phase, each group costs one
  ordinary strided pass; phase 0 is the layer's own forward). The batch never changes size;
- an :class:`Adaptive` spec: the phase is decided per sample during the forward from what the layer
  sees (adaptive phase selection, :mod:`undiscard.search.aps`).

The plan lives in a ``ContextVar``, so concurrent threads (each with its own context) never see each
other's plans, and no module attribute is written while a forward runs. ``PhasedModel`` owns a deep copy
of the user's network (the network itself is never modified) whose unit layers get a phase-aware
``forward`` installed once, at construction.
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
from typing import Iterator, Mapping, Sequence, Union

import torch
from torch import Tensor, nn

from . import get_adapter
from .registry import PhaseAdapter

__all__ = ["Adaptive", "PhaseSpec", "phase_plan", "current_plan", "install_phased_layers", "is_phased"]


class Adaptive:
    """A phase spec decided during the forward, per sample, from what the unit's layers see (the batch
    keeps its size). The plan holds one instance per forward pass; it may keep what its first layer decided
    for the unit's other layers (the instance lives only as long as that plan, no module is written)."""

    def decide(self, layer: nn.Module, adapter: PhaseAdapter, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(phases (N,) long, the layer's output at them or None to compute it as a per-sample phase)."""
        raise NotImplementedError


PhaseSpec = Union[Tensor, Adaptive]  # (N,) long: one phase per sample; or decided in the forward
_PLAN: contextvars.ContextVar[Mapping[int, PhaseSpec] | None] = contextvars.ContextVar(
    "undiscard_phase_plan", default=None)


@contextlib.contextmanager
def phase_plan(plan: Mapping[int, PhaseSpec] | None) -> Iterator[None]:
    """Run the enclosed forward passes with ``plan`` (unit index -> phase spec) in effect."""
    token = _PLAN.set(plan)
    try:
        yield
    finally:
        _PLAN.reset(token)


def current_plan() -> Mapping[int, PhaseSpec] | None:
    return _PLAN.get()


def _per_sample(layer: nn.Module, adapter: PhaseAdapter, x: Tensor, phases: Tensor,
                forward, args: tuple = ()) -> Tensor:
    if phases.shape[0] != x.shape[0]:
        raise RuntimeError(f"phase plan has {phases.shape[0]} phases for a batch of {x.shape[0]}")
    values = torch.unique(phases)
    if values.numel() == 1:
        s = int(values[0])
        return forward(x, *args) if s == 0 else adapter.one_phase(layer, x, s, *args)
    out: Tensor | None = None
    for s in values.tolist():
        idx = (phases == s).nonzero().flatten()
        part = forward(x[idx], *args) if s == 0 else adapter.one_phase(layer, x[idx], s, *args)
        if out is None:
            out = part.new_empty((x.shape[0], *part.shape[1:]))
        out[idx] = part
    assert out is not None
    return out


class _PhasedForward:
    """The ``forward`` installed on a unit layer of the private copy: consults the current plan."""

    def __init__(self, layer: nn.Module, adapter: PhaseAdapter, unit: int):
        self.forward = type(layer).forward.__get__(layer)  # the class's own forward, bound
        self.layer_ref = layer
        self.adapter = adapter
        self.unit = unit

    def __call__(self, x: Tensor, *args, **kwargs) -> Tensor:
        plan = _PLAN.get()
        spec = None if plan is None else plan.get(self.unit)
        if spec is None or kwargs or (args and not self.adapter.takes_args):
            return self.forward(x, *args, **kwargs)
        if isinstance(spec, Adaptive):
            phases, out = spec.decide(self.layer_ref, self.adapter, x)
            return out if out is not None else _per_sample(self.layer_ref, self.adapter, x, phases, self.forward, args)
        return _per_sample(self.layer_ref, self.adapter, x, spec, self.forward, args)

    def __deepcopy__(self, memo):
        layer = copy.deepcopy(self.layer_ref, memo)
        return _PhasedForward(layer, self.adapter, self.unit)

    def __reduce__(self):
        # pickle rebuilds the bound class forward from the layer (a bound method would pickle as
        # getattr(layer, "forward"), which is this object again)
        return _PhasedForward, (self.layer_ref, self.adapter, self.unit)


def is_phased(module: object) -> bool:
    """Whether ``module`` is a unit layer that follows phase plans (:func:`install_phased_layers`)."""
    forward = getattr(module, "__dict__", {}).get("forward")
    forward = getattr(forward, "wrapped", forward)  # under a hook split's gate (undiscard.analysis._hook_split)
    return isinstance(forward, _PhasedForward)


def install_phased_layers(net: nn.Module, unit_layers: Sequence[Sequence[str]], copy_net: bool = True) -> nn.Module:
    """``net`` (a deep copy of it unless ``copy_net=False``) with layers ``unit_layers[u]`` following the
    phase plan for unit ``u``. It computes exactly what ``net`` computes when no plan is active.
    """
    clone = copy.deepcopy(net) if copy_net else net
    modules = dict(clone.named_modules())
    for u, names in enumerate(unit_layers):
        for name in names:
            layer = modules[name]
            adapter = get_adapter(layer)
            if adapter is None:  # discovery only hands over supported layers
                raise RuntimeError(f"layer {name} has no phase adapter")
            layer.forward = _PhasedForward(layer, adapter, u)  # on the private copy, once
    return clone
