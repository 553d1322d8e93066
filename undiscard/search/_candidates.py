"""The states a search chose, per image: running the search on an engine, and stacking what it found.

:func:`find_candidates` runs a search (:mod:`undiscard.search._best_first`) on one :class:`~undiscard.search._engine.Engine`
with one :class:`~undiscard.search.criteria.Criterion`, and returns a :class:`Candidates`: per image, the
evaluated :class:`~undiscard.search._best_first.Candidate` (state, native features, logits) in evaluation order. A
budget of B evaluates at most B states per image, the root included, so it costs at most B plain
forwards. The search is incremental, so the first b candidates of a budget-B search are exactly those of
a budget-b search: one search serves every smaller budget, its cost (``candidates_cost``) and every
aggregation. :func:`stack_candidates` stacks them once per search for all of those.

The criterion chooses the path: a ``static`` one (``offset``, ``grid``, ``random``, ``calibrated``) knows
its states before anything runs (:meth:`~undiscard.search.criteria.Criterion.static_order`, the same for every
image); they are evaluated as a list, each state from its first non-zero unit's cut on the root's
activation there (:meth:`~undiscard.search._engine.Engine.evaluate`). Any other (``entropy``, ``learned``, a custom
scorer) runs the lazy best-first search (:func:`~undiscard.search._best_first.lazy_best_first`), which evaluates one
successor per image and step, each from its parent's activation at the cut of the unit it changes.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from .._eager import eager
from ..analysis.geometry import state_offsets
from ..errors import PhaseError
from ._best_first import Candidate, lazy_best_first
from ._engine import Engine
from .aps import aps_plan
from .criteria import Criterion, SearchContext

__all__ = ["Candidates", "engine_of", "find_candidates", "stack_candidates"]

# attention(engine, root features (N, ...)) -> per-state attention scores for the search's nodes
AttentionFactory = Callable[[Engine, Tensor], Callable[[list[int], Tensor, list[tuple[int, ...]]], Tensor]]


class Candidates(list):
    """Per image, the list of :class:`~undiscard.search._best_first.Candidate` chosen in selection order; knows the
    engine (input shape) it was searched with, and caches the stacked tensors of its candidates."""

    engine: Engine | None = None
    stacked: tuple[Tensor, Tensor, Tensor] | None = None
    empty: Tensor | None = None  # for a batch of 0 images: the model's (0, K) output

    @classmethod
    def of_empty(cls, output: Tensor) -> "Candidates":
        """The candidates of a batch of 0 images, carrying the model's (0, K) ``output``."""
        cands = cls()
        cands.empty = output
        return cands


def engine_of(cands: list[list[Candidate]], engines: Mapping[tuple, Engine]) -> Engine:
    """The engine ``cands`` were searched with (a plain list of candidates: the model's only engine)."""
    if not cands or not cands[0]:
        raise PhaseError("no candidates given")
    engine = getattr(cands, "engine", None)
    if engine is None:
        if len(engines) != 1:
            raise PhaseError("pass the candidates as returned by model.candidates(x)")
        engine = next(iter(engines.values()))
    return engine


@eager  # a data-dependent heap search: batch sizes change every step, nothing to compile
@torch.no_grad()
def find_candidates(engine: Engine, x: Tensor, budget: int, criterion: Criterion, ctx: SearchContext,
                    attention: AttentionFactory | None = None, chunk_size: int = 256) -> Candidates:
    """Search ``budget`` states per image of ``x`` (N, C, H, W) on ``engine``, ordered by ``criterion``.

    ``attention`` makes the per-state attention scores from the root's features, for a criterion that
    ``needs_aggregator`` (it is only called then). Resets the engine's cost count first, so
    :meth:`~undiscard.search._engine.Engine.cost_since_reset` reads this search's cost afterwards, with one run
    of the head per image for aggregating the states (none when every image has only its root).
    """
    engine.reset_cost()
    if criterion.adaptive:
        cands = Candidates(_adaptive(engine, x, budget, criterion, ctx, chunk_size))
    elif criterion.static:
        cands = Candidates(_listed(engine, x, criterion.static_order(ctx, budget), budget, chunk_size))
    else:
        cands = Candidates(_searched(engine, x, budget, criterion, ctx, attention, chunk_size))
    if any(len(per) > 1 for per in cands):
        engine.charge_head(x.shape[0])  # what aggregating the states runs on their combined features
    cands.engine = engine
    return cands


