"""Best-first search over states whose cost is its budget, batched across images.

*The tree.* A state is one phase per searched unit; its *depth* is one more than the index of its last
non-zero unit (0 for the root, the all-zero state). The *successors* of a state of depth d change one
unit u >= d to a phase j >= 1 (the units after u stay at 0). Every state but the root is the successor of
exactly one state, its *parent* (itself with its last non-zero unit set to 0), so no state is reached
twice.

*The budget counts evaluated states.* A search of budget B evaluates at most B states per image, the
root included, and every state it evaluates is a candidate, in the order evaluated. A state is evaluated
from the cut before the unit its parent's move changes, on the parent's activation cached there; so it
costs at most one plain forward, from that unit on, and the search at most B (a split whose head re-runs
the network, :mod:`undiscard.analysis._hook_split`, costs more per state; ``last_cost`` counts it). A criterion
that scores a state by its outputs only ever scores evaluated states.

*Priors.* The successors of a state are tried in the order of a free *prior* (a score of the successor
state that needs no outputs, lower first; ties by unit, then phase): the criterion's
(:meth:`undiscard.search.criteria.Criterion.prior`, coarse-to-fine by default).

Two searches follow from this:

- :func:`static_order`, for a criterion whose scores need no outputs (``offset``, ``grid``, ``random``):
  the states in order of score, each after its parent — a heap starts with the root, and popping a state
  emits it and pushes all its successors with their scores (ties by insertion order; successors pushed
  unit by unit, phase by phase). The first B of that order are the same for every image, so they are
  evaluated as a list (:mod:`undiscard.search._candidates`).
- :func:`lazy_best_first` ("partial expansion"), for a criterion that scores evaluated states by their
  outputs (``entropy``, ``learned``, custom scorers): the frontier holds evaluated states, keyed by their
  own scores (ties by insertion order). Popping a state evaluates its next successor in prior order; the
  new state is a candidate and is pushed with its own score, then the popped state is pushed back (with
  its own score, a new insertion order) while it has successors left. A state with no successors (depth
  = the number of units) is not pushed.

*Batching and memory.* Every image has its own search; each step pops one node per unfinished image and
evaluates all those successors together, grouped by the cut they start from, in passes of at most
``chunk`` rows. A node keeps its activations only at the cuts its remaining successors start from (shared
with its parent where the cut is the parent's own). An image missing m candidates pops at most m more
nodes, and a node ranked below the m-th of its frontier can never be popped (each pop moves it up one
rank at most): those are dropped after every step. The states chosen do not depend on the batch, the
chunk or the budget: the first b candidates of a budget-B search are those of a budget-b search.

The search knows nothing about models or tasks: states are scored by a ``score`` function (a criterion
of :mod:`undiscard.search.criteria`) and evaluated by an ``evaluate`` function
(:meth:`undiscard.search._engine.Engine.evaluate`).
"""
from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..analysis.geometry import state_offset

__all__ = ["Candidate", "State", "state_offset", "state_depth", "successors", "static_order", "lazy_best_first",
           "Evaluator", "Scorer", "Prior"]

State = tuple[int, ...]


@dataclass
class Candidate:
    """An evaluated state of one image: its phases, native features and logits, the chain segment its
    evaluation ran from (None: the root, the original model's pass), and the FLOPs its criterion ran to
    score it (where the criterion counts them: the ``learned`` criterion's attention scores). A state is
    scored when it is pushed: when it has successors and is not its search's last."""

    state: State
    features: Tensor
    logits: Tensor
    segment: int | None = None
    score_flops: float = 0.0
    extra_flops: float = 0.0  # what its evaluation ran beyond the network from ``segment`` on (an APS pass's dense layers)
    adaptive: bool = False  # selected during its own pass (``criterion="aps"``): its phases were not known before


