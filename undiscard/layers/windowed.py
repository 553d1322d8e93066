"""The shared machinery of sliding-window layers (convolutions, pooling, blur pooling).

Every such layer is modelled in three steps, each taken from the layer itself:

1. ``prepad``: the explicit padding the layer applies before its functional op (TF-"same" amounts
   computed from the input size, a ``ZeroPad2d`` sub-module, reflect/replicate/circular padding of a
   conv's ``padding_mode``, ...). Identity for plain layers.
2. the op's own symmetric padding (``Geometry.padding``), with the layer's pad value
   (0 for convolutions, -inf for max pooling; counted in average pooling iff ``count_include_pad``);
3. the strided functional op (``apply``) with padding 0.

The dense input of a phase (docs/semantics.md, "Phases") is then: step 1, step 2, and an extension past the bottom/right edge to
``R*out + d*(k-1)`` rows/columns with the same pad value (see ``functional.pad_extend``). All R²
phases come from one stride-1 ``apply`` on it, split into phases; one phase is one stride-R ``apply``
on it cropped by ``dy`` rows and ``dx`` columns, at the cost of the default forward.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._compat import class_path
from ..errors import PhaseError, UnsupportedLayerError
from .extension import extension_of, fill_unread
from .functional import (
    check_output_size,
    conv_output_size,
    dense_extent,
    pad_extend,
    pair,
    phase_offset,
    pool_output_size,
    split_phases,
)
from .registry import PhaseAdapter

__all__ = ["Geometry", "Plan", "WindowedAdapter", "square_rate", "positions"]


def square_rate(layer: nn.Module, stride: object) -> int:
    """The rate of a layer with stride ``stride`` (int or pair); UnsupportedLayerError if not square."""
    sh, sw = pair(stride)  # type: ignore[arg-type]
    if sh != sw:
        raise UnsupportedLayerError(
            f"{class_path(layer)} has a non-square stride {(sh, sw)}: phases are defined only for "
            "square strides (R, R)"
        )
    if sh < 1:
        raise UnsupportedLayerError(f"{class_path(layer)} has an invalid stride {(sh, sw)}")
    return sh


@dataclass(frozen=True)
class Geometry:
    """A layer's window configuration, (H, W) pairs. ``padding`` is the functional op's own
    symmetric padding (after any explicit ``prepad``)."""

    kernel: tuple[int, int]
    rate: int
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False


@dataclass(frozen=True)
class Plan:
    """Geometry plus the sizes of one call: ``in_size`` is what the op sees after ``prepad`` (before
    its own padding); ``out_size`` is the default output's (Ho, Wo)."""

    geometry: Geometry
    in_size: tuple[int, int]
    out_size: tuple[int, int]


class WindowedAdapter(PhaseAdapter):
    """Base adapter for NCHW sliding-window layers. Subclasses give ``geometry`` and ``apply``, and
    override ``prepad`` / ``pad_value`` / ``pooling`` where the layer does.

    Attributes:
        pad_value: value of the op's own padding and of the bottom/right extension.
        pooling: True when the output size follows the pooling formula (ceil mode).
        extends: whether an ``extend=`` mode (:mod:`undiscard.layers.extension`) applies; False where
            padding has a rule of its own (average pooling).
    """

    pad_value: float = 0.0
    pooling: bool = False
    extends: bool = True

    @abstractmethod
    def geometry(self, layer: nn.Module) -> Geometry:
        """The layer's window configuration. Raises UnsupportedLayerError when there is no phase
        semantics (non-square stride, ...)."""

    @abstractmethod
    def apply(self, layer: nn.Module, x: Tensor, plan: Plan, stride: int, offset: tuple[int, int]) -> Tensor:
        """The layer's op with ``stride`` and padding 0 on the padded, extended (and, for one phase,
        cropped by ``offset``) input. ``offset`` = (dy, dx): output (i, j) is the window starting at
        padded position (dy + stride*i, dx + stride*j). Shapes: (N, C, h, w) -> (N, C', h', w')."""

    def prepad(self, layer: nn.Module, x: Tensor) -> Tensor:
        """Explicit padding the layer applies before its op. (N, C, H, W) -> (N, C, H', W')."""
        return x

    def rate(self, layer: nn.Module) -> int:
        return self.geometry(layer).rate

    def plan(self, layer: nn.Module, x: Tensor) -> tuple[Plan, Tensor]:
        """The plan of this call and the padded, extended input, shape (N, C, R*Ho + dh*(kh-1),
        R*Wo + dw*(kw-1)). Raises PhaseError when the default output would be empty."""
        g = self.geometry(layer)
        if x.dim() < 3:
            raise PhaseError(f"{class_path(layer)} expects (N, C, H, W) input, got shape {tuple(x.shape)}")
        xe = self.prepad(layer, x)
        n = (int(xe.shape[-2]), int(xe.shape[-1]))
        if self.pooling:
            out = tuple(pool_output_size(n[a], g.kernel[a], g.rate, g.padding[a], g.dilation[a], g.ceil_mode)
                        for a in (0, 1))
        else:
            out = tuple(conv_output_size(n[a], g.kernel[a], g.rate, g.padding[a], g.dilation[a]) for a in (0, 1))
        check_output_size(class_path(layer), (int(x.shape[-2]), int(x.shape[-1])), out)  # type: ignore[arg-type]
        extent = tuple(dense_extent(out[a], g.kernel[a], g.rate, g.dilation[a]) for a in (0, 1))
        xpe = pad_extend(xe, g.padding, extent, self.pad_value)  # type: ignore[arg-type]
        extension = extension_of(layer) if self.extends else None
        if extension is not None:  # the positions phase 0 never reads (and no real input): the mode's fill
            real_end = [g.padding[a] + n[a] for a in (0, 1)]
            start = [max(g.rate * (out[a] - 1) + g.dilation[a] * (g.kernel[a] - 1) + 1, real_end[a]) for a in (0, 1)]
            xpe = fill_unread(xpe, tuple(start), (real_end[0] - 1, real_end[1] - 1), extension)  # type: ignore[arg-type]
        return Plan(g, n, out), xpe  # type: ignore[arg-type]

    def all_phases(self, layer: nn.Module, x: Tensor) -> Tensor:
        plan, xpe = self.plan(layer, x)
        dense = self.apply(layer, xpe, plan, 1, (0, 0))  # (N, C', R*Ho, R*Wo)
        return split_phases(dense, plan.geometry.rate)

    def one_phase(self, layer: nn.Module, x: Tensor, phase: int) -> Tensor:
        plan, xpe = self.plan(layer, x)
        r = plan.geometry.rate
        if not 0 <= phase < r * r:
            raise PhaseError(f"phase {phase} out of range for {class_path(layer)} with rate {r}")
        dy, dx = phase_offset(phase, r)
        ho, wo = plan.out_size
        return self.apply(layer, xpe[..., dy:, dx:], plan, r, (dy, dx))[..., :ho, :wo]


def positions(offset: int, stride: int, count: int, device: torch.device) -> Tensor:
    """Window start positions ``offset + stride * arange(count)`` (int64)."""
    return offset + stride * torch.arange(count, device=device)
