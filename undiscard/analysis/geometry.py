"""Unit selection and the geometry of states: how many there are, and where each one looks (docs/semantics.md, "States and offsets").

Pure functions of the discovered :class:`~undiscard.analysis.discovery.Unit` list, with no model or tensor state.
This is the one place that multiplies rates together:

- :func:`num_states`: ``Π R_l²`` over the searched units (the size of the state space);
- :func:`total_rate`: ``Π R_l`` over spatial units — between the first searched unit's input grid and
  the feature map (:func:`feature_stride`, what alignment divides offsets by), or over the searched
  units only (:func:`offsets_per_axis`, the number of distinct offsets per axis an attention aggregator
  encodes);
- :func:`output_stride`: the stride from the first searched unit's input grid to a dense output map
  (segmentation logits, usually upsampled to the input's resolution): a :class:`~fractions.Fraction`,
  ``1 / Π R`` over the spatial units before the first searched one for an output at input resolution;
- :func:`state_offset`: the mixed-radix offset ``Σ_l (dy_l, dx_l) · Π_{l'<l} R_l'`` of a state, in pixels
  of the first searched unit's input grid (side units, ``spatial=False``, add nothing);
  :func:`moved_offsets` keeps only the terms of chosen units (those that move a dense output,
  :mod:`undiscard.tasks._dense_alignment`), read back from the offsets' mixed-radix digits;
- :func:`phase_level`: how coarse a phase of one unit is — the sub-grid (half, quarter, ... of the rate)
  it lies on first; :func:`grid_rank` of a state, its coarse-to-fine rank (the ``grid`` order).

:func:`select_units` turns a ``units=`` selector into indices; the default searches every spatial unit
but the first and the last (all of them when there are fewer than three), as the paper found both
better and cheaper.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Sequence

import torch
from torch import Tensor

from ..errors import PhaseError
from .discovery import Unit

__all__ = ["UnitSelector", "default_search_units", "select_units", "num_states", "total_rate",
           "offsets_per_axis", "feature_stride", "feature_grid", "output_stride", "state_offset", "state_offsets",
           "moved_offsets", "phase_level", "grid_rank"]

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


def feature_stride(units: Sequence[Unit], searched: Sequence[int],
                   output_size: tuple[int, int] | None = None) -> int | Fraction:
    """Total stride from the first searched unit's input grid to the feature map: the rates of every
    spatial unit from the first searched one on, searched or not (1 when none is searched). With
    ``output_size``, the features are the network's dense output of that (h, w) (a split at the output):
    :func:`output_stride` instead, where it is defined."""
    if output_size is not None:
        stride = output_stride(units, searched, output_size)
        if stride is not None:
            return stride
    return total_rate(units[searched[0]:]) if searched else 1


def feature_grid(units: Sequence[Unit]) -> tuple[int, int] | None:
    """(h, w) of the feature map: the output size of the last spatial unit (None without one). Token
    layouts use it to tell the grid tokens from the prefix tokens."""
    spatial = [u for u in units if u.spatial]
    return spatial[-1].out_size if spatial else None


def _input_stride(input_size: int, size: int) -> Fraction | None:
    """How many input pixels one pixel of a map of ``size`` spans along an axis of ``input_size`` pixels:
    1 at input resolution; k for a map at stride k (``ceil(input_size / k) == size``, as strided layers with
    'same'-style padding give); 1/k for a map k times finer; None for any other size."""
    if size == input_size:
        return Fraction(1)
    if 0 < size < input_size:
        k = round(input_size / size)
        return Fraction(k) if k > 1 and -(-input_size // k) == size else None
    return Fraction(1, size // input_size) if size > 0 and size % input_size == 0 else None


def output_stride(units: Sequence[Unit], searched: Sequence[int], size: tuple[int, int]) -> Fraction | None:
    """Stride from the first searched unit's input grid to a dense output map of ``size`` (h, w) — what the
    states' offsets (in pixels of that grid) are divided by to be in output pixels.

    The grid is at stride ``P = Π R`` of the network's input (the spatial units before the first searched
    one); the output at stride ``Q`` of it (1 at input resolution, the usual segmentation output; ``k`` for
    a map ``ceil(input / k)`` pixels high); the stride is ``Q / P``. The network's input size is the first
    spatial unit's input size (:attr:`~undiscard.analysis.discovery.Unit.in_size`). A stride below 1 means an offset
    is a whole number of output pixels times ``1 / stride`` (an output at input resolution: offset x P); a
    stride above 1 means offsets in fractions of an output cell. 1 when no unit is searched; None when the
    output is at no such stride of the input (or the two axes disagree): it cannot be aligned.
    """
    if not searched:
        return Fraction(1)
    spatial = [u for u in units if u.spatial]
    if not spatial:
        return Fraction(1)
    grid = Fraction(total_rate(units[:searched[0]]))
    strides = {_input_stride(n, s) for n, s in zip(spatial[0].in_size, size)}
    if len(strides) != 1 or None in strides:
        return None
    return strides.pop() / grid


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


def moved_offsets(offsets: Tensor, search_units: Sequence[Unit], moves: Sequence[bool]) -> Tensor:
    """The offsets (N, B, 2) of states with only the terms of the units where ``moves`` is True:
    ``Σ_l moves_l · (dy_l, dx_l) · Π_{l'<l} R_l'``. Each unit's digit is read back from the offset (a
    mixed-radix number with digits ``0 <= d_l < R_l`` over the spatial units; side units have none), so this
    needs only the offsets :func:`state_offsets` made. All True: the offsets themselves."""
    if all(m for u, m in zip(search_units, moves) if u.spatial):
        return offsets
    out = torch.zeros_like(offsets)
    scale = 1
    for unit, moves_it in zip(search_units, moves):
        if not unit.spatial:
            continue
        if moves_it:
            out = out + torch.div(offsets, scale, rounding_mode="floor").remainder(unit.rate) * scale
        scale *= unit.rate
    return out


def phase_level(phase: int, rate: int) -> int:
    """The sub-grid level of ``phase`` (dy, dx) = divmod(phase, rate) of a rate-R unit: the smallest k with dy
    and dx multiples of R / 2^k for R a power of two (0 for phase 0; 1 for the half-rate offsets (0, R/2),
    (R/2, 0), (R/2, R/2); 2 for the quarter-rate ones; ...; log2 R for the finest). For any other rate every
    phase but 0 is level 1 (no sub-grid: small offsets first)."""
    dy, dx = divmod(phase, rate)
    if not dy and not dx:
        return 0
    if rate & (rate - 1):
        return 1
    level, step = 1, rate // 2
    while dy % step or dx % step:
        level, step = level + 1, step // 2
    return level


def grid_rank(state: Sequence[int], rates: Sequence[int], spatial: Sequence[bool] | None = None) -> int:
    """The coarse-to-fine rank of a state (lower first): its units' largest :func:`phase_level`, then its
    offset's squared length dy² + dx² (:func:`state_offset`), as one number ``level * 2T² + dy² + dx²``
    (offsets lie in ``[0, T)`` per axis, ``T = Π R`` over spatial units). Sorting by it gives coarse-to-fine
    sub-grids — a rate-16 unit: the half-patch offsets, then the quarter-patch ones, ... — and small
    offsets first within a level; for units of rate 2 (or of rates that are not powers of two) it is the
    order of offsets."""
    dy, dx = state_offset(state, rates, spatial)
    spatial = spatial if spatial is not None else [True] * len(rates)
    total = _product([r for r, sp in zip(rates, spatial) if sp])
    level = max((phase_level(s, r) for s, r in zip(state, rates)), default=0)
    return level * 2 * total * total + dy * dy + dx * dx
