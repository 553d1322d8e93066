"""Fashion-MNIST segmentation canvases: a seeded generator and the bundled test split.

No segmentation data set exists offline, so the segmentation zoo is trained and evaluated on canvases
built from real Fashion-MNIST images. A canvas is a 96x96 uint8 image on a black (0) background with
2-5 objects, each a Fashion-MNIST image resized to a random square side of 20-44 px and placed at a
random position; up to a quarter of an object may fall outside the canvas, so objects touch and cross
the border (the canvas is not padded, and a shift of the input changes what is visible). Later objects
occlude earlier ones. Each pixel's label is

    0            background
    k + 1        Fashion-MNIST class k (1 = T-shirt/top, ..., 10 = Ankle boot; :data:`CLASS_NAMES`)

:data:`IGNORE_INDEX` (255) is reserved for "no label" and never produced by the generator.

An object's mask is computed on its 28x28 source image: pixels >= :data:`THRESHOLD` (10 of 255), with
holes filled (a dark garment's interior belongs to the garment; only the background connected to the
image border is background), then resized with the image (bilinear, mask at 0.5). Only an object's
mask pixels are pasted, so every background pixel of a canvas is exactly 0 and every pixel >= THRESHOLD
belongs to an object.

Splits (no source image is shared between them):

* ``train``: objects drawn from the 55,000 Fashion-MNIST *train* images that
  :func:`undiscard.data.train_val_split` (seed 0) keeps for training, generated on the fly;
* ``val``: objects from the 5,000 train images it holds out (for model selection, per-epoch scores);
* ``test``: objects from the 10,000 *test* images; 2,000 canvases are bundled
  (``fmnist_seg_test.npz``, made by ``scripts/bundle_seg_data.py``) and are for reporting only.

Canvas ``index`` of a split is a pure function of (seed, split, index): ``np.random.SeedSequence``
keyed by all three, so any canvas can be regenerated alone, in any order, on any machine.

Why 96x96: smp's U-Net/FPN/SegFormer need a side divisible by their total stride 32 (64, 96, 128); 96
gives a 3x3 stride-32 map and room for 2-5 objects of 20-44 px, while one CPU core still trains a
~3M-parameter segmenter on 80-90k canvases in 15 minutes (the segmentation zoo; 128x128 would cost
~1.8x per canvas, i.e. about half the canvases).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UndiscardError
from .fashion_mnist import (
    CLASS_NAMES as FMNIST_CLASS_NAMES,
    load_fashion_mnist,
    train_val_split,
)

BUNDLED_SEG_TEST = Path(__file__).with_name("fmnist_seg_test.npz")
NUM_CLASSES = 11
BACKGROUND = 0
IGNORE_INDEX = 255
CLASS_NAMES: list[str] = ["background", *FMNIST_CLASS_NAMES]
THRESHOLD = 10
VAL_SIZE = 5000  # Fashion-MNIST train images held out for the val split (same split as the classification zoo)
SPLIT_SEED = 0  # seed of that train/val split of the source images
# Per-pixel statistics of train canvases scaled to [0, 1] (2,000 canvases, seed 0: scripts/bundle_seg_data.py --stats).
MEAN = 0.1025
STD = 0.2445

SegSplit = Literal["train", "val", "test"]
_STREAMS = {"train": 0, "val": 1, "test": 2}


class SegDataError(UndiscardError, ValueError):
    """Bad generator settings or a bundled file that does not match the generator."""


@dataclass(frozen=True)
class CanvasConfig:
    """Geometry of the canvases: side ``size``, ``min_objects..max_objects`` objects (inclusive) of side
    ``min_scale..max_scale`` px (inclusive), at most ``max_outside`` of an object's side outside the canvas."""

    size: int = 96
    min_objects: int = 2
    max_objects: int = 5
    min_scale: int = 20
    max_scale: int = 44
    max_outside: float = 0.25
    threshold: int = THRESHOLD

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects:
            raise SegDataError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 2 <= self.min_scale <= self.max_scale <= self.size:
            raise SegDataError(f"need 2 <= min_scale <= max_scale <= size, got {self.min_scale}, "
                               f"{self.max_scale}, {self.size}")
        if not 0 <= self.max_outside < 1:
            raise SegDataError(f"max_outside must be in [0, 1), got {self.max_outside}")
        if not 1 <= self.threshold <= 255:
            raise SegDataError(f"threshold must be in [1, 255], got {self.threshold}")


DEFAULT_CONFIG = CanvasConfig()
# One placed object: source index (into the generator's source arrays), label (1..10), top, left, side.
OBJECT_FIELDS = ("source", "label", "top", "left", "side")


