"""A few natural photos bundled with the package, and shifted pairs of crops from them.

The photos (288x288 JPEGs made by ``scripts/bundle_photos.py`` from scikit-image's public-domain
samples) let the demo measure the shift consistency of a real ImageNet model with no data set: a pair
is the centre 224x224 crop and the crop displaced by (dy, dx) pixels — a real translation of the scene,
no zero fill. Offsets are seeded, with 1 <= max(|dy|, |dx|) <= 32.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .shift import random_offsets

__all__ = ["PHOTO_DIR", "photo_names", "load_photo", "shifted_crops"]

PHOTO_DIR = Path(__file__).with_name("photos")


def photo_names() -> list[str]:
    return sorted(p.stem for p in PHOTO_DIR.glob("*.jpg"))


def load_photo(name: str) -> Tensor:
    """A bundled photo as float (3, 288, 288) in [0, 1]."""
    from PIL import Image

    with Image.open(PHOTO_DIR / f"{name}.jpg") as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def shifted_crops(pairs_per_photo: int, seed: int = 0, size: int = 224, max_shift: int = 32) -> tuple[Tensor, Tensor, Tensor]:
    """Centre crops (P, 3, size, size), shifted crops (P*k, 3, size, size) and the index of each shifted
    crop's centre crop (P*k,), for every bundled photo with k = ``pairs_per_photo`` seeded offsets."""
    centres, shifted, owner = [], [], []
    for p, name in enumerate(photo_names()):
        img = load_photo(name)
        margin = (img.shape[-1] - size) // 2
        if margin < max_shift:
            raise ValueError(f"photo {name} is too small for shifts of {max_shift} px")
        centres.append(img[:, margin:margin + size, margin:margin + size])
        for dy, dx in random_offsets(pairs_per_photo, max_shift, seed + p).tolist():
            shifted.append(img[:, margin + dy:margin + dy + size, margin + dx:margin + dx + size])
            owner.append(p)
    return torch.stack(centres), torch.stack(shifted), torch.tensor(owner)
