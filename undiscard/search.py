"""Exact best-first search over states, batched across images (docs/semantics.md, "Search").

Per image: the root (all phases 0) is the first candidate and is pushed. While there are fewer than
``budget`` candidates and the frontier is not empty, the best-scored node (lowest score; ties by
insertion order) is popped and all R² children at its next unit are computed in one pass. Child 0 equals
the parent's state: it is pushed (so deeper units can still vary; its logits are the parent's) but is not a
new candidate, and it is not recomputed past the next unit's cut. Children
j >= 1 join the candidates best-scored first (ties by j) until the budget is reached. Every child that
still has an undecided unit is pushed, in order of j.

Every image has its own search, but images are searched in blocks of ``chunk // max R²`` (at least one):
each step pops one node per unfinished image of the block and runs all those expansions together, one
batched pass per unit depth, of at most ``chunk`` rows (parents x R² children; at least one parent's R²
children). A block's searches finish before the next block's start.

*Memory.* Besides one pass, the search keeps every image's candidates' features and logits, and for the
images of the current block the frontier nodes that can still be expanded: an expansion adds at least
``min R² - 1`` candidates, so an image missing m candidates pops at most ``ceil(m / (min R² - 1))`` more
nodes, and nodes ranked below that in its frontier can never be popped (pushes only rank ahead of them),
nor can any node of an image that has its budget. Those are dropped after every expansion, and each kept
node's cached activation gets its own storage, so a pass's tensors are freed as soon as the pass is done.
The states chosen are unchanged.

The search knows nothing about models or tasks: nodes are scored by a ``score`` function (a criterion
of :mod:`undiscard.criteria`) and expanded by an ``expand`` function (:meth:`undiscard.engine.Engine.expand`).

*Cost that follows the budget.* When the scores depend on the states and the depth alone (a *static*
criterion: ``offset``, ``random``, ``calibrated``; the caller passes ``select``), children are scored
before they are computed, and an expansion after which the image's search cannot go deeper (the budget
is reached, or the unit is the last one) computes only the children that become candidates
(:meth:`undiscard.engine.Engine.expand_some`): budget 2 costs one child, not R² - 1. The states chosen are
those of the expand-all search, which still runs for every expansion whose children may be expanded
again. Every candidate records the passes a search that *ends* at it runs (:class:`Step`), so one search
prices every smaller budget (:meth:`undiscard.engine.Engine.search_cost`).
"""
from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from .geometry import state_offset

__all__ = ["Candidate", "Step", "state_offset", "best_first", "Expander", "Selector", "Scorer"]


def __getattr__(name: str) -> tuple[str, ...]:
    if name == "CRITERIA":  # kept importable from here: the criteria live in undiscard.criteria
        from . import criteria

        return criteria.CRITERIA
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Step(NamedTuple):
    """One pass of a search, for one image, as the engine charges it (:meth:`~undiscard.engine.Engine.step_flops`).

    kind: ``"expand"`` (all R² children of one parent at searched unit ``depth``), ``"select"`` (``rows``
    children of one parent, each phase computed alone: :meth:`~undiscard.engine.Engine.expand_some`) or
    ``"rows"`` (``rows`` states run from unit ``depth``'s cut, the cached activation replicated per state:
    :meth:`~undiscard.engine.Engine.run_rows`).
    """

    kind: str
    depth: int
    rows: int = 1


@dataclass
class Candidate:
    """A chosen state of one image: its phases, native features and logits."""

    state: tuple[int, ...]
    features: Tensor
    logits: Tensor
    # the passes after the root that a search ending at this candidate runs for its image (its cost)
    expansions: tuple[Step, ...] = ()


@dataclass(order=True)
class _Node:
    score: float
    order: int
    state: tuple[int, ...] = field(compare=False)
    depth: int = field(compare=False)
    cache: Tensor | None = field(compare=False)
    logits: Tensor | None = field(compare=False, default=None)
    features: Tensor | None = field(compare=False, default=None)


