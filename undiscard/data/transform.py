"""How images are turned into a model's input: the :class:`Preprocess` recipe (size, crop, normalisation).

Every model source (:mod:`undiscard.models.loading`) gives one; :func:`undiscard.data.folder.load_image`
applies it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UndiscardError

__all__ = ["Preprocess", "IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass
class Preprocess:
    """How images are turned into model input (done by :func:`undiscard.data.folder.load_image`).

    Default (timm/torchvision style): resize the short side to ``input_size / crop_pct``, centre-crop
    ``input_size``. ``crop_first`` (TensorFlow EfficientNet style): centre-crop a square of
    ``crop_pct`` times the short side first, then resize it to ``input_size``. Then scale to [0, 1]
    and normalise per channel: ``(x - mean) / std``.
    """

    input_size: int = 224
    in_chans: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875
    pad_to: int | None = None  # zoo: zero-pad (not resize) small images to this size
    interpolation: str = "bilinear"  # one of INTERPOLATIONS (PIL resampling filter)
    crop_first: bool = False  # crop crop_pct of the short side, then resize (TF EfficientNet eval)

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise UndiscardError(f"unknown interpolation {self.interpolation!r}: expected one of "
                                 f"{', '.join(INTERPOLATIONS)}")

    def image_kwargs(self) -> dict:
        """The geometry arguments of :func:`undiscard.data.folder.load_image` for this preprocessing."""
        return {"in_chans": self.in_chans, "input_size": self.input_size, "crop_pct": self.crop_pct,
                "pad_to": self.pad_to, "interpolation": self.interpolation, "crop_first": self.crop_first}
