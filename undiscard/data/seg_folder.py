"""Segmentation folders: ``DIR/images/NAME.png`` with ``DIR/masks/NAME.png`` (matching names), read and written.

The layout of mmsegmentation's and smp's custom data sets. Images are any format PIL reads; masks are
PNGs holding one class index per pixel, either as a **palette** ("P" mode: the palette index is the
label, the colours only show it) or **grayscale** ("L"/"I" mode: the value is the label). An RGB mask is
refused (its colours would need a colour -> class map). ``ignore_index`` (255 by default) marks pixels
without a label; they are counted nowhere.

Pairs are matched by their path inside ``images/`` and ``masks/`` without the suffix (``a.jpg`` with
``a.png``; sub-folders alike); images without a mask and masks without an image are skipped and counted.
Both folders are walked by the one folder walker (:mod:`undiscard.data.walk`): links to folders followed
once, and whatever is not read is named with its reason — hidden entries, FIFOs, broken links, files
that are not images, a second image or mask of one name, and masks in a lossy format (JPEG, WebP: their
values are not exact class indices; masks may be PNG, BMP, TIFF, GIF or PGM). A pair whose image or mask
cannot be decoded (truncated, corrupt) is skipped and named too, and the rest of the folder is read.
:func:`write_seg_folder` writes canvases (e.g. the bundled test split, ``scripts/export_seg_folder.py``) in
this layout, masks as palette PNGs (:data:`PALETTE`).
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UndiscardError
from .walk import FolderWalk, Skipped

__all__ = ["SegFolder", "SegFolderError", "scan_seg_folder", "read_seg_folder", "read_mask", "write_seg_folder",
           "PALETTE", "palette_image", "colorize", "overlay", "save_marked_png", "is_marked_png", "PNG_MARK"]

PNG_MARK = "undiscard"  # the PNG "Software" text chunk of every mask and overlay undiscard writes

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
MASK_SUFFIXES = {".png", ".bmp", ".tif", ".tiff", ".gif", ".pgm"}  # lossless: the values are the labels
LOSSY_SUFFIXES = {".jpg", ".jpeg", ".webp"}


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
    skipped: list[Skipped] = field(default_factory=list)  # entries not read, and pairs that could not be


def _by_name(walk: FolderWalk, folder: Path, suffixes: set[str], what: str) -> tuple[dict[str, Path], set[str]]:
    """``folder``'s files of ``suffixes`` by their path inside it without the suffix; the rest skipped and
    named. Also the names whose file was refused (a lossy mask), so they are not counted as unmatched."""
    found: dict[str, Path] = {}
    refused: set[str] = set()
    for f in walk.files(folder):
        name = f.relative_to(folder).with_suffix("").as_posix()
        suffix = f.suffix.lower()
        if suffix not in suffixes:
            if what == "mask" and suffix in LOSSY_SUFFIXES:
                walk.skipped.append(Skipped(str(f), f"a {suffix.lstrip('.').upper()} mask: lossy compression changes "
                                                    "the class indices; save masks as PNG"))
                refused.add(name)
            else:
                walk.skipped.append(Skipped(str(f), f"not {'an image' if what == 'image' else 'a mask'} "
                                                    f"(extension {suffix or 'none'})"))
            continue
        if name in found:
            walk.skipped.append(Skipped(str(f), f"a second {what} named {name} (beside {found[name].name})"))
            continue
        found[name] = f
    return found, refused


def scan_seg_folder(root: str | os.PathLike) -> SegFolder:
    """Pairs of ``root/images/*`` and ``root/masks/*`` with the same name (see the module docstring; one
    line if none)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"segmentation folder not found: {root}")
    img_dir, mask_dir = root / "images", root / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise SegFolderError(f"{root} has no {d.name}/ folder: a segmentation folder holds images/NAME.png "
                                 "and masks/NAME.png with matching names")
    walk = FolderWalk()
    images, _ = _by_name(walk, img_dir, IMAGE_SUFFIXES, "image")
    masks, refused = _by_name(walk, mask_dir, MASK_SUFFIXES, "mask")
    names = sorted(set(images) & set(masks))
    if not names:
        lossy = " (some masks are JPEG or WebP: save them as PNG)" if refused else ""
        raise SegFolderError(f"no image in {img_dir} has a mask of the same name in {mask_dir}{lossy}")
    return SegFolder(root, [images[n] for n in names], [masks[n] for n in names],
                     sorted((set(images) ^ set(masks)) - refused), walk.skipped)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A label map (H, W) int64 from a palette or grayscale PNG (see the module docstring)."""
    with Image.open(path) as im:
        if im.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
            return np.array(im).astype(np.int64)  # "P": the palette indices; "L"/"I": the values
        if im.mode == "LA":
            return np.asarray(im.getchannel(0), dtype=np.int64)
        raise SegFolderError(f"mask {path} is a {im.mode} image: masks must be palette or grayscale PNGs "
                             "holding one class index per pixel")


# how PIL fails on a broken file
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, MemoryError, struct.error, Image.DecompressionBombError)


def _is_mask_error(image: Path, in_chans: int) -> bool:
    """Whether, of a pair that failed, the image reads (so the mask is the broken file)."""
    try:
        _read_image(image, in_chans)
        return True
    except _DECODE_ERRORS:
        return False


def _read_image(path: Path, in_chans: int) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("L" if in_chans == 1 else "RGB")
        arr = np.array(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def read_seg_folder(folder: SegFolder, in_chans: int = 3, size: int | None = None,
                    limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images as float [0, 1] (N, in_chans, H, W), masks int64 (N, H, W), names (of the pairs read: a pair
    that cannot be decoded is appended to ``folder.skipped`` and left out). With ``size``, each pair
    is resized to (size, size): the image bilinearly, the mask by nearest neighbour. Without it, every
    image must have the size of the first (one line naming the first that does not), and each mask the
    size of its image."""
    pairs = list(zip(folder.images, folder.masks))[:limit]
    xs, ys, names = [], [], []
    for ip, mp in pairs:
        try:
            img, mask = _read_image(ip, in_chans), read_mask(mp)
        except SegFolderError:
            raise
        except _DECODE_ERRORS as err:  # one broken file: skipped and named, the rest is read
            which = mp if _is_mask_error(ip, in_chans) else ip
            first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
            folder.skipped.append(Skipped(str(which), f"cannot be read ({first}); its pair is skipped"))
            continue
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
        names.append(ip.stem)
    if not xs:
        raise SegFolderError(f"none of the {len(pairs)} image/mask pairs in {folder.root} could be read "
                             f"(first: {folder.skipped[-1].path}: {folder.skipped[-1].reason})")
    return torch.stack(xs), torch.stack(ys), names


def palette_image(labels: np.ndarray) -> Image.Image:
    """A palette PNG image ("P" mode, :data:`PALETTE`) of a label map (H, W) with values 0..255."""
    labels = np.asarray(labels)
    if labels.min() < 0 or labels.max() > 255:
        raise SegFolderError(f"label values must be in 0..255 for a palette PNG, got {labels.min()}..{labels.max()}")
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette(PALETTE.reshape(-1).tolist())
    return im


def save_marked_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` as a PNG at ``path`` atomically (:func:`undiscard._atomic.atomic_write`), with the
    text chunk ``Software: undiscard`` that :func:`is_marked_png` recognises."""
    from PIL.PngImagePlugin import PngInfo

    from .._atomic import atomic_write

    info = PngInfo()
    info.add_text("Software", PNG_MARK)
    with atomic_write(path) as f:
        image.save(f, format="PNG", pnginfo=info)
    return Path(path)


def is_marked_png(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a PNG that undiscard wrote (:func:`save_marked_png`); any file that cannot be
    opened as one is not."""
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and str(im.info.get("Software", "")) == PNG_MARK
    except Exception:  # noqa: BLE001 - not a PNG, unreadable, over the pixel limit: not ours
        return False


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
    (grayscale or RGB) and ``root/masks/NAME.png`` (palette), each atomically
    (:func:`undiscard._atomic.atomic_write`: never through a link). Default names: 0000, 0001, ..."""
    from .._atomic import atomic_write

    root = Path(root)
    names = names or [f"{i:04d}" for i in range(len(images))]
    for name, img, mask in zip(names, images, masks):
        for path, im in ((root / "images" / f"{name}.png", Image.fromarray(np.asarray(img, np.uint8))),
                         (root / "masks" / f"{name}.png", palette_image(mask))):
            with atomic_write(path) as f:
                im.save(f, format="PNG")
    return root
