"""Pairs of views from a folder of unlabelled images, for label-free calibration.

``undiscard calibrate --objective consistency --data DIR`` needs, per image, a crop and the same scene
displaced by a few pixels of real content (no fill). :func:`image_files` lists the images under ``DIR``
(any depth, by file suffix; no class folders needed); :func:`folder_pairs` reads each one with the model's
preprocessing (:func:`undiscard.data.folder.load_image`) at ``input_size + 4 * max_shift`` pixels, so that a
crop of ``input_size`` can sit up to ``max_shift`` pixels from the centre and still move by ``max_shift``,
and cuts ``pairs_per_image`` pairs from it (:func:`undiscard.data.photos.crop_pairs`, seeded per image).
Objects are therefore ``(input_size + 4 * max_shift) / input_size`` times larger than in the model's
evaluation preprocessing (1.29 for a 224-pixel model and 16-pixel shifts).

The pairs are normalised and written, an image at a time, to two file-backed tensors
(:class:`~undiscard.data.store.DiskTensor`) in a directory the caller owns: memory holds one image,
whatever the number of images.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import UndiscardError
from .folder import load_image
from .photos import crop_pairs
from .store import DiskTensor

if TYPE_CHECKING:  # type hints only
    from .transform import Preprocess

__all__ = ["IMAGE_SUFFIXES", "image_files", "folder_pairs"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif")


def image_files(root: str | Path) -> list[Path]:
    """The image files under ``root`` (recursively, by suffix, case-insensitive), sorted; one
    :class:`~undiscard.errors.UndiscardError` for a missing folder or one without images."""
    root = Path(root)
    if not root.is_dir():
        raise UndiscardError(f"--data {root} is not a folder of images")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UndiscardError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return files


def folder_pairs(files: list[Path], pre: "Preprocess", pairs_per_image: int, max_shift: int, seed: int,
                 directory: str | Path) -> tuple[DiskTensor, DiskTensor]:
    """Normalised pairs of views (P, C, S, S) of ``files`` (P = ``pairs_per_image`` x images, S the model's
    input size), in two file-backed tensors under ``directory`` (see the module docstring)."""
    if pairs_per_image < 1 or max_shift < 1:
        raise UndiscardError(f"pairs per image and the largest shift must be positive, got {pairs_per_image} and "
                             f"{max_shift}")
    size = pre.input_size
    big = size + 4 * max_shift
    shape = (len(files) * pairs_per_image, pre.in_chans, size, size)
    a = DiskTensor(Path(directory) / "views.bin", shape, torch.float32)
    b = DiskTensor(Path(directory) / "displaced.bin", shape, torch.float32)
    mean = torch.tensor(pre.mean).view(1, -1, 1, 1)
    std = torch.tensor(pre.std).view(1, -1, 1, 1)
    kwargs = {**pre.image_kwargs(), "input_size": big, "pad_to": None}
    for k, path in enumerate(files):
        image = load_image(path, **kwargs)
        base, moved, _, _ = crop_pairs([image], pairs_per_image, size, max_shift, seed + k, jitter=max_shift)
        a.write(k * pairs_per_image, (base - mean) / std)
        b.write(k * pairs_per_image, (moved - mean) / std)
    return a, b
