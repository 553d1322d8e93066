"""The segmentation zoo: small segmenters of three families, trained on Fashion-MNIST canvases.

Every model takes a (N, 1, 96, 96) canvas batch prepared by :func:`undiscard.data.segmentation.to_input`
(uint8 -> [0, 1] -> (x - MEAN) / STD with the canvases' statistics) and returns (N, 11, 96, 96) logits
at input resolution (class 0 background, k + 1 = Fashion-MNIST class k). All are
``segmentation_models_pytorch`` (smp) models with random initialisation, so they need the optional
extra ``pip install 'undiscard[seg]'``; without smp, building one raises :class:`MissingDependencyError`
(one line, with that hint). Their subsampling layers are ordinary modules: strided ``nn.Conv2d`` and
``nn.MaxPool2d`` in the timm ResNet encoders, strided ``nn.Conv2d`` patch embeddings in SegFormer's
Mix Transformer.

    >>> from undiscard.zoo import segmentation as segzoo
    >>> segzoo.list_models()
    ['seg_deeplabv3plus', 'seg_fpn', 'seg_segformer']
    >>> net = segzoo.create_model("seg_fpn")   # eval mode, float32, weights from zoo/weights/seg_fpn.pt

Weights (fp16) are in ``zoo/weights/NAME.pt``, training logs in ``zoo/logs/NAME.json``, both written by
``scripts/train_segzoo.py --model NAME``.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import torch.nn as nn

from .._compat import import_timm
from ..data import segmentation as segdata
from ..errors import UndiscardError
from .catalog import (
    LOGS_DIR,
    WEIGHTS_DIR,
    Catalog,
    MissingWeightsError,
    UnknownModelError,
)


class MissingDependencyError(UndiscardError, ImportError):
    """segmentation_models_pytorch (the ``seg`` extra) is not installed."""


def _smp():
    """Import segmentation_models_pytorch (after timm/torchvision's CPU workaround) or raise one clear line."""
    if importlib.util.find_spec("segmentation_models_pytorch") is None:
        raise MissingDependencyError(
            "the segmentation zoo needs segmentation_models_pytorch: pip install 'undiscard[seg]'")
    import_timm()
    import segmentation_models_pytorch as smp

    return smp


_COMMON = dict(encoder_weights=None, in_channels=1, classes=segdata.NUM_CLASSES)


def deeplabv3plus() -> nn.Module:
    """smp DeepLabV3+ on a timm ResNet-18 encoder at half width (stem 32, stages 32-64-128-256), output stride 16.

    Strided: stem 7x7 conv s2 (96->48), stem max-pool s2 (->24), first conv (+ 1x1 shortcut) of layer2
    (->12) and layer3 (->6); layer4 is dilated (rate 2) instead of strided, as DeepLab does. ASPP with
    64 channels, plain (not separable) 3x3 convs at rates (1, 2, 3): smp's default (12, 24, 36) is made
    for a 33x33 stride-16 map (513 px crops), on this 6x6 map it would leave only the centre taps.
    The decoder fuses the stride-4 layer1 features and upsamples x4 (bilinear) to 96x96.
    """
    smp = _smp()
    return smp.DeepLabV3Plus("tu-resnet18", **_COMMON, encoder_output_stride=16, decoder_channels=64,
                             decoder_atrous_rates=(1, 2, 3), decoder_aspp_separable=False,
                             decoder_aspp_dropout=0.1, channels=(32, 64, 128, 256), stem_width=32)


def fpn() -> nn.Module:
    """smp FPN on a timm ResNet-18 encoder at half width (stem 32, stages 32-64-128-256), pyramid 64 channels,
    segmentation branches 32 channels (GroupNorm), summed at stride 4 and upsampled x4 (bilinear).

    Strided: stem 7x7 conv s2, stem max-pool s2, first conv (+ 1x1 shortcut) of layer2/3/4 (96 -> 3x3 at
    stride 32). The decoder reads every encoder stage from stride 4 to 32 (lateral 1x1 convs + top-down
    nearest upsampling). 82% of its compute is in the encoder (a U-Net tried first spent 74% in its
    decoder and learned less in the same time: see the README).
    """
    smp = _smp()
    return smp.FPN("tu-resnet18", **_COMMON, decoder_pyramid_channels=64, decoder_segmentation_channels=32,
                   channels=(32, 64, 128, 256), stem_width=32)


def segformer() -> nn.Module:
    """smp SegFormer with a MiT-B0 encoder (embed dims 32-64-160-256, depth 2, heads 1-2-5-8, MLP ratio 4,
    spatial-reduction ratios 8-4-2-1; drop-path 0 instead of B0's 0.1 for the short schedule) and an
    All-MLP decoder of 64 channels (B0 uses 256 at 512 px; at 96 px it would be 60% of the compute).

    Strided: the overlapping patch embeddings (7x7 conv s4: 96 -> 24, then 3x3 convs s2: 12, 6, 3) and the
    spatial-reduction convs of the attention (k = s = 8, 4, 2). Built from smp's own
    MixVisionTransformerEncoder and SegformerDecoder classes.
    """
    smp = _smp()
    from segmentation_models_pytorch.decoders.segformer.decoder import SegformerDecoder
    from segmentation_models_pytorch.encoders.mix_transformer import (
        LayerNorm,
        MixVisionTransformerEncoder,
    )

    dims = (32, 64, 160, 256)
    seg_channels = 64
    model = smp.Segformer("mit_b0", **_COMMON, decoder_segmentation_channels=seg_channels)
    enc = MixVisionTransformerEncoder(out_channels=[3, 0, *dims], patch_size=4, embed_dims=list(dims),
                                      num_heads=[1, 2, 5, 8], mlp_ratios=[4, 4, 4, 4], qkv_bias=True,
                                      norm_layer=partial(LayerNorm, eps=1e-6), depths=[2, 2, 2, 2],
                                      sr_ratios=[8, 4, 2, 1], drop_rate=0.0, drop_path_rate=0.0)
    enc.set_in_channels(1, pretrained=False)
    model.encoder = enc
    model.decoder = SegformerDecoder(encoder_channels=enc.out_channels, encoder_depth=5,
                                     segmentation_channels=seg_channels)
    return model


@dataclass(frozen=True)
class SegZooSpec:
    """One segmentation zoo entry: builder, family, and the recipe ``scripts/train_segzoo.py`` trains it with."""

    name: str
    family: str
    build: Callable[[], nn.Module]
    input_size: int = segdata.DEFAULT_CONFIG.size
    in_chans: int = 1
    train: dict = field(default_factory=dict)


# epochs of `canvases_per_epoch` fresh train canvases each; amp "bf16": CPU bfloat16 autocast of the
# forward pass (fp32 weights and optimizer state), channels_last; evaluation is always fp32.
_DEFAULT_TRAIN = dict(epochs=12, canvases_per_epoch=5000, batch_size=16, lr=2e-3, weight_decay=0.01, warmup=0.1,
                      amp="bf16", flip=0.5)

CATALOG: Catalog[SegZooSpec] = Catalog("segmentation zoo", [
    SegZooSpec("seg_deeplabv3plus", "DeepLabV3+ (ASPP, ResNet-18 encoder)", deeplabv3plus, train=dict(epochs=16)),
    SegZooSpec("seg_fpn", "FPN (ResNet-18 encoder)", fpn, train=dict(epochs=18)),
    SegZooSpec("seg_segformer", "SegFormer (Mix Transformer encoder)", segformer, train=dict(epochs=17)),
], _DEFAULT_TRAIN, script="train_segzoo.py")
_spec = CATALOG.spec
list_models, weights_path, train_recipe = CATALOG.list_models, CATALOG.weights_path, CATALOG.train_recipe
build_model, create_model, training_log = CATALOG.build_model, CATALOG.create_model, CATALOG.training_log


def model_config(name: str) -> dict[str, Any]:
    """Everything needed to feed and read segmentation zoo model ``name``.

    Keys: name, family, input_size (C, H, W), in_chans, mean, std, num_classes, class_names, ignore_index,
    preprocess (a sentence), weights (path), test_miou and test_pixel_acc (from the log, or None).
    """
    spec = _spec(name)
    log = training_log(spec.name) or {}
    return {
        "name": spec.name,
        "family": spec.family,
        "input_size": (spec.in_chans, spec.input_size, spec.input_size),
        "in_chans": spec.in_chans,
        "mean": (segdata.MEAN,) * spec.in_chans,
        "std": (segdata.STD,) * spec.in_chans,
        "num_classes": segdata.NUM_CLASSES,
        "class_names": list(segdata.CLASS_NAMES),
        "ignore_index": segdata.IGNORE_INDEX,
        "preprocess": ("uint8 canvas (N, 96, 96) -> float [0, 1] -> (x - mean) / std; "
                       "undiscard.data.segmentation.to_input(images)"),
        "weights": str(weights_path(spec.name)),
        "test_miou": log.get("test_miou"),
        "test_pixel_acc": log.get("test_pixel_acc"),
    }


__all__ = [
    "CATALOG", "LOGS_DIR", "WEIGHTS_DIR", "MissingDependencyError", "MissingWeightsError", "SegZooSpec",
    "UnknownModelError", "build_model", "create_model", "deeplabv3plus", "fpn", "list_models", "model_config",
    "segformer", "train_recipe", "training_log", "weights_path",
]
