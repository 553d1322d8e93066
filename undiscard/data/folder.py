"""Users' own images: an ImageFolder-style directory read with PIL, preprocessed like the model expects.

Layout: ``DIR/CLASS/IMAGE`` — one subfolder per class, labels from the sorted folder names (0, 1, ...),
or from a class map that names each folder's index in the model's output (e.g. ImageNet WordNet ids;
the whole rule is :func:`undiscard.data.labels.folder_labels`). Files whose extension is not an image type
are **skipped and counted**; images PIL cannot read (corrupt, truncated, over PIL's decompression-bomb
pixel limit) are skipped and counted too; entries that are not read at all (hidden names, broken or
looping links, FIFOs, devices, files outside the class folders: :mod:`undiscard.data.walk`) are skipped and
named with their reason. All are reported, so nothing is dropped silently.

Preprocessing (:class:`undiscard.data.transform.Preprocess`): convert to RGB or grayscale as the model's input
channels require; if ``pad_to`` is set and the image is no larger, zero-pad it to that size (the zoo's
Fashion-MNIST convention), otherwise resize the short side to ``input_size / crop_pct`` and centre-crop
``input_size`` (or, for TensorFlow-trained models, ``crop_first``: crop the centre ``crop_pct`` of the short
side, then resize), with the model's interpolation (bilinear or bicubic); scale to [0, 1]; normalise with
the model's mean and std.
"""
from __future__ import annotations

import math
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UndiscardError
from .labels import IMAGENET_CLASS_MAP, detect_imagenet_classes, load_class_map
from .walk import FolderWalk, Skipped, describe_skipped

__all__ = ["IMAGE_EXTENSIONS", "FolderData", "FolderImages", "FolderItem", "ImageReadError", "scan_folder",
           "load_image", "resize_and_crop", "load_class_map", "detect_imagenet_classes", "IMAGENET_CLASS_MAP",
           "normalize_batch"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class FolderData:
    """The images found: paths, labels, class names (sorted folder names), and what was skipped."""

    paths: list[Path]
    labels: list[int]
    classes: list[str]
    skipped_non_image: int = 0
    skipped_unreadable: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)  # entries not read at all, with the reason


def scan_folder(root: str | Path, class_map: dict[str, int] | None = None) -> FolderData:
    """Find ``root/CLASS/*`` images (see module docstring) with the one folder walker
    (:class:`undiscard.data.walk.FolderWalk`): symbolic links to folders are followed once, and every entry
    that is not read (hidden, a broken link, a FIFO, a file outside the class folders, ...) is in
    ``skipped`` with its reason. Labels are the sorted folder positions, or ``class_map``'s (every folder
    must have an index; :func:`undiscard.data.labels.folder_labels` is the whole rule). Errors name the
    problem in one line."""
    root = Path(root)
    if not root.exists():
        raise UndiscardError(f"data directory not found: {root}")
    if not root.is_dir():
        raise UndiscardError(f"not a directory: {root}")
    walk = FolderWalk()
    walk.enter(root)
    dirs, loose = walk.entries(root)
    walk.skipped += [Skipped(str(f), "not in a class folder (the layout is DIR/CLASS/IMAGE)") for f in loose]
    classes = [d.name for d in dirs]
    if not classes:
        raise UndiscardError(f"no class subfolders in {root} (expected DIR/CLASS/IMAGE)")
    if class_map is not None:
        unknown = [c for c in classes if c not in class_map]
        if unknown:
            raise UndiscardError(f"class map has no index for folder(s) {', '.join(unknown[:5])}"
                                 + (" ..." if len(unknown) > 5 else ""))
    paths, labels, skipped = [], [], 0
    for i, c in enumerate(classes):
        for f in walk.files(root / c):
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped += 1
                continue
            paths.append(f)
            labels.append(class_map[c] if class_map is not None else i)
    if not paths:
        other = f", {describe_skipped(walk.skipped)} not read" if walk.skipped else ""
        raise UndiscardError(f"no images found in {root} ({skipped} non-image files skipped{other})")
    return FolderData(paths, labels, classes, skipped_non_image=skipped, skipped=walk.skipped)


class FolderItem(NamedTuple):
    """One item of :class:`FolderImages`: the image as float (C, H, W) in [0, 1] (None when the file could
    not be read), its label, its position in the dataset's ``order`` and its path."""

    image: Tensor | None
    label: int
    position: int
    path: str


class FolderImages(torch.utils.data.Dataset):
    """Images ``order`` (indices into ``data.paths``) of a scanned folder as a ``torch.utils.data.Dataset``:
    item ``p`` is image ``order[p]``, read from disk by :func:`load_image` only when asked for, so a
    ``DataLoader`` over it holds a few batches in memory whatever the folder's size.

    An image that cannot be read (:func:`load_image`'s :class:`ImageReadError`, or any OSError/ValueError
    PIL raises) is an item with ``image=None``, to be skipped and counted by whoever collates the batch
    (in a worker process an exception would stop the whole evaluation). ``image_kwargs`` are
    ``Preprocess.image_kwargs()``; ``labels`` (default ``data.labels``) gives each path's label.
    """

    def __init__(self, data: FolderData, order: Sequence[int], image_kwargs: dict,
                 labels: Sequence[int] | None = None) -> None:
        self.paths = data.paths
        self.labels = list(data.labels if labels is None else labels)
        self.order = list(order)
        self.image_kwargs = dict(image_kwargs)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, position: int) -> FolderItem:
        i = self.order[position]
        path = self.paths[i]
        try:
            image = load_image(path, **self.image_kwargs)
        except (OSError, ValueError):
            image = None
        return FolderItem(image, self.labels[i], position, str(path))