def object_mask(image: np.ndarray, threshold: int = THRESHOLD) -> np.ndarray:
    """Mask (bool, same shape) of the object in a uint8 image (H, W) on a black background.

    Pixels >= ``threshold``, plus every darker pixel that the background connected to the image border
    (4-connectivity) does not reach: holes inside the object are part of it.
    """
    fg = np.asarray(image) >= threshold
    free = ~fg
    outside = np.zeros_like(fg)
    outside[0, :], outside[-1, :], outside[:, 0], outside[:, -1] = free[0, :], free[-1, :], free[:, 0], free[:, -1]
    while True:  # flood fill of the border background (grows by one pixel per pass)
        grown = outside.copy()
        grown[1:, :] |= outside[:-1, :]
        grown[:-1, :] |= outside[1:, :]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= free
        if np.array_equal(grown, outside):
            return ~outside
        outside = grown


def _resize_object(image: np.ndarray, mask: np.ndarray, side: int, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize a uint8 image and its mask to (side, side): bilinear (antialiased when shrinking), mask at 0.5,
    plus every resized pixel >= threshold (so pasted pixels >= threshold are always labelled)."""
    x = torch.from_numpy(np.stack([image.astype(np.float32), mask.astype(np.float32) * 255.0]))[None]
    y = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)[0]
    img = y[0].round().clamp(0, 255).to(torch.uint8).numpy()
    return img, (y[1].numpy() >= 127.5) | (img >= threshold)


class CanvasGenerator:
    """Canvases of one split, drawn from the source images ``images`` (N, 28, 28) uint8 with Fashion-MNIST
    labels ``labels`` (N,) in 0..9. Canvas ``index`` depends only on (seed, stream, index) and the sources.

    ``stream`` separates the splits' random streams (train 0, val 1, test 2). ``source_ids`` (N,) names
    each source in its original data set (e.g. the index into the 60k train images) for bookkeeping.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int = 0, stream: int = 0,
                 config: CanvasConfig = DEFAULT_CONFIG, source_ids: np.ndarray | None = None,
                 split: str = "custom") -> None:
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 3 or images.dtype != np.uint8 or len(images) != len(labels) or len(images) == 0:
            raise SegDataError(f"sources must be uint8 (N, H, W) with N labels, got {images.dtype} "
                               f"{images.shape} and {labels.shape}")
        if labels.min() < 0 or labels.max() >= NUM_CLASSES - 1:
            raise SegDataError(f"source labels must be in 0..{NUM_CLASSES - 2}, got {labels.min()}..{labels.max()}")
        self.images, self.labels = images, labels.astype(np.int64)
        self.source_ids = np.arange(len(images)) if source_ids is None else np.asarray(source_ids)
        self.seed, self.stream, self.config, self.split = int(seed), int(stream), config, split
        self._masks: dict[int, np.ndarray] = {}

    def __repr__(self) -> str:
        return (f"CanvasGenerator(split={self.split!r}, sources={len(self.images)}, seed={self.seed}, "
                f"stream={self.stream}, {self.config})")

    def _mask(self, k: int) -> np.ndarray:
        m = self._masks.get(k)
        if m is None:
            m = self._masks[k] = object_mask(self.images[k], self.config.threshold)
        return m

    def layout(self, index: int) -> np.ndarray:
        """The objects of canvas ``index`` in paint order: int64 (n, 5) rows (source, label, top, left, side)."""
        if index < 0:
            raise SegDataError(f"canvas index must be >= 0, got {index}")
        c = self.config
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.stream, int(index)]))
        n = int(rng.integers(c.min_objects, c.max_objects + 1))
        rows = []
        for _ in range(n):
            src = int(rng.integers(len(self.images)))
            side = int(rng.integers(c.min_scale, c.max_scale + 1))
            out = int(c.max_outside * side)
            top, left = (int(v) for v in rng.integers(-out, c.size - side + out + 1, size=2))
            rows.append((src, int(self.labels[src]) + 1, top, left, side))
        return np.asarray(rows, dtype=np.int64).reshape(n, len(OBJECT_FIELDS))

    def canvas(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Canvas ``index``: (image uint8 (S, S), label map uint8 (S, S) with values in 0..10)."""
        return self.render(self.layout(index))

    def render(self, layout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Paint the objects of ``layout`` ((n, 5), as :meth:`layout` gives) in order onto a black canvas."""
        s = self.config.size
        image = np.zeros((s, s), np.uint8)
        target = np.zeros((s, s), np.uint8)
        for src, label, top, left, side in layout.tolist():
            img, mask = _resize_object(self.images[src], self._mask(src), side, self.config.threshold)
            y0, x0 = max(0, top), max(0, left)
            y1, x1 = min(s, top + side), min(s, left + side)
            if y1 <= y0 or x1 <= x0:
                continue
            m = mask[y0 - top:y1 - top, x0 - left:x1 - left]
            image[y0:y1, x0:x1][m] = img[y0 - top:y1 - top, x0 - left:x1 - left][m]
            target[y0:y1, x0:x1][m] = label
        return image, target

    def batch(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Canvases ``indices``: (images uint8 (B, S, S), label maps uint8 (B, S, S))."""
        pairs = [self.canvas(int(i)) for i in indices]
        s = self.config.size
        if not pairs:
            return np.zeros((0, s, s), np.uint8), np.zeros((0, s, s), np.uint8)
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def canvas_generator(split: SegSplit, seed: int = 0, root: str | os.PathLike | None = None,
                     config: CanvasConfig = DEFAULT_CONFIG) -> CanvasGenerator:
    """The generator of one split (see the module docstring for which source images each split uses).

    ``root``: directory with the Fashion-MNIST idx files (default: the Debian package for train/val, the
    bundled copy for test). ``seed`` seeds the canvases; the source train/val split is always
    :func:`train_val_split` with seed :data:`SPLIT_SEED` (so it is the classification zoo's split).
    """
    if split not in _STREAMS:
        raise SegDataError(f"unknown segmentation split {split!r}: use 'train', 'val' or 'test'")
    if split == "test":
        images, labels = load_fashion_mnist("test", root)
        ids = np.arange(len(images))
    else:
        images, labels = load_fashion_mnist("train", root)
        tr, va = train_val_split(len(images), VAL_SIZE, SPLIT_SEED)
        ids = tr if split == "train" else va
        images, labels = images[ids], labels[ids]
    return CanvasGenerator(images, labels, seed=seed, stream=_STREAMS[split], config=config,
                           source_ids=ids, split=split)


def load_seg_test(path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The bundled test split: (images uint8 (N, 96, 96), label maps uint8 (N, 96, 96)), N = 2,000.

    Canvas i is ``canvas_generator("test", seed).canvas(i)`` with the seed and config stored in the file
    (:func:`seg_test_info`). Raises FileNotFoundError (one line, with the command that makes it) if absent.
    """
    p = Path(BUNDLED_SEG_TEST if path is None else path)
    if not p.is_file():
        raise FileNotFoundError(f"segmentation test split not found: {p} (make it with: python scripts/bundle_seg_data.py)")
    with np.load(p) as z:
        return z["images"].astype(np.uint8), z["masks"].astype(np.uint8)


def seg_test_info(path: str | os.PathLike | None = None) -> dict:
    """What the bundled test file records: ``seed``, ``config`` (a CanvasConfig), ``layouts`` (N, 5, 5)
    int64 object rows padded with -1 (sources index the Fashion-MNIST test images)."""
    p = Path(BUNDLED_SEG_TEST if path is None else path)
    with np.load(p) as z:
        cfg = dict(zip(z["config_keys"].tolist(), z["config_values"].tolist()))
        return {"seed": int(z["seed"]), "config": CanvasConfig(**{k: type(getattr(DEFAULT_CONFIG, k))(v)
                                                               for k, v in cfg.items()}),
                "layouts": z["layouts"].astype(np.int64)}


def save_seg_split(path: str | os.PathLike, gen: CanvasGenerator, n: int) -> None:
    """Write canvases 0..n-1 of ``gen`` with its seed, config and layouts (np.savez_compressed, uint8 maps),
    atomically (:func:`undiscard._atomic.atomic_write`)."""
    from .._atomic import atomic_write

    images, masks = gen.batch(range(n))
    layouts = np.full((n, gen.config.max_objects, len(OBJECT_FIELDS)), -1, np.int64)
    for i in range(n):
        lay = gen.layout(i)
        layouts[i, :len(lay)] = lay
    cfg = asdict(gen.config)
    with atomic_write(path) as f:
        np.savez_compressed(f, images=images, masks=masks, seed=np.int64(gen.seed), layouts=layouts.astype(np.int16),
                            config_keys=np.array(list(cfg)), config_values=np.array(list(cfg.values()), np.float64))


def to_input(images: np.ndarray | torch.Tensor, in_chans: int = 1) -> torch.Tensor:
    """Canvases uint8 (N, H, W) -> normalised float32 model input (N, in_chans, H, W) ((x/255 - MEAN) / STD)."""
    x = torch.as_tensor(np.asarray(images) if isinstance(images, np.ndarray) else images)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    x = (x.float() / 255.0 - MEAN) / STD
    return x.expand(-1, in_chans, -1, -1).contiguous() if in_chans != x.shape[1] else x


__all__ = [
    "BACKGROUND", "BUNDLED_SEG_TEST", "CLASS_NAMES", "CanvasConfig", "CanvasGenerator", "DEFAULT_CONFIG",
    "IGNORE_INDEX", "MEAN", "NUM_CLASSES", "OBJECT_FIELDS", "STD", "SegDataError", "THRESHOLD", "VAL_SIZE",
    "canvas_generator", "load_seg_test", "object_mask", "save_seg_split", "seg_test_info", "to_input",
]