# expander(depth, caches (M, ...), prefix (M, depth)) -> (features (M*(R²-1), ...), logits (M*(R²-1), K),
# child caches (M*R², ...) or None): children j >= 1 have features and logits, every child has a cache
Expander = Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor, Tensor | None]]
# selector(depth, caches (M, ...), prefix (M, depth), rows (K,), phases (K,)) -> (features (K, ...), logits
# (K, ...)): child phases[k] of parent rows[k] only, no caches (Engine.expand_some)
Selector = Callable[[int, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
# scorer(images, features, logits, states, depth) -> one score per row (lower = expanded first); row r
# belongs to image images[r]. With a selector, features and logits are None (a static criterion).
Scorer = Callable[[list[int], Tensor | None, Tensor | None, list[tuple[int, ...]], int], list[float]]


def best_first(root_features: Tensor, root_logits: Tensor, root_cache: Tensor | list[Tensor] | None,
               rates: Sequence[int],
               budget: int, expand: Expander, score: Scorer, chunk: int = 256,
               select: Selector | None = None) -> list[list[Candidate]]:
    """Run the search for N images at once; return each image's candidates in selection order.

    ``root_cache``: the activations at the first searched unit's cut, (N, ...) or a list of N tensors; a
    list is emptied once the search holds its entries, so they are freed once the roots are expanded.
    ``chunk``: most rows (parents x R²) per expansion pass. ``select``: the scores read only states and
    depth (see the module docstring); expansions that end an image's search compute only the children
    they add."""
    n = root_features.shape[0]
    depth_total = len(rates)
    zero = tuple([0] * depth_total)
    static = select is not None
    root_scores = (score(list(range(n)), None, None, [zero] * n, 0) if static
                   else score(list(range(n)), root_features, root_logits, [zero] * n, 0))
    done: list[tuple[Step, ...]] = [() for _ in range(n)]  # passes run so far, per image
    cands: list[list[Candidate]] = [[Candidate(zero, root_features[i], root_logits[i])] for i in range(n)]
    frontier: list[list[_Node]] = [[] for _ in range(n)]
    counters = [itertools.count() for _ in range(n)]
    if depth_total:
        assert root_cache is not None
        for i in range(n):
            heapq.heappush(frontier[i], _Node(root_scores[i], next(counters[i]), zero, 0, root_cache[i],
                                              root_logits[i], root_features[i]))
        if isinstance(root_cache, list):
            root_cache.clear()
        del root_cache
    gain = min(r * r for r in rates) - 1 if rates else 0  # fewest new candidates an expansion adds
    per_block = max(1, chunk // max(r * r for r in rates)) if rates else max(n, 1)
    for lo in range(0, n, per_block):  # images searched together: one pass per step and depth
        _search_block(range(lo, min(n, lo + per_block)), rates, budget, expand, score, chunk, select, cands, done,
                      frontier, counters, gain)
    return cands


def _search_block(block: range, rates: Sequence[int], budget: int, expand: Expander, score: Scorer, chunk: int,
                  select: Selector | None, cands: list[list[Candidate]], done: list[tuple[Step, ...]],
                  frontier: list[list["_Node"]], counters: list, gain: int) -> None:
    """The searches of the images in ``block`` to the end (see :func:`best_first`)."""
    depth_total = len(rates)
    static = select is not None
    while True:
        active = [i for i in block if len(cands[i]) < budget and frontier[i]]
        if not active:
            break
        popped = {i: heapq.heappop(frontier[i]) for i in active}
        by_depth: dict[int, list[int]] = {}
        for i in active:
            by_depth.setdefault(popped[i].depth, []).append(i)
        for depth, images in sorted(by_depth.items()):
            r2 = rates[depth] ** 2
            last = depth + 1 == depth_total
            # static: images whose search cannot go deeper after this expansion compute only what they add
            some = [i for i in images if static and (last or budget - len(cands[i]) <= r2 - 1)]
            every = [i for i in images if i not in set(some)]
            per_chunk = max(1, chunk // r2)
            for start in range(0, len(some), per_chunk):
                part = some[start:start + per_chunk]
                _select_children(part, depth, r2, budget, popped, cands, done, score, select)  # type: ignore[arg-type]
                _keep_reachable(part, frontier, cands, budget, gain)
                for i in part:
                    del popped[i]  # the expanded parent and its cache
            for start in range(0, len(every), per_chunk):
                group = every[start:start + per_chunk]
                caches = torch.stack([popped[i].cache for i in group])  # type: ignore[misc]
                prefix = _prefix(group, popped, depth, caches.device)
                feats, logits, child_caches = expand(depth, caches, prefix)
                for g, i in enumerate(group):
                    parent = popped[i]
                    rows = slice(g * (r2 - 1), (g + 1) * (r2 - 1))  # children j >= 1; child 0 is the parent
                    states = _children(parent, depth, r2)
                    # child 0's features and logits are the parent's
                    assert parent.logits is not None and parent.features is not None
                    scores = (score([i] * r2, None, None, states, depth + 1) if static else
                              score([i] * r2, torch.cat([parent.features[None], feats[rows]]),
                                    torch.cat([parent.logits[None], logits[rows]]), states, depth + 1))
                    before, done[i] = done[i], done[i] + (Step("expand", depth),)
                    new = sorted(range(1, r2), key=lambda j: (scores[j], j))
                    for rank, j in enumerate(new[:max(0, budget - len(cands[i]))], 1):
                        row = g * (r2 - 1) + j - 1
                        # a static search ending here would have selected only these children
                        steps = before + (Step("select", depth, rank),) if static else done[i]
                        cands[i].append(Candidate(states[j], feats[row], logits[row], steps))
                    if not last:
                        assert child_caches is not None
                        for j in range(r2):
                            row = g * (r2 - 1) + j - 1
                            child_feats, child_logits = ((parent.features, parent.logits) if j == 0
                                                         else (feats[row], logits[row]))
                            heapq.heappush(frontier[i], _Node(scores[j], next(counters[i]), states[j], depth + 1,
                                                              child_caches[g * r2 + j], child_logits, child_feats))
                _keep_reachable(group, frontier, cands, budget, gain)
                for i in group:
                    del popped[i]
                del caches, feats, logits, child_caches, parent  # this pass's tensors: only what was kept survives


def _keep_reachable(images: list[int], frontier: list[list[_Node]], cands: list[list[Candidate]], budget: int,
                    gain: int) -> None:
    """Drop the frontier nodes of ``images`` that can no longer be popped, and give each kept node's cache
    its own storage (see the module docstring: memory). The search's results do not change."""
    for i in images:
        heap = frontier[i]
        missing = budget - len(cands[i])
        if gain > 0 and not any(math.isnan(node.score) for node in heap):
            pops = -(-max(missing, 0) // gain)  # at most this many more pops for this image
            if len(heap) > pops:
                heap = frontier[i] = heapq.nsmallest(pops, heap)  # a sorted list is a heap
        for node in heap:
            c = node.cache
            if c is not None and c.untyped_storage().nbytes() > c.numel() * c.element_size():  # in a pass's output
                node.cache = c.clone()


def _children(parent: _Node, depth: int, r2: int) -> list[tuple[int, ...]]:
    return [parent.state[:depth] + (j,) + parent.state[depth + 1:] for j in range(r2)]


def _prefix(group: list[int], popped: dict[int, _Node], depth: int, device: torch.device) -> Tensor:
    return torch.tensor([list(popped[i].state[:depth]) for i in group], dtype=torch.long,
                        device=device).reshape(len(group), depth)


def _select_children(group: list[int], depth: int, r2: int, budget: int, popped: dict[int, _Node],
                     cands: list[list[Candidate]], done: list[tuple[Step, ...]], score: Scorer,
                     select: Selector) -> None:
    """Expand the parents of ``group`` computing only the children that become candidates (static scores);
    nothing is pushed: after this expansion these images' searches cannot go deeper."""
    chosen: list[list[int]] = []
    for i in group:
        states = _children(popped[i], depth, r2)
        scores = score([i] * r2, None, None, states, depth + 1)
        chosen.append(sorted(range(1, r2), key=lambda j: (scores[j], j))[:budget - len(cands[i])])
    caches = torch.stack([popped[i].cache for i in group])  # type: ignore[misc]
    rows = torch.tensor([g for g, js in enumerate(chosen) for _ in js], dtype=torch.long, device=caches.device)
    phases = torch.tensor([j for js in chosen for j in js], dtype=torch.long, device=caches.device)
    feats, logits = select(depth, caches, _prefix(group, popped, depth, caches.device), rows, phases)
    row = 0
    for i, js in zip(group, chosen):
        states = _children(popped[i], depth, r2)
        before = done[i]
        done[i] = before + (Step("select", depth, len(js)),)
        for rank, j in enumerate(js, 1):
            cands[i].append(Candidate(states[j], feats[row], logits[row], before + (Step("select", depth, rank),)))
            row += 1
