"""A model as ``features`` (a chain of stages) and ``head``: the :class:`Split` data type and its feature layouts.

How a split is found for a model (the registry, timm, graph capture, the hook fallback) is
:mod:`undiscard.analysis.split`; this module holds only what every strategy builds and what the search and
the aggregation read: the stages, the head, and how native features map to (N, C, h, w) maps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..errors import UndiscardError
from .outputs import OutputForm

__all__ = ["Split", "SplitError", "Stage", "to_map", "from_map"]

Stage = Callable[[Tensor], Tensor]


class SplitError(UndiscardError):
    """No split of the model into features and head reproduces it (budget 1 still works)."""


@dataclass
class Split:
    stages: list[Stage]
    head: Callable[[Tensor], Tensor]
    layout: str = "nchw"
    method: str = ""
    grid: tuple[int, int] | None = None  # (h, w) of a ``tokens`` layout's map (see :func:`to_map`)
    alignable: bool = False  # the maps are a real grid with more than one cell (set by settle)
    map_size: tuple[int, int] | None = None  # (h, w) of the output, for the output split (output_split)
    form: OutputForm | None = None  # the network's output type, to give results back in (outputs.present)

    def features(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x

    def settle(self, features: Tensor, grid: tuple[int, int] | None = None) -> None:
        """Fix the layout from one batch of native ``features`` (N, ...) and the feature ``grid`` (the last
        spatial unit's output size): an ``nchw`` split with (N, L, C) features is ``tokens``, with (N, C)
        features ``vector``. Only real grids are aligned: NCHW/NHWC maps, and token sequences whose grid
        is known, with more than one cell."""
        if self.layout == "nchw" and features.dim() == 3:
            self.layout = "tokens"
        elif self.layout == "nchw" and features.dim() == 2:
            self.layout = "vector"
        self.grid = grid
        maps, _ = to_map(features, self.layout, grid)
        gridded = self.layout in ("nchw", "nhwc") or (self.layout == "tokens" and grid is not None
                                                      and tuple(maps.shape[-2:]) == tuple(grid))
        self.alignable = gridded and maps.shape[-1] * maps.shape[-2] > 1

    def to_maps(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        """Native features (M, ...) -> maps (M, C, h, w) and prefix tokens (M, P, C) or None (:func:`to_map`)."""
        return to_map(features, self.layout, self.grid)

    def from_maps(self, maps: Tensor, extra: Tensor | None) -> Tensor:
        """Maps (M, C, h, w) and prefix tokens back to native features (:func:`from_map`)."""
        return from_map(maps, extra, self.layout)


def to_map(f: Tensor, layout: str, grid: tuple[int, int] | None = None) -> tuple[Tensor, Tensor | None]:
    """Native features -> ``(maps, extra)``: maps (N, C, h, w) that can be aligned, and ``extra``
    (N, P, C) prefix tokens (or None) that are aggregated with the same weights but never shifted.

    ``tokens`` layouts need ``grid`` (h, w) with h*w <= number of tokens; the first L - h*w tokens are the
    prefix. Without a grid, tokens are treated as a (N, C, 1, L) map that is never aligned.
    """
    if layout == "nchw":
        return f, None
    if layout == "nhwc":
        return f.permute(0, 3, 1, 2), None
    if layout == "vector":
        return f[:, :, None, None], None
    if layout == "tokens":
        n, length, c = f.shape
        if grid is None or grid[0] * grid[1] > length:
            return f.transpose(1, 2)[:, :, None, :], None
        p = length - grid[0] * grid[1]
        maps = f[:, p:].transpose(1, 2).reshape(n, c, grid[0], grid[1])
        return maps, (f[:, :p] if p else None)
    raise UndiscardError(f"unknown feature layout {layout!r}")


def from_map(maps: Tensor, extra: Tensor | None, layout: str) -> Tensor:
    """Inverse of :func:`to_map`."""
    if layout == "nchw":
        return maps
    if layout == "nhwc":
        return maps.permute(0, 2, 3, 1)
    if layout == "vector":
        return maps[:, :, 0, 0]
    if layout == "tokens":
        tokens = maps.flatten(2).transpose(1, 2)
        return tokens if extra is None else torch.cat([extra, tokens], dim=1)
    raise UndiscardError(f"unknown feature layout {layout!r}")
