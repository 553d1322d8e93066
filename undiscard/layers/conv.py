"""Phase adapters for strided convolutions.

Registered classes (exact class, never subclasses):

- ``torch.nn.Conv2d``: int/tuple padding, ``'valid'``, ``'same'`` (stride 1 only, so rate 1),
  dilation, groups, every ``padding_mode``; also Hugging Face EfficientNet's
  ``EfficientNetDepthwiseConv2d``, a Conv2d subclass that only sets ``groups`` (its forward is Conv2d's);
- timm ``Conv2dSame`` / ``Conv2dSameExport`` (TF-"same" padding computed from the input size; the
  export variant reuses the ``ZeroPad2d`` it cached on its first call, exactly as its forward does);
- efficientnet-lite-pytorch ``Conv2dStaticSamePadding`` (its ``static_padding`` sub-module, then the
  conv's own padding) and ``Conv2dDynamicSamePadding``;
- timm ``BlurPool2d`` (``pad_mode`` padding, then a depthwise binomial filter with stride).

Padding convention (docs/semantics.md, "Phases"): the layer's own padding is applied to the input first, with its own
mode (zeros, reflect, replicate, circular, or the TF-"same" amounts the layer computes from the input
size); the padded input is then extended past its bottom/right edge with **zeros**, as far as the
dense pass needs. The extension is zeros for every ``padding_mode``: it is not the layer's padding
(reflecting or wrapping around the already padded border would invent a second border, and phase 0
never reads the extension anyway). Phase 0 therefore equals the default forward.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .functional import pad_same, pair
from .registry import register_adapter
from .windowed import Geometry, Plan, WindowedAdapter, square_rate

__all__ = [
    "Conv2dAdapter",
    "TimmConv2dSameAdapter",
    "TimmConv2dSameExportAdapter",
    "LiteConv2dStaticSameAdapter",
    "LiteConv2dDynamicSameAdapter",
    "BlurPool2dAdapter",
]


def _conv_padding_lrtb(layer: nn.Conv2d) -> tuple[int, int, int, int]:
    """nn.Conv2d's padding as F.pad amounts (left, right, top, bottom), 'valid' and 'same' included
    ('same': total d*(k-1), the odd pixel after, as ATen and ``_reversed_padding_repeated_twice``)."""
    kh, kw = layer.weight.shape[-2:]
    dh, dw = pair(layer.dilation)
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return (0, 0, 0, 0)
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    ph, pw = pair(layer.padding)
    return (pw, pw, ph, ph)


class _ConvAdapter(WindowedAdapter):
    """A conv whose op is ``F.conv2d(x, layer.weight, layer.bias, stride, 0, dilation, layer.groups)``
    and whose op padding is ``layer.padding`` (subclasses override where the layer differs)."""

    pad_value = 0.0

    def op_padding(self, layer: nn.Module) -> tuple[int, int]:
        return pair(layer.padding)

    def geometry(self, layer: nn.Module) -> Geometry:
        kh, kw = layer.weight.shape[-2:]
        return Geometry((int(kh), int(kw)), square_rate(layer, layer.stride), self.op_padding(layer),
                        pair(layer.dilation))

    def apply(self, layer: nn.Module, x: Tensor, plan: Plan, stride: int, offset: tuple[int, int]) -> Tensor:
        return F.conv2d(x, layer.weight, layer.bias, stride, 0, plan.geometry.dilation, layer.groups)


@register_adapter(nn.Conv2d, "transformers.models.efficientnet.modeling_efficientnet.EfficientNetDepthwiseConv2d")
class Conv2dAdapter(_ConvAdapter):
    """``torch.nn.Conv2d``. Zero padding that is symmetric stays the op's padding; any other padding
    (reflect/replicate/circular modes, asymmetric 'same') is applied explicitly first, as the layer
    does."""

    @staticmethod
    def _explicit(layer: nn.Conv2d) -> bool:
        left, right, top, bottom = _conv_padding_lrtb(layer)
        return layer.padding_mode != "zeros" or left != right or top != bottom

    def op_padding(self, layer: nn.Module) -> tuple[int, int]:
        if self._explicit(layer):
            return (0, 0)
        left, _, top, _ = _conv_padding_lrtb(layer)
        return (top, left)

    def prepad(self, layer: nn.Module, x: Tensor) -> Tensor:
        if not self._explicit(layer):
            return x
        amounts = _conv_padding_lrtb(layer)
        if not any(amounts):
            return x
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        return F.pad(x, amounts, mode=mode)


@register_adapter("timm.layers.conv2d_same.Conv2dSame")
class TimmConv2dSameAdapter(_ConvAdapter):
    """timm ``Conv2dSame``: TF-"same" zero padding from the input size; its forward ignores
    ``layer.padding`` (always 0 anyway)."""

    def op_padding(self, layer: nn.Module) -> tuple[int, int]:
        return (0, 0)

    def prepad(self, layer: nn.Module, x: Tensor) -> Tensor:
        kh, kw = layer.weight.shape[-2:]
        return pad_same(x, (int(kh), int(kw)), pair(layer.stride), pair(layer.dilation))


@register_adapter("timm.layers.conv2d_same.Conv2dSameExport")
class TimmConv2dSameExportAdapter(_ConvAdapter):
    """timm ``Conv2dSameExport``: the ``pad`` ZeroPad2d it cached on its first call (computed from the
    current input when it has not been called yet; we never set it), then ``layer.padding``."""

    def prepad(self, layer: nn.Module, x: Tensor) -> Tensor:
        if getattr(layer, "pad", None) is not None:
            return layer.pad(x)
        kh, kw = layer.weight.shape[-2:]
        return pad_same(x, (int(kh), int(kw)), pair(layer.stride), pair(layer.dilation))


@register_adapter("efficientnet_lite_pytorch.utils.Conv2dStaticSamePadding")
class LiteConv2dStaticSameAdapter(_ConvAdapter):
    """efficientnet-lite ``Conv2dStaticSamePadding``: its ``static_padding`` module (ZeroPad2d or
    Identity, fixed at construction), then ``layer.padding``."""

    def prepad(self, layer: nn.Module, x: Tensor) -> Tensor:
        return layer.static_padding(x)


@register_adapter("efficientnet_lite_pytorch.utils.Conv2dDynamicSamePadding")
class LiteConv2dDynamicSameAdapter(_ConvAdapter):
    """efficientnet-lite ``Conv2dDynamicSamePadding``: TF-"same" zero padding from the input size,
    then ``layer.padding``."""

    def prepad(self, layer: nn.Module, x: Tensor) -> Tensor:
        kh, kw = layer.weight.shape[-2:]
        return pad_same(x, (int(kh), int(kw)), pair(layer.stride), pair(layer.dilation))


@register_adapter("timm.layers.blur_pool.BlurPool2d")
class BlurPool2dAdapter(WindowedAdapter):
    """timm ``BlurPool2d``: ``F.pad(x, layer.padding, mode=layer.pad_mode)``, then the depthwise
    binomial filter ``layer.filt`` with ``layer.stride``. The extension is zeros whatever
    ``pad_mode`` is (see the module docstring)."""

    def geometry(self, layer: nn.Module) -> Geometry:
        kh, kw = layer.filt.shape[-2:]
        return Geometry((int(kh), int(kw)), square_rate(layer, layer.stride))

    def prepad(self, layer: nn.Module, x: Tensor) -> Tensor:
        return F.pad(x, list(layer.padding), mode=layer.pad_mode)

    def apply(self, layer: nn.Module, x: Tensor, plan: Plan, stride: int, offset: tuple[int, int]) -> Tensor:
        if layer.channels is None:
            channels = int(x.shape[-3])
            weight = layer.filt.expand(channels, 1, layer.filt_size, layer.filt_size)
        else:
            channels, weight = layer.channels, layer.filt
        return F.conv2d(x, weight, stride=stride, groups=channels)
