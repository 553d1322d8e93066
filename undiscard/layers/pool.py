"""Phase adapters for strided max and average pooling.

Registered classes (exact class, never subclasses):

- ``torch.nn.MaxPool2d`` (padding, dilation, ceil_mode; ``return_indices=True`` is unsupported);
- ``torch.nn.AvgPool2d`` (count_include_pad either way, ceil_mode, divisor_override);
- timm ``MaxPool2dSame`` (TF-"same" padding with -inf) and ``AvgPool2dSame`` (TF-"same" padding with
  explicit zeros before ``F.avg_pool2d``, so that padding is always counted in the divisor; its
  forward ignores ``divisor_override``);
- efficientnet-lite-pytorch ``MaxPool2dStaticSamePadding`` / ``MaxPool2dDynamicSamePadding``
  (TF-"same" padding with *zeros*, as those layers do, then the pool's own -inf padding).

Padding convention (docs/semantics.md, "Phases"): the layer's own padding is applied first (as the layer does), then the
padded input is extended past its bottom/right edge as far as the dense pass needs: with -inf for max
pooling; for average pooling the extension is never counted in the divisor (the layer's own padding is
counted iff ``count_include_pad``; ``divisor_override``, when set, is the divisor everywhere). This is
also how PyTorch treats ceil-mode windows that run past the padded input, so phase 0 equals the
default forward, ceil mode included. The default output size is PyTorch's (ceil mode drops a last
window that would start past the input plus its left padding).

Windows that contain no counted element at all can only occur at phases > 0 of layers whose
kernel is smaller than their stride, or in ceil mode. For max pooling, a window that starts past the
padded input (so it holds nothing but extension) gives 0, not the -inf of an empty max, which would
turn into NaN in the next convolution or normalisation; windows in the layer's own padding keep
PyTorch's behaviour, so phase 0 stays the default forward. Average pooling gives 0 for an empty
window (an empty sum over a divisor clamped to 1).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .._compat import class_path
from ..errors import UnsupportedLayerError
from .functional import pad_same, pair, window_counts
from .registry import register_adapter
from .windowed import Geometry, Plan, WindowedAdapter, positions, square_rate

__all__ = [
    "MaxPool2dAdapter",
    "AvgPool2dAdapter",
    "TimmMaxPool2dSameAdapter",
    "TimmAvgPool2dSameAdapter",
    "LiteMaxPool2dStaticSameAdapter",
    "LiteMaxPool2dDynamicSameAdapter",
]

_NEG_INF = float("-inf")


class _MaxPoolAdapter(WindowedAdapter):
    """Max pooling: op ``F.max_pool2d(x, kernel, stride, 0, dilation)``, pad value -inf."""

    pad_value = _NEG_INF
    pooling = True
    #: whether the layer's forward honours ``return_indices`` (timm's MaxPool2dSame does not).
    honours_return_indices = True

    def op_padding(self, layer: nn.Module) -> tuple[int, int]:
        return pair(layer.padding)

    def geometry(self, layer: nn.Module) -> Geometry:
        if self.honours_return_indices and getattr(layer, "return_indices", False):
            raise UnsupportedLayerError(
                f"{class_path(layer)} with return_indices=True is not supported: its output is a "
                "(values, indices) pair, and indices of a phase would not index the default output"
            )
        return Geometry(pair(layer.kernel_size), square_rate(layer, layer.stride), self.op_padding(layer),
                        pair(layer.dilation), bool(layer.ceil_mode))

    def apply(self, layer: nn.Module, x: Tensor, plan: Plan, stride: int, offset: tuple[int, int]) -> Tensor:
        g = plan.geometry
        out = F.max_pool2d(x, g.kernel, stride, 0, g.dilation)
        # windows that start past the padded input hold only extension: 0 (see the module docstring)
        outside = []
        for a in (0, 1):
            padded = plan.in_size[a] + 2 * g.padding[a]
            outside.append(positions(offset[a], stride, int(out.shape[-2 + a]), out.device) >= padded)
        mask = outside[0][:, None] | outside[1][None, :]
        return out.masked_fill(mask, 0.0) if bool(mask.any()) else out


@register_adapter(nn.MaxPool2d)
class MaxPool2dAdapter(_MaxPoolAdapter):
    """``torch.nn.MaxPool2d``."""


@register_adapter("timm.layers.pool2d_same.MaxPool2dSame")
class TimmMaxPool2dSameAdapter(_MaxPoolAdapter):
    """timm ``MaxPool2dSame``: TF-"same" padding with -inf, then the pool with padding 0 and
    ``layer.ceil_mode``. Its forward never returns indices; note that its constructor passes
    ``ceil_mode`` positionally into nn.MaxPool2d's ``return_indices`` slot, so
    ``MaxPool2dSame(ceil_mode=True)`` has ``return_indices=True`` and ``ceil_mode=False``: we follow
    the forward (attributes as they are), not the constructor's intent."""

    honours_return_indices = False

    def op_padding(self, layer: nn.Module) -> tuple[int, int]:
        return (0, 0)

    def prepad(self, layer: nn.Module, x: Tensor) -> Tensor:
        return pad_same(x, pair(layer.kernel_size), pair(layer.stride), pair(layer.dilation), _NEG_INF)