class ImageReadError(UndiscardError, ValueError):
    """An image file that cannot be decoded, or not safely (over PIL's pixel limit); one line naming it."""


# how PIL fails on a broken or truncated file, besides its own UnidentifiedImageError (an OSError)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError)


def load_image(path: Path, in_chans: int, input_size: int, crop_pct: float, pad_to: int | None, *,
               interpolation: str = "bilinear", crop_first: bool = False) -> Tensor:
    """One image as float (in_chans, input_size, input_size) in [0, 1] (see module docstring; the resize
    and crop are :func:`resize_and_crop`). ``Preprocess.image_kwargs()`` gives all arguments but the path.

    Colour modes (:func:`_decoded`): 8-bit images go through PIL's own conversion to L or RGB, as
    torchvision and timm do (alpha dropped, palettes expanded, CMYK converted, grayscale repeated to
    RGB); 16-bit grayscale (``I;16``, ``I``) and 16-bit-per-channel colour PNG/TIFF (48-bit RGB, 64-bit
    RGBA, which PIL itself opens as 8-bit ``RGB``/``RGBA``) are scaled by 1/65535 and float (``F``) taken
    as [0, 1], all kept at full precision. Raises :class:`ImageReadError` (one line naming ``path``) for a file PIL
    cannot decode (corrupt, truncated), one over PIL's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS`` pixels, which a Python caller may raise), and one whose resize to
    ``input_size`` would exceed that limit (an extreme aspect ratio).
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the limit: refuse, not warn
            with Image.open(path) as img:
                planes, white = _decoded(img, in_chans, path)
                w, h = planes[0].size
                if pad_to is not None and max(w, h) <= pad_to:
                    arr = _stacked(planes) / white
                    x = torch.from_numpy(arr).reshape(h, w, -1).permute(2, 0, 1)
                    top, left = (pad_to - h) // 2, (pad_to - w) // 2
                    x = F.pad(x, (left, pad_to - w - left, top, pad_to - h - top))
                    return x.expand(3, -1, -1).contiguous() if in_chans == 3 and x.shape[0] == 1 else x
                _check_resize(path, w, h, input_size, crop_pct, crop_first)
                arr = _stacked([resize_and_crop(p, input_size, crop_pct, interpolation, crop_first)
                                for p in planes]) / white
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        size = re.search(r"\((\d+) pixels\)", str(err))
        raise ImageReadError(f"image {path} has {size.group(1) if size else 'too many'} pixels, over PIL's "
                             f"decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} (PIL.Image.MAX_IMAGE_PIXELS)"
                             ) from None
    except _DECODE_ERRORS as err:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ImageReadError(f"cannot read image {path}: {first}") from None
    x = torch.from_numpy(arr).reshape(input_size, input_size, -1).permute(2, 0, 1)
    if in_chans == 3 and x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x.contiguous()


def _stacked(planes: list) -> np.ndarray:
    """PIL images (one multi-channel image, or one ``F`` image per channel) -> float32 (H, W, C)."""
    if len(planes) == 1:
        return np.asarray(planes[0], dtype=np.float32)
    return np.stack([np.asarray(p, dtype=np.float32) for p in planes], axis=-1)


_SWAPPED = {";16B": ";16L", ";16L": ";16B"}  # PIL raw modes reading the other byte of each 16-bit sample


def _sixteen_bit_colour(img, path: Path) -> np.ndarray | None:
    """A 16-bit-per-channel colour image (48-bit RGB, 64-bit RGBA PNG or TIFF) as uint16-valued float32
    (H, W, C), or None for any other image.

    PIL decodes such a file to 8-bit ``RGB``/``RGBA`` through a raw mode (``RGB;16B``, ...) that keeps
    the high byte of each sample. Decoding the same file again with the byte-swapped raw mode
    (``RGB;16L``) keeps the low byte instead, so ``high * 256 + low`` is every sample exactly, with PIL's
    own decompression and PNG unfiltering. (16-bit gray + alpha, ``LA;16B``, has no byte-swapped raw
    mode in PIL and keeps its high byte.)
    """
    from PIL import Image

    if img.mode not in ("RGB", "RGBA") or len(img.tile) != 1:
        return None
    tile = img.tile[0]
    raw = tile.args if isinstance(tile.args, str) else (tile.args[0] if tile.args else None)
    if not isinstance(raw, str) or raw[-4:] not in _SWAPPED or not raw.startswith(img.mode + ";"):
        return None
    swapped_raw = raw[:-4] + _SWAPPED[raw[-4:]]
    args = swapped_raw if isinstance(tile.args, str) else (swapped_raw, *tile.args[1:])
    with Image.open(path) as other:
        other.tile = [type(tile)(*tuple(tile)[:3], args)]  # (codec, extents, offset, args)
        low = np.asarray(other).astype(np.float32)
    high = np.asarray(img).astype(np.float32)
    return high * 256.0 + low


def _decoded(img, in_chans: int, path: Path) -> tuple[list, float]:
    """``img`` in the mode the model reads, as a list of PIL planes (one image, or one ``F`` image per
    channel), and the pixel value that means white (1.0 after dividing).

    8-bit modes -> PIL ``L`` (1 channel) or ``RGB`` (3), white 255: PIL's conversion, so the result is
    torchvision's/timm's (a palette with transparency is expanded through RGBA first, which PIL asks for).
    16-bit grayscale (``I;16*``, and ``I``, which is how PIL opens 16-bit PGM) -> float ``F`` scaled by
    1/65535, white 1.0 (PIL's ``L`` conversion would clip every value above 255 to white). 16-bit colour
    (:func:`_sixteen_bit_colour`) -> three ``F`` planes scaled by 1/65535 (alpha dropped), or for a
    1-channel model one ``F`` plane with PIL's ``L`` weights (ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B).
    Float ``F`` -> as is, white 1.0; values outside [0, 1] (or not finite) are refused rather than
    clipped. A 16-bit or float grayscale image for a 3-channel model stays one channel here and is
    repeated to 3 by the caller.
    """
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode == "I":
        a = np.asarray(img).astype(np.float32)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ImageReadError(f"image {path}: 32-bit integer values {a.min():.0f}..{a.max():.0f} are outside "
                                 "the 16-bit range undiscard reads (0..65535)")
        return [Image.fromarray(a / np.float32(65535.0))], 1.0
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float32)
        if a.size and (not np.isfinite(a).all() or a.min() < 0 or a.max() > 1):
            raise ImageReadError(f"image {path}: float pixel values must be finite and in [0, 1], "
                                 f"got {a.min():g}..{a.max():g}")
        return [img.copy()], 1.0
    colour16 = _sixteen_bit_colour(img, path)
    if colour16 is not None:
        rgb = colour16[..., :3] / np.float32(65535.0)
        if in_chans == 1:
            gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            return [Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32))], 1.0
        return [Image.fromarray(np.ascontiguousarray(rgb[..., c])) for c in range(3)], 1.0
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return [img.convert("L" if in_chans == 1 else "RGB")], 255.0


def _check_resize(path: Path, w: int, h: int, input_size: int, crop_pct: float, crop_first: bool) -> None:
    """Refuse a resize (short side to ``input_size / crop_pct``, aspect kept) that would exceed PIL's pixel
    limit: a 1 x 100,000 strip would otherwise become a multi-gigabyte image before its centre crop."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if crop_first or limit is None:
        return
    short = max(input_size, int(math.floor(input_size / crop_pct)))
    scale = short / min(w, h)
    pixels = max(short, round(w * scale)) * max(short, round(h * scale))
    if pixels > limit:
        raise ImageReadError(f"image {path} ({w}x{h}) is too elongated: resizing its short side to {short} px "
                             f"would make {pixels} pixels, over PIL's limit of {limit}")


_RESAMPLE = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST"}  # PIL.Image.Resampling names


def resize_and_crop(img, input_size: int, crop_pct: float, interpolation: str = "bilinear",
                    crop_first: bool = False):
    """A PIL image -> its centre ``input_size`` x ``input_size`` crop, resampled with ``interpolation``.

    ``crop_first=False`` (timm/torchvision eval): resize the short side to ``floor(input_size / crop_pct)``
    (aspect kept), then crop the centre. ``crop_first=True`` (TensorFlow EfficientNet eval,
    ``_decode_and_center_crop``): crop the centre square of side ``int(crop_pct * short side)`` from the
    image as decoded (offsets ``(h - side + 1) // 2``), then resize that square to ``input_size``.
    """
    if interpolation not in _RESAMPLE:
        raise UndiscardError(f"unknown interpolation {interpolation!r}: expected one of {', '.join(_RESAMPLE)}")
    from PIL import Image

    resample = getattr(Image.Resampling, _RESAMPLE[interpolation])
    w, h = img.size
    if crop_first:
        side = max(1, int(crop_pct * min(w, h)))
        top, left = (h - side + 1) // 2, (w - side + 1) // 2
        return img.crop((left, top, left + side, top + side)).resize((input_size, input_size), resample)
    short = max(input_size, int(math.floor(input_size / crop_pct)))
    scale = short / min(w, h)
    img = img.resize((max(short, round(w * scale)), max(short, round(h * scale))), resample)
    w, h = img.size
    left, top = (w - input_size) // 2, (h - input_size) // 2
    return img.crop((left, top, left + input_size, top + input_size))


def normalize_batch(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(N, C, H, W) in [0, 1] -> normalised with per-channel mean/std (a single value is broadcast)."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s