# evaluate(segment, inputs (M, ...), states (M, L) long, capture) -> (features (M, ...), logits (M, ...),
# {segment in capture: (M, ...) activations at that segment's input})
Evaluator = Callable[[int, Tensor, Tensor, Sequence[int]], tuple[Tensor, Tensor, dict[int, Tensor]]]
# score(images, features, logits, states, depth) -> (one score per row (lower first), FLOPs it ran to score
# them, 0 where not counted); row r belongs to image images[r]; every state has this depth
Scorer = Callable[[list[int], Tensor, Tensor, list[State], int], tuple[list[float], float]]
# prior(states) -> one free score per state (lower first)
Prior = Callable[[list[State]], list[float]]


def state_depth(state: Sequence[int]) -> int:
    """One more than the index of the last non-zero phase of ``state`` (0 for the all-zero state)."""
    return next((d + 1 for d in range(len(state) - 1, -1, -1) if state[d]), 0)


def successors(state: State, rates: Sequence[int]) -> list[tuple[int, int, State]]:
    """(unit u, phase j, successor) for every successor of ``state``: u from its depth on, j >= 1, in that order."""
    return [(u, j, state[:u] + (j,) + state[u + 1:])
            for u in range(state_depth(state), len(rates)) for j in range(1, rates[u] * rates[u])]


def _key(score: float) -> float:
    return math.inf if math.isnan(score) else score  # NaN (non-finite logits) ranks last, never breaks the heap


def static_order(score: Callable[[list[State], int], list[float]], rates: Sequence[int], budget: int) -> list[State]:
    """The first ``budget`` states in order of ``score(states, depth)`` (lower first), each after its parent
    (see the module docstring); fewer when the states run out."""
    zero: State = (0,) * len(rates)
    counter = itertools.count()
    heap: list[tuple[float, int, State]] = [(0.0, next(counter), zero)]
    out: list[State] = []
    while heap and len(out) < budget:
        state = heapq.heappop(heap)[2]
        out.append(state)
        moves = successors(state, rates)
        for u in sorted({m[0] for m in moves}):
            kids = [m[2] for m in moves if m[0] == u]
            for kid, s in zip(kids, score(kids, u + 1)):
                heapq.heappush(heap, (_key(s), next(counter), kid))
    return out


@dataclass(order=True)
class _Node:
    key: float
    order: int
    state: State = field(compare=False)
    moves: list[tuple[int, int, State]] = field(compare=False)  # successors left, in prior order
    caches: dict[int, Tensor] = field(compare=False)  # segment -> this state's activation at its input
    next: int = field(default=0, compare=False)


class _Moves:
    """Each state's successors in prior order, computed once per search (states repeat across images)."""

    def __init__(self, rates: Sequence[int], prior: Prior):
        self.rates, self.prior, self.known = rates, prior, {}

    def __call__(self, state: State) -> list[tuple[int, int, State]]:
        if state not in self.known:
            moves = successors(state, self.rates)
            p = self.prior([m[2] for m in moves])
            self.known[state] = [moves[k] for k in sorted(range(len(moves)), key=lambda k: (_key(p[k]), k))]
        return self.known[state]


def _needed(moves: list[tuple[int, int, State]], start: int, cuts: Sequence[int]) -> set[int]:
    """The segments the moves from ``start`` on are evaluated from."""
    return {cuts[m[0]] for m in moves[start:]}


