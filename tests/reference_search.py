"""An independent replay of the search's rule, for tests: it never calls the library's search.

The rule, written out from its definition (the library documents it in ``undiscard.search._best_first``):

- a state's depth is one more than the index of its last non-zero phase (0 for the all-zero root); its
  successors change one unit u >= depth to a phase j >= 1, listed unit by unit, phase by phase;
- the prior ranks successors coarse to fine: (the largest sub-grid level over the state's units, dy² + dx²
  of its mixed-radix offset), ties in list order. The level of phase (dy, dx) of a rate-R unit (R a
  power of two) is the smallest k with dy and dx multiples of R / 2^k; any other rate: 1 for every
  phase but 0;
- a *static* order (scores known without outputs): a heap of (score, insertion order) starts with the
  root; popping a state takes it and pushes all its successors in list order;
- a *lazy* search (scores read from outputs): the heap holds evaluated states keyed (own score,
  insertion order); popping a state evaluates its next successor in prior order, pushes it (when it has
  successors) and then pushes the popped state back while it has successors left.
"""
from __future__ import annotations

import heapq
import itertools
from typing import Callable, Sequence

State = tuple[int, ...]


def ref_offset(state: State, rates: Sequence[int], spatial: Sequence[bool] | None = None) -> tuple[int, int]:
    """offset = Σ_l (dy_l, dx_l) · Π_{l'<l} R_l' over spatial units."""
    spatial = [True] * len(rates) if spatial is None else spatial
    dy = dx = 0
    place = 1
    for s, r, sp in zip(state, rates, spatial):
        if not sp:
            continue
        dy, dx = dy + place * (s // r), dx + place * (s % r)
        place *= r
    return dy, dx


def ref_level(phase: int, rate: int) -> int:
    dy, dx = divmod(phase, rate)
    if dy == 0 and dx == 0:
        return 0
    if rate not in (2, 4, 8, 16, 32, 64):
        return 1
    k = 1
    while dy % (rate // 2 ** k) or dx % (rate // 2 ** k):
        k += 1
    return k


def ref_grid(state: State, rates: Sequence[int], spatial: Sequence[bool] | None = None) -> tuple[int, int]:
    dy, dx = ref_offset(state, rates, spatial)
    return max(ref_level(s, r) for s, r in zip(state, rates)), dy * dy + dx * dx


def ref_depth(state: State) -> int:
    return max((d + 1 for d, s in enumerate(state) if s), default=0)


def ref_successors(state: State, rates: Sequence[int]) -> list[State]:
    return [state[:u] + (j,) + state[u + 1:] for u in range(ref_depth(state), len(rates)) for j in range(1, rates[u] ** 2)]


def ref_static(score: Callable[[State], object], rates: Sequence[int], budget: int) -> list[State]:
    """The first ``budget`` states of the static order of ``score``."""
    order = itertools.count()
    root: State = (0,) * len(rates)
    heap: list = [((), next(order), root)]
    chosen: list[State] = []
    while heap and len(chosen) < budget:
        _, _, state = heapq.heappop(heap)
        chosen.append(state)
        for kid in ref_successors(state, rates):
            heapq.heappush(heap, (score(kid), next(order), kid))
    return chosen


def ref_lazy(score: Callable[[State], float], rates: Sequence[int], budget: int,
             prior: Callable[[State], object] | None = None) -> list[State]:
    """The first ``budget`` states a lazy search with output scores ``score`` evaluates (prior: grid)."""
    prior = prior or (lambda s: ref_grid(s, rates))
    order = itertools.count()
    root: State = (0,) * len(rates)

    def moves(state: State) -> list[State]:
        kids = ref_successors(state, rates)
        return [kids[k] for k in sorted(range(len(kids)), key=lambda k: (prior(kids[k]), k))]

    chosen = [root]
    heap: list = [(score(root), next(order), root, moves(root), 0)] if rates else []
    while heap and len(chosen) < budget:
        s_score, _, state, kids, nxt = heapq.heappop(heap)
        new = kids[nxt]
        chosen.append(new)
        if ref_depth(new) < len(rates):
            heapq.heappush(heap, (score(new), next(order), new, moves(new), 0))
        if nxt + 1 < len(kids):
            heapq.heappush(heap, (s_score, next(order), state, kids, nxt + 1))
    return chosen
