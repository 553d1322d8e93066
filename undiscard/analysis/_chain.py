"""Cutting the feature extractor into a chain of segments, so work before a unit can be cached.

The search evaluates a state that changes unit u by recomputing the network *after* the cut before u, from
an activation cached there (docs/semantics.md, "Budget and cost"). That needs ``features`` written as ``seg_k(...seg_1(seg_0(x)))``.
:func:`build_chain` finds the finest such chain automatically from one traced forward pass: a stage (or
any module inside one) is replaced by its direct children whenever those children ran as a chain — each
called once with exactly the previous child's output tensor, the first with the stage's input, the last
producing the stage's output. ResNet, ConvNeXt, Swin, EfficientNet, ... decompose into their blocks;
a block with a residual or a module whose forward does other work between children stays whole.

The chain is verified against ``split.features`` bit for bit before use; if it does not reproduce the
features exactly, a single segment (recompute from the input) is used instead. Results are identical
either way; only the cost differs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ._split import Split

__all__ = ["Chain", "build_chain"]

Segment = Callable[[Tensor], Tensor]


@dataclass
class Chain:
    """``segments`` compose to the features; ``modules[k]`` is every module that runs inside segment k."""

    segments: list[Segment]
    modules: list[set[int]]  # ids of modules called within each segment
    verified: bool = True

    def segment_of(self, module: nn.Module) -> int:
        for k, mods in enumerate(self.modules):
            if id(module) in mods:
                return k
        raise KeyError("module not called by the features")

    def run(self, x: Tensor, start: int = 0, stop: int | None = None,
            capture: int | None = None) -> tuple[Tensor, Tensor | None]:
        """Run segments ``start..stop-1``; also return the input of segment ``capture`` if it is reached."""
        stop = len(self.segments) if stop is None else stop
        captured = x if capture == start else None
        for k in range(start, stop):
            x = self.segments[k](x)
            if capture == k + 1:
                captured = x
        return x, captured


@dataclass
class _ModuleCall:
    module: nn.Module
    args: tuple
    kwargs: dict
    output: Any = None
    in_version: int = -1  # tensor version counters: an in-place op between calls breaks the chain
    out_version: int = -1
    children: list["_ModuleCall"] = field(default_factory=list)
    subtree: set[int] = field(default_factory=set)


def _trace(split: Split, x: Tensor,
           model: nn.Module) -> tuple[list[list[_ModuleCall]], list[Tensor], list[tuple[int, int]]]:
    """Run the stages once, recording the module call tree of each stage and each stage's input."""
    roots: list[_ModuleCall] = []
    stack: list[_ModuleCall] = []

    def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
        call = _ModuleCall(module, args, kwargs)
        if args and isinstance(args[0], Tensor):
            call.in_version = args[0]._version
        (stack[-1].children if stack else roots).append(call)
        stack.append(call)

    def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        call = stack.pop()
        call.output = output
        if isinstance(output, Tensor):
            call.out_version = output._version
        call.subtree = {id(module)}.union(*(c.subtree for c in call.children))
        if stack:
            stack[-1].subtree |= call.subtree

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(m.register_forward_hook(post, with_kwargs=True))
    per_stage: list[list[_ModuleCall]] = []
    inputs: list[Tensor] = []
    versions: list[tuple[int, int]] = []  # (input version before, output version after) per stage
    try:
        with torch.no_grad():
            for stage in split.stages:
                inputs.append(x)
                v_in = x._version
                before = len(roots)
                x = stage(x)
                _close_open_calls(stack)
                per_stage.append(roots[before:])
                versions.append((v_in, x._version))
    finally:
        for h in handles:
            h.remove()
    inputs.append(x)
    return per_stage, inputs, versions


def _close_open_calls(stack: list[_ModuleCall]) -> None:
    """Calls a stage left without returning (a stage that stops the model's forward part-way, see
    :mod:`undiscard.analysis._hook_split`): they get no output, and their modules still count as run by the stage."""
    while stack:
        call = stack.pop()
        call.subtree = call.subtree | {id(call.module)}
        for c in call.children:
            call.subtree |= c.subtree
        if stack:
            stack[-1].subtree |= call.subtree


def _is_chain(calls: list[_ModuleCall], start: Tensor, end: Any, start_version: int, end_version: int) -> bool:
    """Each call consumes exactly the previous output, unmodified (same object, same version)."""
    if not calls:
        return False
    current: Any = start
    version = start_version
    for c in calls:
        if c.kwargs or len(c.args) != 1 or c.args[0] is not current or c.in_version != version \
                or not isinstance(c.output, Tensor):
            return False
        current, version = c.output, c.out_version
    return current is end and version == end_version


def _refine(call: _ModuleCall) -> list[tuple[Segment, set[int]]]:
    if _is_chain(call.children, call.args[0] if call.args else None, call.output, call.in_version,
                 call.out_version):
        return [seg for child in call.children for seg in _refine(child)]
    return [(call.module, call.subtree)]


def build_chain(split: Split, x: Tensor, model: nn.Module) -> Chain:
    """The finest verified chain of segments for ``split`` on inputs like ``x`` (see module docstring)."""
    per_stage, inputs, versions = _trace(split, x, model)
    segments: list[Segment] = []
    modules: list[set[int]] = []
    for stage, calls, a, b, (va, vb) in zip(split.stages, per_stage, inputs[:-1], inputs[1:], versions):
        if isinstance(stage, nn.Module) and len(calls) == 1 and calls[0].module is stage:
            pieces = _refine(calls[0])
        elif _is_chain(calls, a, b, va, vb):
            pieces = [seg for c in calls for seg in _refine(c)]
        else:
            pieces = [(stage, set().union(*(c.subtree for c in calls)) if calls else set())]
        for seg, mods in pieces:
            segments.append(seg)
            modules.append(mods)
    chain = Chain(segments, modules)
    with torch.no_grad():
        out, _ = chain.run(x)
    if out.shape != inputs[-1].shape or not torch.equal(out, inputs[-1]):
        whole = set().union(*modules) if modules else set()
        return Chain([split.features], [whole], verified=False)
    return chain
