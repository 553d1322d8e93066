"""Segmentation folders: ``DIR/images/NAME.png`` with ``DIR/masks/NAME.png`` (matching names), read and written.

The layout of mmsegmentation's and smp's custom data sets. Images are any format PIL reads; masks are
PNGs holding one class index per pixel, either as a **palette** ("P" mode: the palette index is the
label, the colours only show it) or **grayscale** ("L"/"I" mode: the value is the label). An RGB mask is
refused (its colours would need a colour -> class map). ``ignore_index`` (255 by default) marks pixels
without a label; they are counted nowhere.

Pairs are matched by file stem (``a.jpg`` with ``a.png``); images without a mask and masks without an
image are skipped and counted. :func:`write_seg_folder` writes canvases (e.g. the bundled test split,
``scripts/export_seg_folder.py``) in this layout, masks as palette PNGs (:data:`PALETTE`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UndiscardError

__all__ = ["SegFolder", "SegFolderError", "scan_seg_folder", "read_seg_folder", "read_mask", "write_seg_folder",
           "PALETTE", "palette_image", "colorize", "overlay"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


class SegFolderError(UndiscardError, ValueError):
    """A segmentation folder that is missing, empty, or holds a mask that is not a label map."""


def _palette() -> np.ndarray:
    """256 RGB colours: 0 black (background), 1..20 distinct colours (tab20-like), 255 white (ignore),
    the rest a deterministic spread."""
    base = [(0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232),
            (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210),
            (199, 199, 199), (219, 219, 141), (158, 218, 229)]
    rng = np.random.default_rng(0)
    pal = rng.integers(40, 256, size=(256, 3)).astype(np.uint8)
    pal[:len(base)] = np.asarray(base, np.uint8)
    pal[255] = 255
    return pal


PALETTE: np.ndarray = _palette()  # (256, 3) uint8


@dataclass
class SegFolder:
    """Matched (image, mask) paths of a folder, sorted by name, and what was skipped."""

    root: Path
    images: list[Path]
    masks: list[Path]
    unmatched: list[str] = field(default_factory=list)  # names with an image or a mask but not both


def scan_seg_folder(root: str | os.PathLike) -> SegFolder:
    """Pairs of ``root/images/*`` and ``root/masks/*.png`` with the same stem (one line if none)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"segmentation folder not found: {root}")
    img_dir, mask_dir = root / "images", root / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise SegFolderError(f"{root} has no {d.name}/ folder: a segmentation folder holds images/NAME.png "
                                 "and masks/NAME.png with matching names")
    images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.suffix.lower() == ".png"}
    names = sorted(set(images) & set(masks))
    if not names:
        raise SegFolderError(f"no image in {img_dir} has a mask of the same name in {mask_dir} (masks are .png)")
    return SegFolder(root, [images[n] for n in names], [masks[n] for n in names],
                     sorted(set(images) ^ set(masks)))


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A label map (H, W) int64 from a palette or grayscale PNG (see the module docstring)."""
    with Image.open(path) as im:
        if im.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
            return np.array(im).astype(np.int64)  # "P": the palette indices; "L"/"I": the values
        if im.mode == "LA":
            return np.asarray(im.getchannel(0), dtype=np.int64)
        raise SegFolderError(f"mask {path} is a {im.mode} image: masks must be palette or grayscale PNGs "
                             "holding one class index per pixel")


def _read_image(path: Path, in_chans: int) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("L" if in_chans == 1 else "RGB")
        arr = np.array(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def read_seg_folder(folder: SegFolder, in_chans: int = 3, size: int | None = None,
                    limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images as float [0, 1] (N, in_chans, H, W), masks int64 (N, H, W), names. With ``size``, each pair
    is resized to (size, size): the image bilinearly, the mask by nearest neighbour. Without it, every
    image must have the size of the first (one line naming the first that does not), and each mask the
    size of its image."""
    pairs = list(zip(folder.images, folder.masks))[:limit]
    xs, ys = [], []
    for ip, mp in pairs:
        img, mask = _read_image(ip, in_chans), read_mask(mp)
        if img.shape[1:] != mask.shape:
            raise SegFolderError(f"image {ip.name} is {img.shape[2]}x{img.shape[1]} but its mask is "
                                 f"{mask.shape[1]}x{mask.shape[0]}")
        x = torch.from_numpy(img).float().div(255.0)
        y = torch.from_numpy(mask)
        if size is not None and x.shape[-2:] != (size, size):
            x = torch.nn.functional.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False,
                                                antialias=True)[0]
            y = torch.nn.functional.interpolate(y[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()
        if xs and x.shape != xs[0].shape:
            raise SegFolderError(f"image {ip.name} is {x.shape[-1]}x{x.shape[-2]}, the first is "
                                 f"{xs[0].shape[-1]}x{xs[0].shape[-2]}: give images of one size (or a model "
                                 "input size to resize to)")
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys), [p.stem for p, _ in pairs]


def palette_image(labels: np.ndarray) -> Image.Image:
    """A palette PNG image ("P" mode, :data:`PALETTE`) of a label map (H, W) with values 0..255."""
    labels = np.asarray(labels)
    if labels.min() < 0 or labels.max() > 255:
        raise SegFolderError(f"label values must be in 0..255 for a palette PNG, got {labels.min()}..{labels.max()}")
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette(PALETTE.reshape(-1).tolist())
    return im


def colorize(labels: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) uint8 of a label map, in :data:`PALETTE` colours."""
    return PALETTE[np.asarray(labels).astype(np.int64).clip(0, 255)]


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB (H, W, 3) uint8: the image (H, W) or (H, W, 3) uint8 blended with the coloured labels where they
    are not background (0)."""
    img = np.asarray(image)
    img = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img[..., :3]
    col = colorize(labels).astype(np.float32)
    fg = (np.asarray(labels) != 0)[..., None]
    out = np.where(fg, (1 - alpha) * img.astype(np.float32) + alpha * col, img.astype(np.float32))
    return out.round().clip(0, 255).astype(np.uint8)


def write_seg_folder(root: str | os.PathLike, images: np.ndarray, masks: np.ndarray,
                     names: list[str] | None = None) -> Path:
    """Write uint8 images (N, H, W) or (N, H, W, 3) and label maps (N, H, W) as ``root/images/NAME.png``
    (grayscale or RGB) and ``root/masks/NAME.png`` (palette). Default names: 0000, 0001, ..."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    names = names or [f"{i:04d}" for i in range(len(images))]
    for name, img, mask in zip(names, images, masks):
        Image.fromarray(np.asarray(img, np.uint8)).save(root / "images" / f"{name}.png")
        palette_image(mask).save(root / "masks" / f"{name}.png")
    return root