def _searched(engine: Engine, x: Tensor, budget: int, criterion: Criterion, ctx: SearchContext,
              attention: AttentionFactory | None, chunk_size: int) -> list[list[Candidate]]:
    """The lazy best-first search's candidates (:func:`~undiscard.search._best_first.lazy_best_first`)."""
    feats, logits, caches = engine.root_caches(x)  # the whole batch, as the plain forward runs it
    if criterion.needs_aggregator and attention is not None:
        ctx = replace(ctx, attention=attention(engine, feats))

    def score(images: list[int], feats: Tensor, logits: Tensor, states: list[tuple[int, ...]],
              depth: int) -> tuple[list[float], float]:
        if not criterion.needs_aggregator:  # the task's entropy: no FLOPs worth counting
            return criterion.score(ctx, images, feats, logits, states, depth), 0.0
        with FlopCounterMode(display=False) as counter:  # the aggregator's attention scores: part of the cost
            scores = criterion.score(ctx, images, feats, logits, states, depth)
        flops = float(counter.get_total_flops())
        engine.charge_scores(len(states), flops)
        return scores, flops

    return lazy_best_first(feats, logits, caches, engine.cut, engine.rates(), budget, engine.evaluate, score,
                           lambda states: criterion.prior(ctx, states), chunk_size)


def _adaptive(engine: Engine, x: Tensor, budget: int, criterion: Criterion, ctx: SearchContext,
              chunk_size: int) -> list[list[Candidate]]:
    """The root, then per image the state adaptive polyphase selection chooses at every searched unit (one
    pass from the first searched unit's cut, in blocks of at most ``chunk_size`` images), then the first
    states of ``criterion``'s static order that differ from it (each from its first non-zero unit's cut)."""
    n = x.shape[0]
    feats, logits, caches = engine.root_caches(x)
    zero = tuple([0] * len(engine.searched))
    cands = [[Candidate(zero, feats[i], logits[i])] for i in range(n)]
    if budget < 2 or not engine.searched:
        return cands
    segment, positions = engine.cut[0], list(range(len(engine.searched)))
    for lo in range(0, n, chunk_size):
        hi = min(n, lo + chunk_size)
        plan = aps_plan(engine, positions, criterion.rule)  # a fresh plan per pass: it records the choices
        f, lg, extra = engine.evaluate_adaptive(segment, caches[segment][lo:hi], dict(plan))
        chosen = torch.stack([plan[u].phases for u in engine.searched], 1).tolist()  # type: ignore[misc]
        for i in range(lo, hi):
            cands[i].append(Candidate(tuple(chosen[i - lo]), f[i - lo], lg[i - lo], segment, extra_flops=extra, adaptive=True))
    order = list(criterion.static_order(ctx, budget + 1))[1:]
    rows = [(i, s) for i in range(n) for s in [s for s in order if s != cands[i][1].state][:budget - 2]]
    first = {s: engine.cut[next(d for d, p in enumerate(s) if p)] for _, s in rows}
    found: dict[tuple[int, tuple[int, ...]], tuple[Tensor, Tensor]] = {}
    for seg in sorted(set(first.values())):
        part = [(i, s) for i, s in rows if first[s] == seg]
        for start in range(0, len(part), chunk_size):
            block = part[start:start + chunk_size]
            index = torch.tensor([i for i, _ in block], dtype=torch.long, device=x.device)
            table = torch.tensor([s for _, s in block], dtype=torch.long, device=x.device)
            f, lg, _ = engine.evaluate(seg, caches[seg][index], table)
            found.update({key: (f[r], lg[r]) for r, key in enumerate(block)})
    for i, s in rows:
        f, lg = found.pop((i, s))
        cands[i].append(Candidate(s, f, lg, first[s]))
    return cands


