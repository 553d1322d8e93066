"""Unit selection and the geometry of states: how many there are, and where each one looks (DESIGN §1).

Pure functions of the discovered :class:`~undiscard.discovery.Unit` list, with no model or tensor state.
This is the one place that multiplies rates together:

- :func:`num_states`: ``Π R_l²`` over the searched units (the size of the state space);
- :func:`total_rate`: ``Π R_l`` over spatial units — between the first searched unit's input grid and
  the feature map (:func:`feature_stride`, what alignment divides offsets by), or over the searched
  units only (:func:`offsets_per_axis`, the number of distinct offsets per axis an attention aggregator
  encodes);
- :func:`state_offset`: the mixed-radix offset ``Σ_l (dy_l, dx_l) · Π_{l'<l} R_l'`` of a state, in pixels
  of the first searched unit's input grid (side units, ``spatial=False``, add nothing).

:func:`select_units` turns a ``units=`` selector into indices; the default searches every spatial unit
but the first and the last (all of them when there are fewer than three), as the paper found both
better and cheaper.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .discovery import Unit
from .errors import PhaseError

__all__ = ["UnitSelector", "default_search_units", "select_units", "num_states", "total_rate",
           "offsets_per_axis", "feature_stride", "feature_grid", "state_offset", "state_offsets"]

UnitSelector = Sequence[int | str] | int | str | None


def default_search_units(units: Sequence[Unit]) -> list[int]:
    """Indices of the spatial units but the first and the last (all of them when fewer than three)."""
    spatial = [i for i, u in enumerate(units) if u.spatial]
    return spatial if len(spatial) < 3 else spatial[1:-1]


def select_units(units: Sequence[Unit], selector: UnitSelector) -> list[int]:
    """Sorted indices into ``units`` chosen by ``selector``: unit indices (negative ones count from the
    end) and/or names, one or several; None for :func:`default_search_units`. A bad selector is one
    :class:`~undiscard.errors.PhaseError` naming the model's units."""
    if selector is None:
        return default_search_units(units)
    if isinstance(selector, (str, int)):
        selector = [selector]
    chosen: list[int] = []
    names = [u.name for u in units]
    for s in selector:
        if isinstance(s, bool):
            raise PhaseError(f"unit selector must be an index or a name, got {s!r}")
        if isinstance(s, int):
            if not -len(units) <= s < len(units):
                raise PhaseError(f"unit index {s} out of range: the model has {len(units)} units ({', '.join(names)})")
            idx = s % len(units)
        elif s in names:
            idx = names.index(s)
        else:
            raise PhaseError(f"unknown unit {s!r}: the model's units are {', '.join(names) or '(none)'}")
        if idx in chosen:
            raise PhaseError(f"unit {names[idx]!r} selected twice")
        chosen.append(idx)
    return sorted(chosen)


def _product(values: Sequence[int]) -> int:
    total = 1
    for v in values:
        total *= v
    return total


def num_states(units: Sequence[Unit]) -> int:
    """Number of states of ``units`` searched together: ``Π R_l²`` (1 for no units)."""
    return _product([u.num_phases for u in units])


def total_rate(units: Sequence[Unit]) -> int:
    """``Π R_l`` over the spatial units of ``units``: how much finer the first one's input grid is than
    the last one's output grid, per axis."""
    return _product([u.rate for u in units if u.spatial])


def offsets_per_axis(search_units: Sequence[Unit]) -> int:
    """T, the number of distinct state offsets per axis (offsets lie in ``[0, T)``)."""
    return total_rate(search_units)


def feature_stride(units: Sequence[Unit], searched: Sequence[int]) -> int:
    """Total stride from the first searched unit's input grid to the feature map: the rates of every
    spatial unit from the first searched one on, searched or not (1 when none is searched)."""
    return total_rate(units[searched[0]:]) if searched else 1


def feature_grid(units: Sequence[Unit]) -> tuple[int, int] | None:
    """(h, w) of the feature map: the output size of the last spatial unit (None without one). Token
    layouts use it to tell the grid tokens from the prefix tokens."""
    spatial = [u for u in units if u.spatial]
    return spatial[-1].out_size if spatial else None


def state_offset(state: Sequence[int], rates: Sequence[int], spatial: Sequence[bool] | None = None) -> tuple[int, int]:
    """Mixed-radix offset (dy, dx) of a state, in pixels of the first searched unit's input grid.

    ``(dy, dx) = Σ_l (dy_l, dx_l) * Π_{l' < l} R_l'`` over spatial units (side units add nothing).
    """
    dy = dx = 0
    scale = 1
    for l, (s, r) in enumerate(zip(state, rates)):
        if spatial is not None and not spatial[l]:
            continue
        dy += (s // r) * scale
        dx += (s % r) * scale
        scale *= r
    return dy, dx


def state_offsets(states: Sequence[Sequence[tuple[int, ...]]], search_units: Sequence[Unit],
                  device: torch.device | str | None = None) -> Tensor:
    """(N, B, 2) long tensor of the offsets (dy, dx) of N images' B states each (:func:`state_offset`)."""
    rates, spatial = [u.rate for u in search_units], [u.spatial for u in search_units]
    return torch.tensor([[state_offset(s, rates, spatial) for s in per] for per in states], dtype=torch.long,
                        device=device)
