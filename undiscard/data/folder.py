"""Users' own images: an ImageFolder-style directory read with PIL, preprocessed like the model expects.

Layout: ``DIR/CLASS/IMAGE`` — one subfolder per class, labels from the sorted folder names (0, 1, ...),
or from a class map that names each folder's index in the model's output (e.g. ImageNet WordNet ids).
Files whose extension is not an image type are **skipped and counted**; images PIL cannot read are
skipped and counted too. Both counts are reported, so nothing is dropped silently.

Preprocessing (:class:`undiscard.models.Preprocess`): convert to RGB or grayscale as the model's input
channels require; if ``pad_to`` is set and the image is no larger, zero-pad it to that size (the zoo's
Fashion-MNIST convention), otherwise resize the short side to ``input_size / crop_pct`` (bilinear) and
centre-crop ``input_size``; scale to [0, 1]; normalise with the model's mean and std.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UndiscardError

__all__ = ["IMAGE_EXTENSIONS", "FolderData", "scan_folder", "load_image", "load_class_map", "normalize_batch"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class FolderData:
    """The images found: paths, labels, class names (sorted folder names), and what was skipped."""

    paths: list[Path]
    labels: list[int]
    classes: list[str]
    skipped_non_image: int = 0
    skipped_unreadable: list[str] = field(default_factory=list)


def load_class_map(path: str | Path) -> dict[str, int]:
    """Folder name -> class index: a JSON object, or a text file with one name per line (the line number
    is the index; only the first whitespace-separated word of a line is used, so ImageNet's
    ``n01440764 tench, Tinca tinca`` lines work)."""
    p = Path(path)
    if not p.is_file():
        raise UndiscardError(f"class map not found: {p}")
    text = p.read_text()
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UndiscardError(f"class map {p} is not valid JSON: {err}") from None
        if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
            raise UndiscardError(f"class map {p} must be a JSON object of folder name -> integer index")
        return {str(k): int(v) for k, v in data.items()}
    names = [line.split()[0] for line in text.splitlines() if line.strip()]
    return {name: i for i, name in enumerate(names)}


def scan_folder(root: str | Path, class_map: dict[str, int] | None = None) -> FolderData:
    """Find ``root/CLASS/*`` images (see module docstring). Errors name the problem in one line."""
    root = Path(root)
    if not root.exists():
        raise UndiscardError(f"data directory not found: {root}")
    if not root.is_dir():
        raise UndiscardError(f"not a directory: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UndiscardError(f"no class subfolders in {root} (expected DIR/CLASS/IMAGE)")
    if class_map is not None:
        unknown = [c for c in classes if c not in class_map]
        if unknown:
            raise UndiscardError(f"class map has no index for folder(s) {', '.join(unknown[:5])}"
                                 + (" ..." if len(unknown) > 5 else ""))
    paths, labels, skipped = [], [], 0
    for i, c in enumerate(classes):
        for f in sorted((root / c).rglob("*")):
            if not f.is_file() or f.name.startswith("."):
                continue
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped += 1
                continue
            paths.append(f)
            labels.append(class_map[c] if class_map is not None else i)
    if not paths:
        raise UndiscardError(f"no images found in {root} ({skipped} non-image files skipped)")
    return FolderData(paths, labels, classes, skipped_non_image=skipped)


def load_image(path: Path, in_chans: int, input_size: int, crop_pct: float, pad_to: int | None) -> Tensor:
    """One image as float (in_chans, input_size, input_size) in [0, 1] (see module docstring)."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("L" if in_chans == 1 else "RGB")
        w, h = img.size
        if pad_to is not None and max(w, h) <= pad_to:
            arr = np.asarray(img, dtype=np.float32) / 255.0
            x = torch.from_numpy(arr).reshape(h, w, -1).permute(2, 0, 1)
            top, left = (pad_to - h) // 2, (pad_to - w) // 2
            return F.pad(x, (left, pad_to - w - left, top, pad_to - h - top))
        short = max(input_size, int(math.floor(input_size / crop_pct)))
        scale = short / min(w, h)
        img = img.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - input_size) // 2, (h - input_size) // 2
        img = img.crop((left, top, left + input_size, top + input_size))
        arr = np.asarray(img, dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).reshape(input_size, input_size, -1).permute(2, 0, 1)
    if in_chans == 3 and x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x.contiguous()


def normalize_batch(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(N, C, H, W) in [0, 1] -> normalised with per-channel mean/std (a single value is broadcast)."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s
