"""Segmentation models by name for the command line: ``zoo:seg_*`` (the segmentation zoo, its own
normalisation and input size) or any :func:`undiscard.models.loading.load_model` spec whose output is
(N, K, H, W) logits (e.g. ``torchvision:fcn_resnet50``, whose ``{"out": ...}`` output is selected)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["SegModel", "load_seg_model"]


@dataclass
class SegModel:
    name: str
    model: nn.Module
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int | None  # resize every pair to this (None: keep the images' own size)
    size_divisor: int  # what multi-scale views are padded to
    class_names: list[str]
    order: str | None = None  # a zoo segmenter's shipped calibrated state order (criterion="calibrated"), if any


def load_seg_model(spec: str, weights: str | None = None) -> SegModel:
    """The segmenter named ``spec`` (see the module docstring), in eval mode."""
    name = spec.removeprefix("zoo:")
    if spec.startswith("zoo:") and name.startswith("seg_"):
        from .._files import load_weights
        from ..zoo import segmentation as segzoo

        cfg = segzoo.model_config(name)
        net = segzoo.create_model(name, pretrained=weights is None)
        if weights is not None:
            load_weights(net, weights)
        from ..search.orders import zoo_order_path

        shipped = zoo_order_path(name)
        return SegModel(spec, net.eval(), int(cfg["in_chans"]), tuple(cfg["mean"]), tuple(cfg["std"]),
                        int(cfg["input_size"][-1]), 32, list(cfg["class_names"]),
                        str(shipped) if shipped.exists() and weights is None else None)
    from ..models.loading import load_model

    loaded = load_model(spec, weights=weights)
    pre = loaded.preprocess
    return SegModel(loaded.name, loaded.model.eval(), pre.in_chans, tuple(pre.mean), tuple(pre.std), None, 32,
                    list(loaded.class_names))