def lazy_best_first(root_features: Tensor, root_logits: Tensor, root_caches: dict[int, Tensor], cuts: Sequence[int],
                    rates: Sequence[int], budget: int, evaluate: Evaluator, score: Scorer, prior: Prior,
                    chunk: int = 256) -> list[list[Candidate]]:
    """Run the lazy search for N images at once; return each image's candidates in evaluation order.

    ``root_caches``: per segment that starts a searched unit's cut (``cuts``, one segment per searched
    unit), the root's activations there (N, ...). ``chunk``: most rows per pass."""
    n = root_features.shape[0]
    depth_total = len(rates)
    zero: State = (0,) * depth_total
    cands = [[Candidate(zero, root_features[i], root_logits[i])] for i in range(n)]
    if budget <= 1 or not depth_total or not n:
        return cands
    moves_of = _Moves(rates, prior)
    root_moves = moves_of(zero)
    root_scores, flops = score(list(range(n)), root_features, root_logits, [zero] * n, 0)
    for per in cands:
        per[0].score_flops = flops / n
    counters = [itertools.count() for _ in range(n)]
    segments = _needed(root_moves, 0, cuts)
    frontier = [[_Node(_key(root_scores[i]), next(counters[i]), zero, root_moves,
                       {k: root_caches[k][i] for k in segments})] for i in range(n)]
    while True:
        active = [i for i in range(n) if len(cands[i]) < budget and frontier[i]]
        if not active:
            break
        popped: list[tuple[int, _Node, int, State]] = []  # (image, node, unit moved, new state)
        for i in active:
            node = heapq.heappop(frontier[i])
            u, _, state = node.moves[node.next]
            node.next += 1
            popped.append((i, node, u, state))
        by_segment: dict[int, list[tuple[int, _Node, int, State]]] = {}
        for row in popped:
            by_segment.setdefault(cuts[row[2]], []).append(row)
        for k in sorted(by_segment):
            group = by_segment[k]
            for start in range(0, len(group), chunk):
                _evaluate_rows(group[start:start + chunk], k, cuts, budget, evaluate, score, moves_of, cands,
                               frontier, counters)
        for i, node, _, _ in popped:  # each popped state goes back while it has successors left
            if node.next < len(node.moves) and len(cands[i]) < budget:
                left = _needed(node.moves, node.next, cuts)
                node.caches = {k: c for k, c in node.caches.items() if k in left}
                node.order = next(counters[i])
                heapq.heappush(frontier[i], node)
        del popped, node
        for i in active:  # drop the nodes that can never be popped (see the module docstring)
            missing = budget - len(cands[i])
            if len(frontier[i]) > missing:
                frontier[i] = heapq.nsmallest(missing, frontier[i])  # a sorted list is a heap
    return cands


def _evaluate_rows(rows: list[tuple[int, _Node, int, State]], segment: int, cuts: Sequence[int], budget: int,
                   evaluate: Evaluator, score: Scorer, moves_of: _Moves, cands: list[list[Candidate]],
                   frontier: list[list[_Node]], counters: list) -> None:
    """Evaluate one pass of new states (all from ``segment``), add them as candidates, and push those that
    can still be popped, with their scores."""
    depth_total = len(cuts)
    # a new state is pushed when it has successors and its image needs more than this candidate
    pushed = [u + 1 < depth_total and len(cands[i]) + 1 < budget for i, _, u, _ in rows]
    capture = sorted({cuts[v] for (_, _, u, _), p in zip(rows, pushed) if p
                      for v in range(u + 1, depth_total) if cuts[v] > segment})
    inputs = torch.stack([node.caches[segment] for _, node, _, _ in rows])
    states = torch.tensor([s for _, _, _, s in rows], dtype=torch.long, device=inputs.device)
    feats, logits, captured = evaluate(segment, inputs, states, capture)
    del inputs
    scores: dict[int, float] = {}
    flops: dict[int, float] = {}
    by_depth: dict[int, list[int]] = {}
    for r, ((_, _, u, _), p) in enumerate(zip(rows, pushed)):
        if p:
            by_depth.setdefault(u + 1, []).append(r)
    for depth, which in sorted(by_depth.items()):
        idx = torch.tensor(which, device=feats.device)
        got, spent = score([rows[r][0] for r in which], feats[idx], logits[idx], [rows[r][3] for r in which], depth)
        scores.update(zip(which, got))
        flops.update((r, spent / len(which)) for r in which)
    for r, (i, parent, u, state) in enumerate(rows):
        cands[i].append(Candidate(state, feats[r], logits[r], segment, flops.get(r, 0.0)))
        if not pushed[r]:
            continue
        moves = moves_of(state)
        caches = {k: (parent.caches[segment] if k == segment else captured[k][r].clone())
                  for k in _needed(moves, 0, cuts)}
        heapq.heappush(frontier[i], _Node(_key(scores[r]), next(counters[i]), state, moves, caches))