def _listed(engine: Engine, x: Tensor, order: Sequence[tuple[int, ...]], budget: int,
            chunk_size: int) -> list[list[Candidate]]:
    """The first ``budget`` states of ``order`` for every image of ``x``, in that order: each state runs
    from its first non-zero unit's cut on the root's activation there, in passes of at most ``chunk_size``
    rows (images x states; one row at least). A budget beyond the order evaluates the whole order (a tree
    search, too, stops when its states run out)."""
    budget = min(budget, len(order))
    n = x.shape[0]
    feats, logits, caches = engine.root_caches(x)
    cands = [[Candidate(order[0], feats[i], logits[i])] for i in range(n)]
    states = list(order[1:budget])
    first = [engine.cut[next(d for d, p in enumerate(s) if p)] for s in states]  # the segment each runs from
    found: dict[int, list[tuple[Tensor, Tensor]]] = {}  # position in states -> per image (features, logits)
    per_pass = max(1, chunk_size // n)  # states per pass, for every image at once
    block = min(n, chunk_size)  # images per pass, when one state for every image is more than a chunk
    for segment in sorted(set(first)):
        which = [p for p, k in enumerate(first) if k == segment]
        for lo in range(0, n, block):
            images = torch.arange(lo, min(n, lo + block), device=x.device)
            for start in range(0, len(which), per_pass):
                part = which[start:start + per_pass]
                table = torch.tensor([states[p] for p in part], dtype=torch.long, device=x.device)
                rows = images.repeat_interleave(len(part))  # image-major
                f, lg, _ = engine.evaluate(segment, caches[segment][rows], table.repeat(len(images), 1))
                for q, p in enumerate(part):
                    found.setdefault(p, []).extend(zip(f[q::len(part)], lg[q::len(part)]))
    del caches
    for p, (state, segment) in enumerate(zip(states, first)):
        for i, (f, lg) in enumerate(found.pop(p)):
            cands[i].append(Candidate(state, f, lg, segment))
    return cands


def stack_candidates(cands: list[list[Candidate]], engine: Engine) -> tuple[Tensor, Tensor, Tensor]:
    """Features (N, B, ...), logits (N, B, *output) and offsets (N, B, 2) of the candidates; cached on a
    :class:`Candidates` so that every budget prefix and aggregation of one search stacks once.

    The candidates of a :class:`Candidates` then hold views of the stacked tensors (same values), so the
    search's pass outputs they pointed into are freed: the features are kept once, not twice."""
    cached = getattr(cands, "stacked", None)
    if cached is not None:
        return cached
    lengths = {len(per) for per in cands}
    if len(lengths) != 1 or not isinstance(cands, Candidates):
        feats = torch.stack([torch.stack([c.features for c in per]) for per in cands])  # (N, B, ...)
        logits = torch.stack([torch.stack([c.logits for c in per]) for per in cands])  # (N, B, K)
    else:
        b, one = lengths.pop(), cands[0][0]
        feats = one.features.new_empty((len(cands), b, *one.features.shape))
        logits = one.logits.new_empty((len(cands), b, *one.logits.shape))
        with torch.no_grad():
            for i, per in enumerate(cands):
                for j, c in enumerate(per):
                    feats[i, j], logits[i, j] = c.features, c.logits
                    c.features, c.logits = feats[i, j], logits[i, j]
    offsets = state_offsets([[c.state for c in per] for per in cands], engine.search_units, feats.device)
    if isinstance(cands, Candidates):
        cands.stacked = (feats, logits, offsets)
    return feats, logits, offsets
