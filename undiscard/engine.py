"""Evaluating states of one model on one input shape: root pass, batched expansions, cost.

An :class:`Engine` is built once per input shape (:mod:`undiscard.setup`). It knows

- the searched units, each unit's chain segment (the cut before it), and its rate;
- how to run the root (the original model, caching the activation at the first searched unit's cut);
- how to *expand* a batch of nodes at unit u: run the network from u's cut with u in EXPAND mode (all R²
  phases from one dense pass, the batch grows to M*R²) and with the already-decided phases of units
  that share u's segment applied per sample; it returns the children's features, logits and the
  activations cached at the next searched unit's cut. A model whose code fixes the batch size before
  the unit's output is consumed (torchvision's ViT reshapes with the input's batch size) cannot grow
  its batch inside a layer; for such a unit (detected once, on the example input) the cached
  activation is replicated R² times and the unit runs per sample at phases 0..R²-1 — same results,
  and the unit's layers cost the same;
- how to expand *some* children only (:meth:`Engine.expand_some`, for a search whose order is known
  before the children are computed): the unit's layers compute only the chosen phases, one strided pass
  each (:class:`~undiscard.execution.Select`), and everything after runs on those rows only;
- how to run given states from a searched unit's cut on the root's cached activation
  (:meth:`Engine.run_rows`, for a fixed list of states: ``criterion="calibrated"``);
- the cost of everything it ran, in FLOPs (convolutions and matrix products, as counted by
  ``torch.utils.flop_counter``; elementwise ops, normalisation and pooling are not counted), and the
  ideal cost had every expansion recomputed only from the unit itself. The count is kept per thread,
  so threads sharing one engine each see the cost of their own calls.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.hooks import RemovableHandle

from .chain import Chain
from .discovery import Unit
from .errors import PhaseError, UndiscardError
from .execution import EXPAND, PhaseSpec, Select, phase_plan
from .geometry import feature_stride
from .search import Step
from .split import Split

__all__ = ["CostHook", "Engine", "Expansion"]

CostHook = Callable[[int | None, int, float, float], None]  # (depth or None for the root, rows, flops, ideal)


@dataclass
class Expansion:
    """Children of M parents at one unit, parent-major. Child 0 is the parent's own state: it has a
    cache (for deeper expansions) but no features or logits of its own (they are the parent's).

    features/logits: row m*(R²-1) + (j-1) is child j >= 1 of parent m; caches: row m*R² + j is child j.
    """

    features: Tensor  # (M*(R²-1), *native feature shape)
    logits: Tensor  # (M*(R²-1), K)
    caches: Tensor | None  # (M*R², ...) activations at the next searched unit's cut; None at the last unit


@dataclass
class _Flops:
    segment: list[float]  # per sample, per chain segment
    expanded: dict[int, float]  # per parent sample: the searched unit's own segment run in EXPAND mode
    head: float
    tail: dict[int, float]  # per sample: everything from the unit's first layer on (ideal expansion)
    baseline: float = 0.0  # per sample: one plain forward of the network, the unit of every cost
    root: float = 0.0  # per sample: features + head as the split runs them (more than baseline only for a
    # split whose head re-runs the network's forward, undiscard.hook_split)
    # Engine.expand_some at each searched depth: per parent (what runs before the unit in its segment) and
    # per selected child (its phase of the unit and the rest of the segment)
    select_fixed: dict[int, float] = field(default_factory=dict)
    select_row: dict[int, float] = field(default_factory=dict)


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
    replicate: list[bool] = field(default_factory=list)  # expand by replicating the input (see above)
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
        self.replicate = [False] * len(self.searched)
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
        """Count per-sample FLOPs of each segment, each expansion, and the head, on one sample."""
        x = x[:1]
        seg: list[float] = []
        with torch.no_grad():
            a = x
            inputs = []
            for s in self.chain.segments:
                inputs.append(a)
                f, a = _count(lambda s=s, a=a: s(a))
                seg.append(f)
            head, _ = _count(lambda: self.split.head(a))
            expanded: dict[int, float] = {}
            fixed: dict[int, float] = {}
            per_row: dict[int, float] = {}
            for i, u in enumerate(self.searched):
                k = self.cut[i]
                r2 = self.units[u].num_phases
                try:
                    with phase_plan({u: EXPAND}):
                        f, out = _count(lambda k=k: self.chain.segments[k](inputs[k]))
                        # two parents too: with one, a tensor read from before the unit (a decoder's skip,
                        # 1 row) broadcasts against the R² grown rows, and the failure shows only at M >= 2
                        two = self.chain.segments[k](torch.cat([inputs[k], inputs[k]]))
                    self.replicate[i] = out.shape[0] != r2 or two.shape[0] != 2 * r2
                except RuntimeError:
                    self.replicate[i] = True
                if self.replicate[i]:
                    f = seg[k] * r2
                    fixed[i], per_row[i] = 0.0, seg[k]
                else:  # one child and two children of one parent: the difference is the cost per child
                    one, two = (self._count_select(u, k, inputs[k], c) for c in (1, 2))
                    fixed[i], per_row[i] = 2 * one - two, two - one
                expanded[i] = f  # the unit's own segment, all R² rows
            tail = self._tails(x, sum(seg) + head)
            plain, _ = _count(lambda: self.net(x))
        root = sum(seg) + head
        self.flops = _Flops(seg, expanded, head, tail, baseline=plain or root, root=root, select_fixed=fixed,
                            select_row=per_row)

    def _count_select(self, unit: int, segment: int, x: Tensor, children: int) -> float:
        """FLOPs of ``segment`` (holding ``unit``) on ``x`` (one sample) selecting ``children`` of its phases."""
        zeros = torch.zeros(children, dtype=torch.long, device=x.device)
        with phase_plan({unit: Select(zeros, torch.ones_like(zeros))}):
            f, _ = _count(lambda: self.chain.segments[segment](x))
        return f

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
        """Call ``hook(depth, rows, flops, ideal_flops)`` after every pass the engine runs: the root
        (``depth`` None, ``rows`` images) and each expansion (``depth`` the searched unit, ``rows`` the
        parents expanded), with the FLOPs it charged. For measuring (``benchmarks/bench_cost.py``); the
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

    def search_cost(self, expansions: list[tuple[Step, ...]]) -> tuple[float, float]:
        """Mean (measured, ideal) cost per image, in baseline forwards, of searches that ran the root and
        then the given passes (one tuple per image, :attr:`~undiscard.search.Candidate.expansions` of its
        last candidate): what :meth:`cost_since_reset` reads after such a search. Images with no pass
        are at budget 1, which ``wrap`` answers with one plain forward of the network (not the split's
        root pass, which costs ~2 forwards for a hook-fallback split): they cost 1."""
        assert self.flops is not None
        if not any(expansions):  # no expansion: budget 1, which runs the network itself (1 forward)
            return (1.0, 1.0) if expansions else (0.0, 0.0)
        base = self.flops.baseline
        spent = ideal = 0.0
        for steps in expansions:
            spent += self.flops.root + sum(self.step_flops(s)[0] for s in steps)
            ideal += base + sum(self.step_flops(s)[1] for s in steps)
        n = len(expansions) * base
        return (spent / n, ideal / n) if n else (0.0, 0.0)

    def step_flops(self, step: Step) -> tuple[float, float]:
        """(measured, ideal) FLOPs of one :class:`~undiscard.search.Step` of one image."""
        assert self.flops is not None
        f, d = self.flops, step.depth
        if step.kind == "expand":
            return self.expansion_flops(d), (self.units[self.searched[d]].num_phases - 1) * f.tail[d]
        if step.kind == "select":
            rest = sum(f.segment[self.cut[d] + 1:]) + f.head
            return f.select_fixed[d] + step.rows * (f.select_row[d] + rest), step.rows * f.tail[d]
        if step.kind == "rows":
            return step.rows * (sum(f.segment[self.cut[d]:]) + f.head), step.rows * f.tail[d]
        raise ValueError(f"unknown step kind {step.kind!r}")

    # ------------------------------------------------------------------------------------------
    def root(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Original-model features and logits for x, and the activation at the first searched cut."""
        capture = self.cut[0] if self.searched else None
        with phase_plan(None):
            feats, cache = self.chain.run(x, capture=capture)
            logits = self.split.head(feats)
        assert self.flops is not None
        self._charge(None, x.shape[0], self.flops.root * x.shape[0], self.flops.baseline * x.shape[0])
        return feats, logits, cache

    def root_caches(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Like :meth:`root`, and the activation at every searched unit's cut (one per searched unit)."""
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
        return a, logits, [at[k] for k in self.cut]

    def _stop(self, depth: int) -> int:
        """The segment at which child 0's rows are dropped: the next searched unit's cut, if later."""
        k = self.cut[depth]
        nxt = self.cut[depth + 1] if depth + 1 < len(self.searched) else None
        return nxt if nxt is not None and nxt > k else k + 1

    def expansion_flops(self, depth: int) -> float:
        """FLOPs of expanding one parent at searched unit ``depth``: the unit's segment on R² rows, the
        segments up to the next cut on R² rows, the rest and the head on the R²-1 new children."""
        assert self.flops is not None
        k, stop = self.cut[depth], self._stop(depth)
        r2 = self.units[self.searched[depth]].num_phases
        seg = self.flops.segment
        return (self.flops.expanded[depth] + r2 * sum(seg[k + 1:stop])
                + (r2 - 1) * (sum(seg[stop:]) + self.flops.head))

    def expand(self, depth: int, caches: Tensor, prefix: Tensor) -> Expansion:
        """Children at searched unit ``depth`` (0-based) of M parents.

        Args:
            depth: the searched unit to expand (parents have decided units 0..depth-1).
            caches: (M, ...) parents' activations at this unit's cut.
            prefix: (M, depth) long tensor, the parents' decided phases.
        """
        assert self.flops is not None
        k = self.cut[depth]
        unit = self.searched[depth]
        r2 = self.units[unit].num_phases
        m = caches.shape[0]
        inputs = caches
        plan: dict[int, PhaseSpec] = {unit: EXPAND}
        if self.replicate[depth]:
            inputs = caches.repeat_interleave(r2, dim=0)
            prefix = prefix.repeat_interleave(r2, dim=0)
            plan[unit] = torch.arange(r2, device=caches.device).repeat(m)
        for i in range(depth):
            if self.cut[i] == k:  # a decided unit inside the segment we rerun: apply per sample
                plan[self.searched[i]] = prefix[:, i]
        nxt = self.cut[depth + 1] if depth + 1 < len(self.searched) else None
        # rows of child 0 (the parent's own state) are only needed up to the next searched unit's cut,
        # for their cached activation; they are dropped there, and the rest runs on M*(R²-1) rows
        stop = self._stop(depth)
        with phase_plan(plan):
            x = self.chain.segments[k](inputs)
            x, _ = self.chain.run(x, start=k + 1, stop=stop)
            if nxt is None:
                captured = None
            elif nxt == k:
                captured = caches.repeat_interleave(r2, dim=0)
            else:
                captured = x
            keep = torch.arange(m * r2, device=x.device).view(m, r2)[:, 1:].flatten()
            feats, _ = self.chain.run(x[keep], start=stop)
        with phase_plan(None):
            logits = self.split.head(feats)
        cost, ideal = m * self.expansion_flops(depth), m * (r2 - 1) * self.flops.tail[depth]
        self._charge(depth, m, cost, ideal)
        return Expansion(feats, logits, captured)

    def expand_some(self, depth: int, caches: Tensor, prefix: Tensor, rows: Tensor,
                    phases: Tensor) -> tuple[Tensor, Tensor]:
        """Features (K, ...) and logits (K, ...) of child ``phases[k]`` (>= 1) at searched unit ``depth`` of
        parent ``rows[k]``, with no caches: the rows of :meth:`expand` a search that goes no deeper uses, each
        phase computed alone (equal to :meth:`expand`'s rows to float rounding). Arguments as in :meth:`expand`."""
        assert self.flops is not None
        k, unit = self.cut[depth], self.searched[depth]
        m = caches.shape[0]
        plan: dict[int, PhaseSpec]
        if self.replicate[depth]:  # the batch cannot grow inside a layer: one row per child, phase per sample
            inputs, prefix, plan = caches[rows], prefix[rows], {unit: phases}
        else:
            inputs, plan = caches, {unit: Select(rows, phases)}
        for i in range(depth):
            if self.cut[i] == k:  # a decided unit inside the segment we rerun: apply per sample
                plan[self.searched[i]] = prefix[:, i]
        with phase_plan(plan):
            feats, _ = self.chain.run(self.chain.segments[k](inputs), start=k + 1)
        with phase_plan(None):
            logits = self.split.head(feats)
        kids = int(rows.shape[0])
        rest = sum(self.flops.segment[k + 1:]) + self.flops.head
        fixed = 0.0 if self.replicate[depth] else m * self.flops.select_fixed[depth]
        self._charge(depth, m, fixed + kids * (self.flops.select_row[depth] + rest), kids * self.flops.tail[depth])
        return feats, logits

    def run_rows(self, depth: int, caches: Tensor, rows: Tensor, states: Tensor) -> tuple[Tensor, Tensor]:
        """Features and logits (K, ...) of state ``states[k]`` (K, L) for image ``rows[k]``, run from searched
        unit ``depth``'s cut on the root's activations there (``caches`` (N, ...), :meth:`root_caches`):
        the activation is replicated per state and every unit from ``depth`` on runs at its phase per
        sample. The states' phases before ``depth`` must be 0 (they are the root's)."""
        assert self.flops is not None
        k = self.cut[depth]
        plan: dict[int, PhaseSpec] = {self.searched[d]: states[:, d] for d in range(depth, len(self.searched))}
        with phase_plan(plan):
            feats, _ = self.chain.run(caches[rows], start=k)
        with phase_plan(None):
            logits = self.split.head(feats)
        kids = int(rows.shape[0])
        self._charge(depth, kids, kids * (sum(self.flops.segment[k:]) + self.flops.head),
                     kids * self.flops.tail[depth])
        return feats, logits

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
