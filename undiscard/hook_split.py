"""Splitting a model that graph capture cannot trace, with forward hooks (correct by construction).

Where ``torch.fx`` fails (Python control flow on tensor values or shapes, ``len(x)``, ...), the split is
made around one module, the *feature module*: the last module whose output is a 4-D (N, C, h, w) map
with h*w > 1 (the outermost such module where several return the same tensor), called once per
forward. Then

- ``features(x)`` runs the model's own ``forward`` until that module returns, and stops there (a
  forward hook captures the map and ends the pass);
- ``head(maps)`` runs the model's own ``forward`` again, with that module's output replaced by
  ``maps``, and returns its logits (:mod:`undiscard.outputs`). Whatever the model does after the
  feature module — functional calls, views, branches — is its own code, so ``head(features(x))`` is
  ``model(x)`` exactly.

Cost: the head's input batch is a zero image per row (the head has no image to run on), and the pass
recomputes everything *before* the feature module too, only to have its result replaced, so each head
call costs about a full forward; and the features are one segment, so every expansion of the search
recomputes the network from the input. ``model.last_cost`` counts all of it. The split is only used
when the model's output depends on the feature map alone: :func:`undiscard.split.get_split` checks
``head(features(x)) == model(x)`` bit for bit on the example input, which fails where the code after
the feature module also reads the input. Pass ``features=``/``head=`` to do better.

The hooks are installed once on the wrapper's private copy of the model and act only while a
``ContextVar`` asks them to (thread-safe, like phase plans); otherwise they return ``None`` and the
model runs as usual.
"""
from __future__ import annotations

import contextvars
from typing import Any

import torch
from torch import Tensor, nn

from .errors import UndiscardError
from .outputs import OutputSelector, select_output

__all__ = ["HookSplitError", "hook_split"]


class HookSplitError(UndiscardError):
    """No module of the model can serve as the feature module (the reason is the message)."""


class _Stop(BaseException):  # BaseException: a model's own ``except Exception`` must not swallow it
    def __init__(self, value: Tensor):
        super().__init__()
        self.value = value


class _Replacement:
    def __init__(self, value: Tensor):
        self.value = value
        self.used = 0


_ACTIVE: contextvars.ContextVar[tuple[Any, str, _Replacement | None] | None] = contextvars.ContextVar(
    "undiscard_feature_tap", default=None)


class FeatureTap:
    """Forward hook of the feature module: capture its output (and stop), or replace it, on request."""

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        active = _ACTIVE.get()
        if active is None or active[0] is not self:
            return None
        _, action, replacement = active
        if action == "capture":
            raise _Stop(output)
        assert replacement is not None
        replacement.used += 1
        return replacement.value


def _tap(module: nn.Module) -> FeatureTap:
    """The module's FeatureTap, installed once (a copied or unpickled wrapper finds its own)."""
    for hook in module._forward_hooks.values():
        if isinstance(hook, FeatureTap):
            return hook
    tap = FeatureTap()
    module.register_forward_hook(tap)
    return tap


def _feature_module(model: nn.Module, x: Tensor) -> tuple[str, nn.Module]:
    """(name, module) of the last module returning a 4-D map with h*w > 1, called once (see docstring)."""
    names = {m: n for n, m in model.named_modules() if m is not model}
    calls: dict[nn.Module, int] = {}
    order: list[nn.Module] = []

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        calls[module] = calls.get(module, 0) + 1
        if isinstance(output, Tensor) and output.dim() == 4 and output.shape[-1] * output.shape[-2] > 1:
            order.append(module)

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    for module in reversed(order):
        if calls[module] == 1:
            return names[module], module
    raise HookSplitError("no module called once returns a 4-D feature map (N, C, h, w) with h*w > 1")


class HookFeatures:
    """``features(x)``: the model's forward, stopped where the feature module returns."""

    def __init__(self, model: nn.Module, tap: FeatureTap, name: str):
        self.model, self.tap, self.name = model, tap, name

    def __call__(self, x: Tensor) -> Tensor:
        token = _ACTIVE.set((self.tap, "capture", None))
        try:
            self.model(x)
        except _Stop as stop:
            return stop.value
        finally:
            _ACTIVE.reset(token)
        raise UndiscardError(f"the feature module {self.name} did not run in this forward pass")


class HookHead:
    """``head(maps)``: the model's forward on zero images with the feature module's output replaced."""

    def __init__(self, model: nn.Module, tap: FeatureTap, name: str, x: Tensor, output: OutputSelector):
        self.model, self.tap, self.name, self.output = model, tap, name, output
        self.image_shape = tuple(x.shape[1:])
        self.dtype = x.dtype

    def __call__(self, maps: Tensor) -> Tensor:
        dummy = torch.zeros((maps.shape[0], *self.image_shape), dtype=self.dtype, device=maps.device)
        replacement = _Replacement(maps)
        token = _ACTIVE.set((self.tap, "replace", replacement))
        try:
            out = self.model(dummy)
        finally:
            _ACTIVE.reset(token)
        if replacement.used != 1:
            raise UndiscardError(f"the feature module {self.name} ran {replacement.used} times in the head's "
                                 "forward pass, not once: pass features=/head= to wrap()")
        return select_output(out, self.output)


def hook_split(model: nn.Module, x: Tensor, output: OutputSelector = None):
    """The hook-based split of ``model`` (see module docstring); ``x``: an example input batch."""
    from .split import Split  # split imports this module

    name, module = _feature_module(model, x)
    tap = _tap(module)
    return Split([HookFeatures(model, tap, name)], HookHead(model, tap, name, x, output))
