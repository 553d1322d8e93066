"""Exact best-first search over states, batched across images (DESIGN §2).

Per image: the root (all phases 0) is the first candidate and is pushed. While there are fewer than
``budget`` candidates and the frontier is not empty, the best-scored node (lowest score; ties by
insertion order) is popped and all R² children at its next unit are computed in one pass. Child 0 equals
the parent's state: it is pushed (so deeper units can still vary; its logits are the parent's) but is not a
new candidate, and it is not recomputed past the next unit's cut. Children
j >= 1 join the candidates best-scored first (ties by j) until the budget is reached. Every child that
still has an undecided unit is pushed, in order of j.

Every image has its own search, but each step pops one node per unfinished image and runs all those
expansions together, one batched pass per unit depth (chunked to bound memory).

The search knows nothing about models or tasks: nodes are scored by a ``score`` function (a criterion
of :mod:`undiscard.criteria`) and expanded by an ``expand`` function (:meth:`undiscard.engine.Engine.expand`).
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from .geometry import state_offset

__all__ = ["Candidate", "state_offset", "best_first", "Expander", "Scorer"]


def __getattr__(name: str) -> tuple[str, ...]:
    if name == "CRITERIA":  # kept importable from here: the criteria live in undiscard.criteria
        from . import criteria

        return criteria.CRITERIA
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class Candidate:
    """A chosen state of one image: its phases, native features and logits."""

    state: tuple[int, ...]
    features: Tensor
    logits: Tensor
    expansions: tuple[int, ...] = ()  # depths of this image's expansions up to the one that found it (cost)


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
# scorer(images, features, logits, states, depth) -> one score per row (lower = expanded first); row r
# belongs to image images[r]
Scorer = Callable[[list[int], Tensor, Tensor, list[tuple[int, ...]], int], list[float]]


def best_first(root_features: Tensor, root_logits: Tensor, root_cache: Tensor | None, rates: Sequence[int],
               budget: int, expand: Expander, score: Scorer, chunk: int = 256) -> list[list[Candidate]]:
    """Run the search for N images at once; return each image's candidates in selection order."""
    n = root_features.shape[0]
    depth_total = len(rates)
    zero = tuple([0] * depth_total)
    root_scores = score(list(range(n)), root_features, root_logits, [zero] * n, 0)
    done: list[tuple[int, ...]] = [() for _ in range(n)]  # depths expanded so far, per image
    cands: list[list[Candidate]] = [[Candidate(zero, root_features[i], root_logits[i])] for i in range(n)]
    frontier: list[list[_Node]] = [[] for _ in range(n)]
    counters = [itertools.count() for _ in range(n)]
    if depth_total:
        assert root_cache is not None
        for i in range(n):
            heapq.heappush(frontier[i], _Node(root_scores[i], next(counters[i]), zero, 0, root_cache[i],
                                              root_logits[i], root_features[i]))
    while True:
        active = [i for i in range(n) if len(cands[i]) < budget and frontier[i]]
        if not active:
            break
        popped = {i: heapq.heappop(frontier[i]) for i in active}
        by_depth: dict[int, list[int]] = {}
        for i in active:
            by_depth.setdefault(popped[i].depth, []).append(i)
        for depth, images in sorted(by_depth.items()):
            r2 = rates[depth] ** 2
            per_chunk = max(1, chunk // r2)
            for start in range(0, len(images), per_chunk):
                group = images[start:start + per_chunk]
                caches = torch.stack([popped[i].cache for i in group])  # type: ignore[misc]
                prefix = torch.tensor([list(popped[i].state[:depth]) for i in group], dtype=torch.long,
                                      device=caches.device).reshape(len(group), depth)
                feats, logits, child_caches = expand(depth, caches, prefix)
                for g, i in enumerate(group):
                    parent = popped[i]
                    rows = slice(g * (r2 - 1), (g + 1) * (r2 - 1))  # children j >= 1; child 0 is the parent
                    states = [parent.state[:depth] + (j,) + parent.state[depth + 1:] for j in range(r2)]
                    # child 0's features and logits are the parent's
                    assert parent.logits is not None and parent.features is not None
                    scores = score([i] * r2, torch.cat([parent.features[None], feats[rows]]),
                                   torch.cat([parent.logits[None], logits[rows]]), states, depth + 1)
                    done[i] = done[i] + (depth,)
                    new = sorted(range(1, r2), key=lambda j: (scores[j], j))
                    for j in new[:max(0, budget - len(cands[i]))]:
                        row = g * (r2 - 1) + j - 1
                        cands[i].append(Candidate(states[j], feats[row], logits[row], done[i]))
                    if depth + 1 < depth_total:
                        assert child_caches is not None
                        for j in range(r2):
                            row = g * (r2 - 1) + j - 1
                            child_feats, child_logits = ((parent.features, parent.logits) if j == 0
                                                         else (feats[row], logits[row]))
                            heapq.heappush(frontier[i], _Node(scores[j], next(counters[i]), states[j], depth + 1,
                                                              child_caches[g * r2 + j], child_logits, child_feats))
    return cands
