"""Natural photos bundled with the package, and shifted pairs of crops from them.

Five labelled sanity-check photos (288x288 JPEGs made by ``scripts/bundle_photos.py`` from
scikit-image's public-domain samples: :func:`photo_names`, :func:`load_photo`) are what the tests and
``predict`` examples read.

Two more sets of freely licensed photos (320x320, same script; sources and licenses in ``photos.tsv``
beside them), never mixed: ``calibration`` (unlabelled: what label-free calibration ranks states on) and
``evaluation`` (some labelled with the ImageNet classes they clearly show). :func:`photo_set` loads one;
:func:`crop_pairs` makes pairs from any list of photos, each pair a crop at a seeded position near the
centre and the same scene displaced by 1..``max_shift`` px.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .shift import random_offsets

__all__ = ["PHOTO_DIR", "PHOTO_SETS", "Photo", "photo_names", "load_photo", "photo_set",
           "crop_pairs"]

PHOTO_DIR = Path(__file__).with_name("photos")
PHOTO_SETS = ("calibration", "evaluation")


def photo_names() -> list[str]:
    return sorted(p.stem for p in PHOTO_DIR.glob("*.jpg"))


def _read(path: Path) -> Tensor:
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_photo(name: str) -> Tensor:
    """A bundled demo photo as float (3, 288, 288) in [0, 1]."""
    return _read(PHOTO_DIR / f"{name}.jpg")


@dataclass(frozen=True)
class Photo:
    """One photo of a set: its name, pixels (3, H, W) in [0, 1], and the ImageNet classes (WordNet ids) it
    clearly shows (empty: no label); source and license are in ``photos.tsv``."""

    name: str
    image: Tensor
    labels: tuple[str, ...]


def photo_set(which: str) -> list[Photo]:
    """The photos of set ``which`` (``"calibration"`` or ``"evaluation"``), sorted by name."""
    from ..errors import UndiscardError

    if which not in PHOTO_SETS:
        raise UndiscardError(f"unknown photo set {which!r}: expected one of {', '.join(PHOTO_SETS)}")
    with open(PHOTO_DIR / "photos.tsv", newline="") as f:
        rows = [r for r in csv.DictReader((line for line in f if not line.startswith("#")), delimiter="\t")]
    return [Photo(r["name"], _read(PHOTO_DIR / which / f"{r['name']}.jpg"),
                  tuple(w for w in r["imagenet"].split("|") if w))
            for r in sorted(rows, key=lambda r: r["name"]) if r["set"] == which]


def crop_pairs(images: Sequence[Tensor], pairs_per_photo: int, size: int, max_shift: int = 16, seed: int = 0,
               jitter: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pairs of crops of the same scenes: ``size`` x ``size`` crops (P*k, 3, size, size) at seeded positions
    within ``jitter`` px of each photo's centre (default: as far as the photo allows after ``max_shift``),
    the same crops displaced by seeded offsets with 1 <= max(|dy|, |dx|) <= ``max_shift`` (real content, no
    fill), the offsets (P*k, 2), and each pair's photo index (P*k,), for k = ``pairs_per_photo``."""
    base, moved, offsets, owner = [], [], [], []
    for p, img in enumerate(images):
        margin = (min(img.shape[-2:]) - size) // 2
        reach = margin - max_shift if jitter is None else jitter
        if reach < 0 or reach + max_shift > margin:
            raise ValueError(f"photo {p} ({tuple(img.shape[-2:])}) is too small for {size} px crops moved by "
                             f"{max_shift} px")
        g = torch.Generator().manual_seed(seed * 7919 + p)
        corners = torch.randint(-reach, reach + 1, (pairs_per_photo, 2), generator=g) + margin
        moves = random_offsets(pairs_per_photo, max_shift, seed + p).tolist()
        for (top, left), (dy, dx) in zip(corners.tolist(), moves):
            base.append(img[:, top:top + size, left:left + size])
            moved.append(img[:, top + dy:top + dy + size, left + dx:left + dx + size])
            offsets.append((dy, dx))
            owner.append(p)
    return torch.stack(base), torch.stack(moved), torch.tensor(offsets), torch.tensor(owner)
