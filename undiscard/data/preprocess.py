"""Fashion-MNIST images -> model inputs for the bundled model zoo.

28x28 uint8 -> float in [0, 1] -> zero-padded (2 px each side) to 32x32, or bilinearly resized when a
model needs a different size -> normalised with the Fashion-MNIST mean/std -> 1 channel (repeated to 3
when a model wants RGB). Padding happens before normalisation, so the border is the same black (0) as
the images' own background.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .fashion_mnist import IMAGE_SIZE, MEAN, STD


def to_float(images: np.ndarray | Tensor) -> Tensor:
    """uint8 (N, 28, 28) or (N, 1, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1]; float input is taken as
    already in [0, 1]. Other integer types (uint16, int64, ...) raise ValueError: their white is not
    known, and passing them through unscaled would give silently wrong inputs."""
    x = torch.as_tensor(images)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if x.dtype == torch.bool:
        return x.float()
    if not x.is_floating_point():
        raise ValueError(f"images must be uint8 (0..255) or float in [0, 1], got {x.dtype}: scale them first")
    return x.float()


def resize(x: Tensor, input_size: int) -> Tensor:
    """(N, C, 28, 28) -> (N, C, S, S): zero-pad symmetrically when S >= 28 and S - 28 is even, else bilinear resize."""
    h = x.shape[-1]
    if h == input_size:
        return x
    diff = input_size - h
    if diff > 0 and diff % 2 == 0 and input_size <= 2 * h:
        return F.pad(x, (diff // 2,) * 4)
    return F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=diff < 0)


def normalize(x: Tensor, in_chans: int = 1, mean: float = MEAN, std: float = STD) -> Tensor:
    """Normalise [0, 1] images (N, 1, H, W) with the data set's mean/std; repeat to ``in_chans`` channels."""
    x = (x - mean) / std
    if in_chans != x.shape[1]:
        x = x.expand(-1, in_chans, -1, -1).contiguous()
    return x


def preprocess(images: np.ndarray | Tensor, input_size: int = 32, in_chans: int = 1) -> Tensor:
    """Fashion-MNIST images (uint8 (N, 28, 28), or float [0, 1] (N, 1, H, W)) -> normalised float32
    model input (N, in_chans, input_size, input_size)."""
    return normalize(resize(to_float(images), input_size), in_chans)


__all__ = ["to_float", "resize", "normalize", "preprocess", "IMAGE_SIZE"]