@register_adapter("efficientnet_lite_pytorch.utils.MaxPool2dStaticSamePadding")
class LiteMaxPool2dStaticSameAdapter(_MaxPoolAdapter):
    """efficientnet-lite ``MaxPool2dStaticSamePadding``: its ``static_padding`` module (zeros), then
    the pool with ``layer.padding``."""

    def prepad(self, layer: nn.Module, x: Tensor) -> Tensor:
        return layer.static_padding(x)


@register_adapter("efficientnet_lite_pytorch.utils.MaxPool2dDynamicSamePadding")
class LiteMaxPool2dDynamicSameAdapter(_MaxPoolAdapter):
    """efficientnet-lite ``MaxPool2dDynamicSamePadding``: TF-"same" *zero* padding from the input
    size, then the pool with ``layer.padding``."""

    def prepad(self, layer: nn.Module, x: Tensor) -> Tensor:
        return pad_same(x, pair(layer.kernel_size), pair(layer.stride), pair(layer.dilation), 0.0)


class _AvgPoolAdapter(WindowedAdapter):
    """Average pooling: window sums over the padded, zero-extended input divided by the number of
    counted elements (input, plus the op's own padding iff ``count_include_pad``), or by
    ``divisor_override`` when the layer honours one."""

    pad_value = 0.0
    extends = False  # padding follows count_include_pad; an extend= mode does not apply
    pooling = True
    honours_divisor_override = True

    def op_padding(self, layer: nn.Module) -> tuple[int, int]:
        return pair(layer.padding)

    def geometry(self, layer: nn.Module) -> Geometry:
        return Geometry(pair(layer.kernel_size), square_rate(layer, layer.stride), self.op_padding(layer),
                        (1, 1), bool(layer.ceil_mode))

    def apply(self, layer: nn.Module, x: Tensor, plan: Plan, stride: int, offset: tuple[int, int]) -> Tensor:
        g = plan.geometry
        override = layer.divisor_override if self.honours_divisor_override else None
        if override:
            return F.avg_pool2d(x, g.kernel, stride, 0, divisor_override=override)
        sums = F.avg_pool2d(x, g.kernel, stride, 0, divisor_override=1)
        counts = []
        for a in (0, 1):
            n, p, k = plan.in_size[a], g.padding[a], g.kernel[a]
            lo, hi = (0, n + 2 * p) if layer.count_include_pad else (p, p + n)
            starts = positions(offset[a], stride, int(sums.shape[-2 + a]), sums.device)
            counts.append(window_counts(starts, k, lo, hi))
        divisor = (counts[0][:, None] * counts[1][None, :]).clamp(min=1).to(sums.dtype)
        return sums / divisor


@register_adapter(nn.AvgPool2d)
class AvgPool2dAdapter(_AvgPoolAdapter):
    """``torch.nn.AvgPool2d``."""


@register_adapter("timm.layers.pool2d_same.AvgPool2dSame")
class TimmAvgPool2dSameAdapter(_AvgPoolAdapter):
    """timm ``AvgPool2dSame``: explicit TF-"same" zeros (always counted: they are part of the pooled
    tensor), then ``F.avg_pool2d`` with ``layer.padding`` (0); no ``divisor_override``."""

    honours_divisor_override = False

    def prepad(self, layer: nn.Module, x: Tensor) -> Tensor:
        return pad_same(x, pair(layer.kernel_size), pair(layer.stride), (1, 1), 0.0)

