"""Loading Hugging Face ``transformers`` image models: the ``hf:`` source of :func:`undiscard.models.loading.load_model`.

``load_model("hf:ORG/NAME")`` (CLI: ``--model hf:ORG/NAME``) loads a model from the Hugging Face cache,
and ``load_model("hf:/path/to/dir")`` (any ``hf:`` name that is an existing directory) one saved with
``save_pretrained`` — with ``AutoModelForSemanticSegmentation`` when its config names a
``*ForSemanticSegmentation`` architecture, else ``AutoModelForImageClassification``. Its preprocessing
comes from the model's ``AutoImageProcessor`` (``preprocessor_config.json``), as the arguments of
:class:`undiscard.data.transform.Preprocess` (this module does not import :mod:`undiscard.models.loading`, which loads it lazily):

- ``size``: ``{"shortest_edge": s}`` with a centre crop ``crop_size`` c: input ``c``, crop ``c / s`` (the short
  side resized to ``s``, then cropped); ConvNeXt-style ``crop_pct`` with ``shortest_edge`` s < 384: input
  ``s``, that crop; ``{"height": h, "width": w}`` (ViT, BEiT, Swin: the image resized to h x w) or
  ``shortest_edge`` >= 384: input ``h`` with no crop (``crop_pct`` 1: the short side is resized to ``h``
  and the centre taken, where the processor resizes the whole image; the same on square images);
- ``image_mean``/``image_std`` (0 and 1 without ``do_normalize``), with a ``rescale_factor`` other than
  1/255 folded into them; ``resample`` (PIL's nearest, bilinear, bicubic; others read as bilinear).

A processor that flips the channels to BGR (``do_flip_channel_order``, Apple's MobileViT checkpoints) is
a warning: undiscard feeds RGB. Class names are the config's ``id2label``. Nothing is downloaded
unless the hub is reachable and allowed: a model missing from the cache is one line naming the cache
directory and ``HF_HUB_OFFLINE``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from torch import nn

from ..errors import UndiscardError

__all__ = ["load_hf", "hf_preprocess"]

_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling values


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UndiscardError("hf: models need the extra: pip install 'undiscard[hf]' (transformers)") from None
    return transformers


def _side(size: object, key: str) -> int | None:
    """``size[key]`` of a processor's size (a dict, or transformers' ``SizeDict``), or None."""
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return None if value is None else int(value)


def hf_preprocess(processor: object, in_chans: int = 3) -> dict:
    """The :class:`~undiscard.data.transform.Preprocess` arguments of an ``AutoImageProcessor`` (see module docstring)."""
    size, crop = getattr(processor, "size", None), getattr(processor, "crop_size", None)
    short, height = _side(size, "shortest_edge"), _side(size, "height")
    cropped = bool(getattr(processor, "do_center_crop", False)) and _side(crop, "height") is not None
    crop_pct = getattr(processor, "crop_pct", None)
    if short is not None and cropped:
        input_size, pct = _side(crop, "height"), _side(crop, "height") / short
    elif short is not None and crop_pct is not None and short < 384:
        input_size, pct = short, float(crop_pct)
    elif short is not None or height is not None:
        input_size, pct = (short or height), 1.0
        if cropped:
            pct = _side(crop, "height") / input_size
            input_size = _side(crop, "height")
    else:
        raise UndiscardError(f"cannot read the image size from the processor's size {size!r}")
    scale = float(getattr(processor, "rescale_factor", 1 / 255)) * 255.0 if getattr(processor, "do_rescale", True) else 1.0
    if getattr(processor, "do_normalize", False):
        mean = tuple(float(v) / scale for v in processor.image_mean)
        std = tuple(float(v) / scale for v in processor.image_std)
    else:
        mean, std = (0.0,) * in_chans, (1.0 / scale,) * in_chans
    resample = getattr(processor, "resample", 2)
    interpolation = _RESAMPLE.get(int(getattr(resample, "value", resample)), "bilinear")
    if getattr(processor, "do_flip_channel_order", False):
        warnings.warn(f"the model's image processor ({type(processor).__name__}) flips images to BGR; undiscard "
                      "feeds RGB images", UserWarning, stacklevel=3)
    return dict(input_size=int(input_size), in_chans=in_chans, mean=mean, std=std, crop_pct=float(pct),
                interpolation=interpolation)


def _missing(name: str, err: Exception) -> UndiscardError:
    from huggingface_hub import constants

    return UndiscardError(f"hf:{name} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and cannot be "
                          "downloaded here (offline, or HF_HUB_OFFLINE=1): download it where the hub is reachable, or "
                          f"pass a save_pretrained directory as hf:/path/to/dir ({type(err).__name__})")


def load_hf(name: str, num_classes: int | None = None) -> tuple[nn.Module, dict, list[str]]:
    """The ``hf:`` model ``name`` (a hub id or a ``save_pretrained`` directory; see module docstring): the
    model in eval mode, its preprocessing arguments (:func:`hf_preprocess`) and its class names."""
    transformers = _transformers()
    local = Path(name).expanduser()
    where = str(local) if local.is_dir() else name
    try:
        config = transformers.AutoConfig.from_pretrained(where)
        dense = any(a.endswith("ForSemanticSegmentation") for a in (config.architectures or []))
        auto = transformers.AutoModelForSemanticSegmentation if dense else transformers.AutoModelForImageClassification
        model = auto.from_pretrained(where)
        processor = transformers.AutoImageProcessor.from_pretrained(where)
    except OSError as err:
        if local.is_dir():
            raise UndiscardError(f"hf:{name} is not a complete save_pretrained directory: "
                                 f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}") from None
        raise _missing(name, err) from None
    except ValueError as err:  # an architecture the auto classes do not map to an image model
        raise UndiscardError(f"hf:{name} is not an image classifier or segmenter ({str(err).splitlines()[0]})") from None
    labels = dict(getattr(config, "id2label", None) or {})
    if num_classes is not None and num_classes != len(labels):
        raise UndiscardError(f"hf:{name} has {len(labels)} classes; --num-classes {num_classes} does not fit")
    names = [str(labels.get(i, labels.get(str(i), i))) for i in range(len(labels))]
    return model.eval(), hf_preprocess(processor, int(getattr(config, "num_channels", 3))), names
