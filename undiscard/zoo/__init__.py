"""The bundled model zoo: small Fashion-MNIST classifiers built from real timm modules, with weights.

Every model takes a (N, 1, 32, 32) Fashion-MNIST batch prepared by
:func:`undiscard.data.preprocess` (28x28 zero-padded to 32x32, scaled to [0, 1], normalised with the
data set's mean/std) and returns (N, 10) logits. Each has at least 3 strided layers in sequence and a
2x2 final feature map, and was trained with translation augmentation (random crops, +-4 px) and
horizontal flips by ``scripts/train_zoo.py``; its weights (fp16) live in ``zoo/weights/NAME.pt`` and
its training log in ``zoo/logs/NAME.json``.

    >>> from undiscard import zoo
    >>> zoo.list_models()
    ['resnet_basic', 'resnext', 'mobilenetv2', 'convnext', 'swin', 'pvtv2', 'mobilevit']
    >>> net = zoo.create_model("resnet_basic")          # eval mode, float32
    >>> zoo.model_config("resnet_basic")["input_size"]  # (1, 32, 32)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from ..data.fashion_mnist import CLASS_NAMES, MEAN, NUM_CLASSES, STD
from . import architectures as arch
from .catalog import (
    LOGS_DIR,
    PREFIX,
    WEIGHTS_DIR,
    Catalog,
    MissingWeightsError,
    UnknownModelError,
)

AGGREGATORS_DIR = Path(__file__).with_name("aggregators")
TRAIN_TRANSLATION = 4  # the training crops: zero-pad 4 px, random crop back (scripts/train_zoo.py)


@dataclass(frozen=True)
class ZooSpec:
    """One zoo entry: builder, input geometry and the recipe ``scripts/train_zoo.py`` trains it with."""

    name: str
    family: str
    build: Callable[[], nn.Module]
    input_size: int = 32
    in_chans: int = 1
    train: dict = field(default_factory=dict)  # epochs, lr, weight_decay, batch_size, label_smoothing, amp


# amp: "fp32" or "bf16" (CPU autocast of the forward pass; fp32 master weights and optimizer state).
_DEFAULT_TRAIN = dict(epochs=5, lr=2e-3, weight_decay=0.05, batch_size=128, label_smoothing=0.1, warmup=0.15,
                      amp="fp32")

CATALOG: Catalog[ZooSpec] = Catalog("zoo", [
    ZooSpec("resnet_basic", "ResNet (BasicBlock)", arch.resnet_basic, train=dict(epochs=5)),
    ZooSpec("resnext", "ResNeXt-D (Bottleneck, grouped conv)", arch.resnext, train=dict(epochs=7)),
    ZooSpec("mobilenetv2", "MobileNetV2 (timm EfficientNet)", arch.mobilenetv2, train=dict(epochs=14, lr=3e-3)),
    ZooSpec("convnext", "ConvNeXt", arch.convnext, train=dict(epochs=16)),
    ZooSpec("swin", "Swin Transformer", arch.swin, train=dict(epochs=24, lr=1.5e-3, amp="bf16")),
    ZooSpec("pvtv2", "PVT-v2", arch.pvtv2, train=dict(epochs=11, lr=1e-3, batch_size=64)),
    ZooSpec("mobilevit", "MobileViT (timm ByobNet)", arch.mobilevit, train=dict(epochs=6)),
], _DEFAULT_TRAIN, script="train_zoo.py")
_spec = CATALOG.spec
list_models, weights_path, train_recipe = CATALOG.list_models, CATALOG.weights_path, CATALOG.train_recipe
build_model, create_model, training_log = CATALOG.build_model, CATALOG.create_model, CATALOG.training_log


def search_units(name: str) -> list[str]:
    """The units searched by default for zoo model ``name``: the leading units whose phases move the input
    by at most the ±TRAIN_TRANSLATION px of its training crops (deeper units' phases are translations the
    model never saw, and lowered accuracy when searched: scripts/unit_sweep.py)."""
    import torch

    from ..analysis.discovery import find_units, units_within_offset

    spec = _spec(name)
    model = spec.build().eval()
    x = torch.zeros(1, spec.in_chans, spec.input_size, spec.input_size)
    units = find_units(model, x)
    return [units[i].name for i in units_within_offset(units, (spec.input_size, spec.input_size),
                                                       TRAIN_TRANSLATION)]


def aggregator_path(name: str) -> Path:
    """Where the shipped attention aggregator of zoo model ``name`` is (``undiscard train-aggregator``)."""
    return AGGREGATORS_DIR / f"{_spec(name).name}.pt"


def model_config(name: str) -> dict[str, Any]:
    """Everything needed to feed and read zoo model ``name``.

    Keys: name, family, input_size (C, H, W), in_chans, mean, std (per channel, for [0, 1] inputs),
    num_classes, class_names, preprocess (a sentence; :func:`undiscard.data.preprocess` does it),
    weights (path), test_accuracy (from the training log, or None).
    """
    spec = _spec(name)
    log = training_log(spec.name)
    return {
        "name": spec.name,
        "family": spec.family,
        "input_size": (spec.in_chans, spec.input_size, spec.input_size),
        "in_chans": spec.in_chans,
        "mean": (MEAN,) * spec.in_chans,
        "std": (STD,) * spec.in_chans,
        "num_classes": NUM_CLASSES,
        "class_names": list(CLASS_NAMES),
        "preprocess": (f"28x28 uint8 -> float [0, 1] -> zero-pad 2 px each side to {spec.input_size}x"
                       f"{spec.input_size} -> (x - mean) / std; "
                       f"undiscard.data.preprocess(images, input_size={spec.input_size}, in_chans={spec.in_chans})"),
        "weights": str(weights_path(spec.name)),
        "test_accuracy": None if log is None else log.get("test_acc"),
    }


__all__ = [
    "CATALOG", "LOGS_DIR", "PREFIX", "WEIGHTS_DIR", "MissingWeightsError", "TRAIN_TRANSLATION", "UnknownModelError",
    "ZooSpec", "aggregator_path", "build_model", "create_model", "list_models", "model_config", "search_units", "train_recipe", "training_log", "weights_path",
]
