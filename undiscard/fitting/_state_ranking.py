"""Ranking states greedily by an objective, streaming the stored states a chunk of images at a time.

What :func:`undiscard.fitting.calibration.calibrate` does once every state of every image is in a
:class:`~undiscard.data.store.StateStore`: state 0 first, then ``greedy`` steps, each adding the state whose
addition gives the aggregate the best :class:`~undiscard.fitting.objectives.Objective` (higher quality, then lower
tie-break, then the lower position); the states left follow by their own logits' objective (same keys).

Each step is one pass over the store: for a chunk of rows, every candidate subset is combined (``combine``)
and added to that candidate's accumulator; so memory holds one chunk of rows of every state, never all rows.
:func:`working_rows` sizes the chunks from a memory budget and the per-row sizes, independently of the
number of images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from ..data.store import StateStore
from .objectives import Objective

if TYPE_CHECKING:  # type hints only
    from ..tasks.base import StateMaps, Task

__all__ = ["Ranked", "rank_states", "working_rows"]

Combine = Callable[["StateMaps", Tensor, Tensor, list[int]], Tensor]  # (chunk maps, logits, offsets, idx) -> output


@dataclass
class Ranked:
    """positions: the ranking (0 first); curve/ties: the aggregate's (quality, tie-break) after each greedy
    step (the first: state 0 alone); own: each position's own (quality, tie-break)."""

    positions: list[int]
    curve: list[float]
    ties: list[float]
    own: list[tuple[float, float]]


def working_rows(budget_bytes: int, row_bytes: int, cap: int, even: bool = False) -> int:
    """Rows per chunk: as many as ``budget_bytes`` holds at ``row_bytes`` each, between 1 (2 when ``even``)
    and ``cap``; even when ``even`` (pairs of views stay together)."""
    rows = max(1, min(cap, budget_bytes // max(1, row_bytes)))
    if even:
        rows = max(2, rows - rows % 2)
    return rows


def rank_states(store: StateStore, chunk: Callable[[slice], tuple["StateMaps", Tensor, Tensor]], combine: Combine,
                objective: Objective, task: "Task", targets: Tensor | None, states: int, greedy: int, rows: int,
                progress: Callable[[int], None] | None = None) -> Ranked:
    """Rank ``states`` stored states (see the module docstring). ``chunk(rows)`` reads rows of the store as
    (aligned maps in float32, logits, offsets); ``targets`` are the rows' labels (None for a label-free
    objective); ``rows`` is the chunk size (even for a pair objective). ``progress(1)`` after each step."""
    n = store.rows

    def passes(candidates: list[list[int]], own: bool) -> list[tuple[float, float]]:
        accs = [objective.accumulator(task) for _ in candidates]
        for start in range(0, n, rows):
            part = slice(start, min(n, start + rows))
            t = None if targets is None else targets[part]
            if own:
                logits = store.read("logits", part)
                assert logits is not None
                for acc, idx in zip(accs, candidates):
                    acc.add(logits[:, idx[0]].float() if logits.dtype == torch.float16 else logits[:, idx[0]], t)
                continue
            maps, logits, offsets = chunk(part)
            for acc, idx in zip(accs, candidates):
                acc.add(combine(maps, logits, offsets, idx), t)
        return [a.result() for a in accs]

    own = passes([[r] for r in range(states)], own=True)
    chosen, curve, ties = [0], [own[0][0]], [own[0][1]]
    left = list(range(1, states))
    for _ in range(min(greedy, states - 1)):
        scores = passes([chosen + [r] for r in left], own=False)
        k = min(range(len(left)), key=lambda i: (-scores[i][0], scores[i][1], left[i]))
        chosen.append(left.pop(k))
        curve.append(scores[k][0])
        ties.append(scores[k][1])
        if progress is not None:
            progress(1)
    chosen += sorted(left, key=lambda r: (-own[r][0], own[r][1], r))
    return Ranked(chosen, curve, ties, own)
