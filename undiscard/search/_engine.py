"""Evaluating states of one model on one input shape: the root pass, states run from a cut, cost.

An :class:`Engine` is built once per input shape (:mod:`undiscard._setup`). It knows

- the searched units, each unit's chain segment (the cut before it), and its rate;
- how to run the root (the original model), keeping the activation at every searched unit's cut
  (:meth:`Engine.root_caches`);
- how to evaluate states from a cut (:meth:`Engine.evaluate`): run the network from segment k on
  activations cached there, with every searched unit from that segment on at each row's phase (a
  per-sample phase plan: rows at one phase run as one ordinary strided pass), keeping the activations
  at later cuts on request. The batch never grows inside a layer, so every model whose forward works
  per sample (torchvision's ViT too, whose code fixes the batch size) runs alike;
- the cost of everything it ran, in FLOPs (convolutions and matrix products, as counted by
  ``torch.utils.flop_counter``; elementwise ops, normalisation and pooling are not counted), and the
  ideal cost had every state been recomputed only from its last non-zero unit on. The count is kept
  per thread, so threads sharing one engine each see the cost of their own calls.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.hooks import RemovableHandle

from ..analysis._chain import Chain
from ..analysis._split import Split
from ..analysis.discovery import Unit
from ..analysis.geometry import feature_stride
from ..errors import PhaseError, UndiscardError
from ..layers.plans import PhaseSpec, phase_plan
from ._best_first import Candidate, state_depth

__all__ = ["CostHook", "Engine"]

CostHook = Callable[[int | None, int, float, float], None]  # (depth or None for the root, rows, flops, ideal)


@dataclass
class _Flops:
    segment: list[float]  # per sample, per chain segment
    head: float
    tail: dict[int, float]  # per searched unit: everything from the unit's first layer on, per sample (ideal)
    baseline: float = 0.0  # per sample: one plain forward of the network, the unit of every cost
    root: float = 0.0  # per sample: features + head as the split runs them (more than baseline only for a
    # split whose head re-runs the network's forward, undiscard.analysis._hook_split)


def _count(fn) -> tuple[float, object]:
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return float(counter.get_total_flops()), out


@dataclass
class Engine:
    net: nn.Module
    split: Split
    chain: Chain
    units: list[Unit]  # all units of the model (unit index = position here)
    searched: list[int]  # indices into ``units``
    cut: list[int] = field(default_factory=list)  # chain segment of each searched unit
    flops: _Flops | None = None
    # FLOPs run since the last reset, per thread: concurrent calls on one engine count their own work
    _cost: threading.local = field(default_factory=threading.local, repr=False, compare=False)
    # register_cost_hook; an OrderedDict because RemovableHandle keeps a weak reference to it
    _hooks: OrderedDict[int, CostHook] = field(default_factory=OrderedDict, repr=False, compare=False)

    def __post_init__(self) -> None:
        modules = dict(self.net.named_modules())
        try:
            self.cut = [self.chain.segment_of(modules[self.units[u].layers[0]]) for u in self.searched]
        except KeyError:
            outside = [self.units[u].name for u in self.searched
                       if not any(id(modules[self.units[u].layers[0]]) in m for m in self.chain.modules)]
            raise UndiscardError(f"searched units {', '.join(outside)} run in the model's head, not its features: "
                                 "choose other units= or pass features=/head=") from None
        # Segments may only *shrink* along the searched order; a later unit before an earlier cut
        # cannot happen because units are in execution order and segments are sequential.

    # ------------------------------------------------------------------------------------------
    def rates(self) -> list[int]:
        """The searched units' rates, in search order."""
        return [self.units[u].rate for u in self.searched]

    @property
    def search_units(self) -> list[Unit]:
        """The searched units, in search order."""
        return [self.units[u] for u in self.searched]

    @property
    def feature_stride(self) -> int | Fraction:
        """Total stride from the first searched unit's input grid to the feature map (alignment); for a
        split at the output (a dense task), to the output map (a Fraction when it is finer)."""
        return feature_stride(self.units, self.searched, self.split.map_size)

    def measure(self, x: Tensor) -> None:
        """Count per-sample FLOPs of each segment, the head, each unit's tail and the plain forward, on one sample."""
        x = x[:1]
        seg: list[float] = []
        with torch.no_grad():
            a = x
            for s in self.chain.segments:
                f, a = _count(lambda s=s, a=a: s(a))
                seg.append(f)
            head, _ = _count(lambda: self.split.head(a))
            tail = self._tails(x, sum(seg) + head)
            plain, _ = _count(lambda: self.net(x))
        root = sum(seg) + head
        self.flops = _Flops(seg, head, tail, baseline=plain or root, root=root)

    def _tails(self, x: Tensor, total: float) -> dict[int, float]:
        """FLOPs from each searched unit's first layer to the logits, per sample."""
        modules = dict(self.net.named_modules())
        before: dict[int, float] = {}
        counter = FlopCounterMode(display=False)
        hooks = []
        for i, u in enumerate(self.searched):
            layer = modules[self.units[u].layers[0]]

            def pre_hook(mod: nn.Module, args: tuple, i: int = i) -> None:
                before.setdefault(i, float(counter.get_total_flops()))

            hooks.append(layer.register_forward_pre_hook(pre_hook))
        try:
            with counter:
                self.split.head(self.chain.run(x)[0])
        finally:
            for h in hooks:
                h.remove()
        return {i: total - before.get(i, 0.0) for i in range(len(self.searched))}

    def _charge(self, depth: int | None, rows: int, flops: float, ideal: float) -> None:
        """Add one pass's FLOPs to this thread's counters and tell the cost hooks."""
        self._cost.spent = getattr(self._cost, "spent", 0.0) + flops
        self._cost.ideal = getattr(self._cost, "ideal", 0.0) + ideal
        for hook in list(self._hooks.values()):
            hook(depth, rows, flops, ideal)

    def register_cost_hook(self, hook: CostHook) -> RemovableHandle:
        """Call ``hook(depth, rows, flops, ideal_flops)`` after every pass the engine runs: the root, the
        head on the aggregated features (:meth:`charge_head`) (``depth`` None, ``rows`` images), a criterion's
        scoring (:meth:`charge_scores`; ``depth`` None, ``rows`` states) and each pass of :meth:`evaluate` (``depth`` the first searched
        unit whose cut the pass starts from, ``rows`` the states evaluated), with the FLOPs it charged. For measuring (``benchmarks/bench_cost.py``); the
        handle's ``remove()`` takes the hook off again."""
        handle = RemovableHandle(self._hooks)
        self._hooks[handle.id] = hook
        return handle

    def reset_cost(self) -> None:
        """Start this thread's cost counters (:meth:`cost_since_reset`) from zero."""
        self._cost.spent = self._cost.ideal = 0.0

    def cost_since_reset(self, images: int) -> tuple[float, float]:
        """This thread's (measured, ideal) cost since :meth:`reset_cost`, per image of ``images``, in
        baseline forwards (0 for no images)."""
        assert self.flops is not None
        base = self.flops.baseline * images
        if not base:
            return 0.0, 0.0
        return getattr(self._cost, "spent", 0.0) / base, getattr(self._cost, "ideal", 0.0) / base

    def search_cost(self, searches: list[list[Candidate]]) -> tuple[float, float]:
        """Mean (measured, ideal) cost per image, in baseline forwards, of searches that found the given
        candidates (one list per image, in evaluation order): what :meth:`cost_since_reset` reads after
        such a search, the head on the aggregated features (:meth:`charge_head`) and the scoring of every
        state but the last (:attr:`~undiscard.search._best_first.Candidate.score_flops`) included. An image with
        only the root is at budget 1, which ``wrap`` answers with one plain forward of the network (not the
        split's root pass, which costs ~2 forwards for a hook-fallback split): when no image has more,
        the cost is 1."""
        assert self.flops is not None
        if not any(len(per) > 1 for per in searches):  # budget 1: the network itself (1 forward)
            return (1.0, 1.0) if searches else (0.0, 0.0)
        spent = ideal = 0.0
        for per in searches:
            scored = sum(c.score_flops for c in per[:-1])  # a search's last state is not scored
            spent += self.flops.root + self.flops.head + scored
            ideal += self.flops.baseline + self.flops.head + scored
            for c in per[1:]:
                assert c.segment is not None
                spent += self.row_flops(c.segment) + c.extra_flops
                depth = 1 if c.adaptive else state_depth(c.state)  # an adaptive pass runs from the first unit on
                ideal += self.flops.tail[depth - 1] + c.extra_flops
        n = len(searches) * self.flops.baseline
        return (spent / n, ideal / n) if n else (0.0, 0.0)

    def charge_head(self, images: int) -> None:
        """Charge one run of the head per image: what aggregating a search's states runs on their combined
        features (a classifier's pooling and linear layer; nothing for a dense task's output split)."""
        assert self.flops is not None
        self._charge(None, images, self.flops.head * images, self.flops.head * images)

    def charge_scores(self, rows: int, flops: float) -> None:
        """Charge the FLOPs a criterion ran to score ``rows`` evaluated states (the ``learned`` criterion's
        attention scores), counted where they ran."""
        self._charge(None, rows, flops, flops)

    def row_flops(self, segment: int) -> float:
        """FLOPs of one state evaluated from chain segment ``segment`` on: the segments from there and the head."""
        assert self.flops is not None
        return sum(self.flops.segment[segment:]) + self.flops.head

    # ------------------------------------------------------------------------------------------
    def root_caches(self, x: Tensor) -> tuple[Tensor, Tensor, dict[int, Tensor]]:
        """Original-model features and logits for x, and the activation at every searched unit's cut
        ({segment: (N, ...)}, the input of that chain segment)."""
        wanted = set(self.cut)
        at: dict[int, Tensor] = {}
        with phase_plan(None):
            a = x
            for k, seg in enumerate(self.chain.segments):
                if k in wanted:
                    at[k] = a
                a = seg(a)
            logits = self.split.head(a)
        assert self.flops is not None
        self._charge(None, x.shape[0], self.flops.root * x.shape[0], self.flops.baseline * x.shape[0])
        return a, logits, at

    def evaluate(self, segment: int, inputs: Tensor, states: Tensor,
                 capture: Sequence[int] = ()) -> tuple[Tensor, Tensor, dict[int, Tensor]]:
        """Features and logits (M, ...) of states ``states`` (M, L) run from chain segment ``segment`` on
        ``inputs`` (M, ...), and the activations at the inputs of the segments in ``capture`` (later ones).

        ``inputs[m]`` must be the activation at the segment's input of a state that agrees with
        ``states[m]`` on every searched unit before that segment (the root's, or an evaluated parent's);
        every searched unit from the segment on runs at the row's phase."""
        assert self.flops is not None
        listed = states.tolist()
        moved = [any(s[d] for s in listed) for d in range(len(self.searched))]
        plan: dict[int, PhaseSpec] = {self.searched[d]: states[:, d] for d in range(len(self.searched))
                                      if self.cut[d] >= segment and moved[d]}
        wanted = set(capture)
        at: dict[int, Tensor] = {}
        with phase_plan(plan):
            a = inputs
            for k in range(segment, len(self.chain.segments)):
                if k in wanted:
                    at[k] = a
                a = self.chain.segments[k](a)
        with phase_plan(None):
            logits = self.split.head(a)
        rows = int(states.shape[0])
        ideal = sum(self.flops.tail[state_depth(s) - 1] for s in listed)
        self._charge(self.cut.index(segment), rows, rows * self.row_flops(segment), ideal)
        return a, logits, at

    def evaluate_adaptive(self, segment: int, inputs: Tensor, plan: dict[int, PhaseSpec]) -> tuple[Tensor, Tensor, float]:
        """Features and logits (M, ...) of one pass from chain segment ``segment`` on ``inputs`` (M, ...) with a
        phase ``plan`` decided during the pass (:class:`~undiscard.layers.plans.Adaptive` specs: the phases are
        read from the plan afterwards), and the FLOPs it ran beyond :meth:`row_flops` per row (counted on the
        pass itself: an adaptive unit computes its first layer densely). Charged as counted."""
        assert self.flops is not None
        with FlopCounterMode(display=False) as counter:
            with phase_plan(plan):
                a = inputs
                for k in range(segment, len(self.chain.segments)):
                    a = self.chain.segments[k](a)
            with phase_plan(None):
                logits = self.split.head(a)
        rows = int(inputs.shape[0])
        flops = float(counter.get_total_flops())
        extra = max(0.0, flops / rows - self.row_flops(segment)) if rows else 0.0
        self._charge(self.cut.index(segment), rows, flops, rows * (self.flops.tail[self.cut.index(segment)] + extra))
        return a, logits, extra

    def state_phases(self, state: tuple[int, ...], n: int, device: torch.device) -> dict[int, Tensor]:
        """The phase plan {unit index: (n,) long} of one state (one phase per searched unit) for n images;
        a state of the wrong length or a phase out of range is one :class:`~undiscard.errors.PhaseError`."""
        units = self.search_units
        if len(state) != len(units):
            raise PhaseError(f"state has {len(state)} phases but {len(units)} units are searched "
                             f"({', '.join(u.name for u in units) or 'none'})")
        phases: dict[int, Tensor] = {}
        for s, u, idx in zip(state, units, self.searched):
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < u.num_phases:
                raise PhaseError(f"phase {s!r} out of range for unit {u.name} (rate {u.rate}): "
                                 f"expected 0 <= phase < {u.num_phases}")
            if s:
                phases[idx] = torch.full((n,), s, dtype=torch.long, device=device)
        return phases

    def run_state(self, x: Tensor, phases: dict[int, Tensor]) -> Tensor:
        """Logits of the network with per-sample phases {unit index: (N,) long}; others at phase 0."""
        with phase_plan(phases or None):
            return self.net(x)
