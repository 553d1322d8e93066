"""Splitting a classifier into ``features`` (a chain of stages) and ``head``.

Aggregation (DESIGN §3) averages feature maps from several states and then applies the model's head, so
every supported model needs ``logits == head(features(x))``. A :class:`Split` says how, for one model:

- ``stages``: callables applied in order to the input; their composition is ``features``. Where a stage
  is an ``nn.Module`` it may later be refined into its own sub-stages (see :mod:`undiscard.chain`), which
  is what lets the search recompute only the network after a unit.
- ``head``: maps the (native) features to logits.
- ``layout``: how native features map to the (N, C, h, w) maps that aggregation aligns:
  ``"nchw"``; ``"nhwc"`` (Swin); ``"vector"`` for (N, C) features (a ViT's class token), treated as
  1x1 maps that cannot be aligned; ``"tokens"`` for (N, P + h*w, C) token sequences (timm ViT-style
  models, EfficientFormer) — the last h*w tokens become a map (h, w from the last unit's output size),
  the P prefix tokens are aggregated with the same weights but never shifted.

Splits are found, in order: an explicit ``features=``/``head=`` override; the registry below, keyed by
the model's exact class (torchvision classifiers, EfficientNet-Lite); any timm model
(``forward_features``/``forward_head``); a generic rule for plain nets whose top-level children run as a
chain (features end at the last 4-D activation, the rest is the head, with ``flatten`` where a Linear
follows). Every split is checked once against ``model(x)`` on the first input, bit for bit where the
model computes the same ops (see ``verify``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ._compat import class_path
from .errors import UndiscardError

__all__ = ["Split", "get_split", "register_split", "to_map", "from_map"]

Stage = Callable[[Tensor], Tensor]


@dataclass
class Split:
    stages: list[Stage]
    head: Callable[[Tensor], Tensor]
    layout: str = "nchw"

    def features(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


SplitFactory = Callable[[nn.Module], Split]
_SPLITS: dict[str, SplitFactory] = {}


def register_split(*classes: str) -> Callable[[SplitFactory], SplitFactory]:
    """Register a split factory for model classes given by fully qualified name."""

    def deco(fn: SplitFactory) -> SplitFactory:
        for c in classes:
            _SPLITS[c] = fn
        return fn

    return deco


def _children(model: nn.Module, names: Sequence[str]) -> list[Stage]:
    return [getattr(model, n) for n in names]


def _pool_flatten(pool: Callable[[Tensor], Tensor], fc: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    return lambda f: fc(torch.flatten(pool(f), 1))


TV = "torchvision.models."


@register_split(TV + "resnet.ResNet")
def _tv_resnet(m: nn.Module) -> Split:
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    return Split(_children(m, names), _pool_flatten(m.avgpool, m.fc))


@register_split(TV + "regnet.RegNet")
def _tv_regnet(m: nn.Module) -> Split:
    return Split(_children(m, ["stem", "trunk_output"]), _pool_flatten(m.avgpool, m.fc))


@register_split(TV + "mobilenetv2.MobileNetV2")
def _tv_mnv2(m: nn.Module) -> Split:
    pool = functools.partial(nn.functional.adaptive_avg_pool2d, output_size=(1, 1))
    return Split([m.features], _pool_flatten(pool, m.classifier))


@register_split(TV + "mobilenetv3.MobileNetV3", TV + "efficientnet.EfficientNet", TV + "vgg.VGG")
def _tv_features_avgpool(m: nn.Module) -> Split:
    return Split([m.features], _pool_flatten(m.avgpool, m.classifier))


@register_split(TV + "mnasnet.MNASNet")
def _tv_mnasnet(m: nn.Module) -> Split:
    return Split([m.layers], lambda f: m.classifier(f.mean([2, 3])))


@register_split(TV + "convnext.ConvNeXt")
def _tv_convnext(m: nn.Module) -> Split:
    return Split([m.features], lambda f: m.classifier(m.avgpool(f)))


@register_split(TV + "swin_transformer.SwinTransformer")
def _tv_swin(m: nn.Module) -> Split:
    return Split(_children(m, ["features", "norm", "permute"]), _pool_flatten(m.avgpool, m.head))


@register_split(TV + "shufflenetv2.ShuffleNetV2")
def _tv_shufflenet(m: nn.Module) -> Split:
    names = ["conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"]
    return Split(_children(m, names), lambda f: m.fc(f.mean([2, 3])))


@register_split(TV + "squeezenet.SqueezeNet")
def _tv_squeezenet(m: nn.Module) -> Split:
    return Split([m.features], lambda f: torch.flatten(m.classifier(f), 1))


@register_split(TV + "googlenet.GoogLeNet")
def _tv_googlenet(m: nn.Module) -> Split:
    names = ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
             "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
             "inception5a", "inception5b"]
    return Split([m._transform_input, *_children(m, names)],
                 lambda f: m.fc(m.dropout(torch.flatten(m.avgpool(f), 1))))


@register_split(TV + "vision_transformer.VisionTransformer")
def _tv_vit(m: nn.Module) -> Split:
    def features(x: Tensor) -> Tensor:
        x = m._process_input(x)
        cls = m.class_token.expand(x.shape[0], -1, -1)
        return m.encoder(torch.cat([cls, x], dim=1))[:, 0]

    return Split([features], m.heads, layout="vector")


@register_split("efficientnet_lite_pytorch.model.EfficientNet")
def _effnet_lite(m: nn.Module) -> Split:
    rate = m._global_params.drop_connect_rate
    blocks: list[Stage] = []
    for idx, block in enumerate(m._blocks):
        r = rate * float(idx) / len(m._blocks) if rate else rate
        blocks.append(block if not r else functools.partial(block, drop_connect_rate=r))
    stages: list[Stage] = [m._conv_stem, m._bn0, m._swish, *blocks, m._conv_head, m._bn1, m._swish]

    def head(f: Tensor) -> Tensor:
        return m._fc(m._dropout(m._avg_pooling(f).view(f.shape[0], -1)))

    return Split(stages, head)


def _timm_split(m: nn.Module) -> Split:
    fmt = str(getattr(m, "output_fmt", "NCHW"))
    layout = "nhwc" if fmt.upper().endswith("NHWC") else "nchw"
    return Split([m.forward_features], m.forward_head, layout=layout)  # 3-D outputs become "tokens" in use


def _generic_split(model: nn.Module, x: Tensor) -> Split:
    """Top-level children that run as a chain; features end at the last 4-D activation that is not a
    global pooling."""
    calls: list[tuple[nn.Module, Tensor, Tensor]] = []
    hooks = [c.register_forward_hook(lambda mod, a, o: calls.append((mod, a[0] if a else None, o)))
             for c in model.children()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    chain: list[nn.Module] = []
    current = x
    for mod, inp, out in calls:
        if inp is None or not isinstance(out, Tensor):
            break
        if inp is not current and not (inp.dim() == 2 and current.dim() > 2
                                       and torch.equal(inp, torch.flatten(current, 1))):
            break
        chain.append(mod)
        current = out
    pools = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)
    last4d = max((i for i, (mod, _, o) in enumerate(calls[:len(chain)]) if o.dim() == 4 and not isinstance(mod, pools)),
                 default=None)
    if last4d is None or len(chain) != len(calls):
        raise UndiscardError(f"cannot split {class_path(model)} into features and head automatically: "
                             "pass features=(model, x) -> maps and head=(model, maps) -> logits to wrap()")
    feats, rest = chain[:last4d + 1], chain[last4d + 1:]

    def head(f: Tensor) -> Tensor:
        for mod in rest:
            if isinstance(mod, nn.Linear) and f.dim() > 2:
                f = torch.flatten(f, 1)
            f = mod(f)
        return f

    return Split(list(feats), head)


def get_split(model: nn.Module, x: Tensor,
              features: Callable[[nn.Module, Tensor], Tensor] | None = None,
              head: Callable[[nn.Module, Tensor], Tensor] | None = None,
              layout: str = "nchw") -> Split:
    """The split of ``model`` (see module docstring). ``x`` is a sample input for the generic rule."""
    if (features is None) != (head is None):
        raise UndiscardError("pass both features= and head=, or neither")
    if features is not None and head is not None:
        return Split([functools.partial(features, model)], functools.partial(head, model), layout=layout)
    factory = _SPLITS.get(class_path(model))
    if factory is not None:
        return factory(model)
    if hasattr(model, "forward_features") and hasattr(model, "forward_head") and \
            type(model).__module__.startswith("timm."):
        return _timm_split(model)
    return _generic_split(model, x)


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
