"""Fashion-MNIST: the standard idx(.gz) files, a bundled copy of the test set, a seeded validation split.

The full data set comes from the Debian package ``dataset-fashion-mnist`` (files in
``/usr/share/datasets/fashion-mnist/``) or from any directory holding the four standard files. The 10k
test set is also bundled inside the package (``fashion_mnist_test.npz``, made by
``scripts/bundle_test_set.py``), so demos and tests need no data install. The test set is for
reporting only: anything fitted or selected (aggregators, hyper-parameters) uses the validation split
carved out of the train set by :func:`train_val_split`.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from ..errors import UndiscardError

DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
BUNDLED_TEST = Path(__file__).with_name("fashion_mnist_test.npz")

CLASS_NAMES: list[str] = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
NUM_CLASSES = 10
IMAGE_SIZE = 28
# Per-pixel statistics of the 60k training images scaled to [0, 1].
MEAN = 0.2860
STD = 0.3530

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# idx type codes (third byte of the magic number) -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_DEFLATE_MAX_RATIO = 1032  # the most one compressed byte of a deflate (gzip) stream expands to

Split = Literal["train", "test"]


class IdxFileError(UndiscardError, ValueError):
    """An idx file that is not one, is truncated, or does not hold what its header declares (one line)."""


@dataclass(frozen=True)
class IdxHeader:
    """What an idx file's header declares: element dtype (big-endian), shape, and the header's length."""

    path: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _open(path: str | os.PathLike):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def _read(f, n: int, path: str) -> bytes:
    """``n`` bytes of an open idx file (fewer only at its end); a damaged gzip stream is one line."""
    try:
        return f.read(n)
    except (OSError, EOFError, zlib.error) as err:
        raise IdxFileError(f"{path}: cannot read the idx file ({err})") from None


def read_idx_header(path: str | os.PathLike) -> IdxHeader:
    """The header of an idx file, checked: the magic number, a complete list of sizes, and sizes the file
    can hold — no more data than the file's own size (uncompressed) or than deflate can expand it to
    (``.gz``: at most 1032 bytes per compressed byte). One :class:`IdxFileError` naming the file otherwise."""
    path = str(path)
    from .._files import check_file

    check_file(path, "idx file", IdxFileError)
    with _open(path) as f:
        header = _read(f, 4, path)
        if len(header) != 4 or header[:2] != b"\x00\x00" or header[2] not in _IDX_DTYPES or header[3] == 0:
            raise IdxFileError(f"{path}: not an idx file (bad magic number {header!r})")
        ndim = header[3]
        sizes = _read(f, 4 * ndim, path)
    if len(sizes) != 4 * ndim:
        raise IdxFileError(f"{path}: truncated idx header ({len(sizes)} of the {4 * ndim} bytes that give its "
                           f"{ndim} sizes)")
    result = IdxHeader(path, np.dtype(_IDX_DTYPES[header[2]]), struct.unpack(f">{ndim}I", sizes), 4 + 4 * ndim)
    on_disk = os.path.getsize(path)
    declared = f"its header declares {'x'.join(map(str, result.shape))} values ({result.data_bytes} bytes)"
    if path.endswith(".gz") and result.data_bytes > on_disk * _DEFLATE_MAX_RATIO:
        raise IdxFileError(f"{path}: {declared}, more than a gzip file of {on_disk} bytes can expand to "
                           f"(at most {_DEFLATE_MAX_RATIO}x): truncated or not an idx file")
    if not path.endswith(".gz") and result.data_bytes > on_disk - result.offset:
        raise IdxFileError(f"{path}: truncated idx file: {declared}, the file holds {on_disk - result.offset}")
    return result


def read_idx(path: str | os.PathLike, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Read one idx file (optionally gzip-compressed) into an array of its own shape and dtype; with
    ``rows`` (indices along the first axis), only those rows, in that order, while the rest of the file is
    streamed past (memory: the rows kept and one chunk).

    Format: 2 zero bytes, a type code, the number of dimensions D, D big-endian uint32 sizes, then the
    data in row-major order. The header is checked first (:func:`read_idx_header`) and exactly the data it
    declares is read (a stream that ends early is truncated). Raises :class:`IdxFileError` (a ValueError)
    naming the file."""
    head = read_idx_header(path)
    dtype, shape = head.dtype, head.shape
    row_bytes = math.prod(shape[1:]) * dtype.itemsize
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= shape[0]):
            raise IdxFileError(f"{path}: rows {int(rows.min())}..{int(rows.max())} asked for, the file has {shape[0]}")
    with _open(path) as f:
        _read(f, head.offset, head.path)
        if rows is None:
            data = _read(f, head.data_bytes, head.path)
            got = len(data)
        else:
            out = np.empty((len(rows), *shape[1:]), dtype=dtype)
            order = np.argsort(rows, kind="stable")
            chunk = max(1, (8 << 20) // max(1, row_bytes))  # about 8 MB of rows at a time
            got, k, last = 0, 0, int(rows.max()) + 1 if rows.size else 0
            for start in range(0, last, chunk):
                n = min(chunk, last - start)
                block = _read(f, n * row_bytes, head.path)
                got += len(block)
                if len(block) < n * row_bytes:
                    break
                block_rows = np.frombuffer(block, dtype=dtype).reshape(n, *shape[1:])
                while k < len(order) and rows[order[k]] < start + n:
                    out[order[k]] = block_rows[rows[order[k]] - start]
                    k += 1
            if k == len(order):
                return out.astype(dtype.newbyteorder("="), copy=False)
    expected = head.data_bytes if rows is None else (int(rows.max()) + 1) * row_bytes
    if got < expected:
        raise IdxFileError(f"{path}: truncated idx file ({got} bytes of data where its header declares "
                           f"{head.data_bytes})")
    arr = np.frombuffer(data, dtype=dtype, count=math.prod(shape)).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an idx file (gzip-compressed when ``path`` ends in ``.gz``), atomically
    (:func:`undiscard._atomic.atomic_write`)."""
    from .._atomic import atomic_write

    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"idx cannot store dtype {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = array.astype(np.dtype(_IDX_DTYPES[code]), copy=False).tobytes()
    with atomic_write(path) as f:
        if str(path).endswith(".gz"):
            with gzip.GzipFile(filename="", mode="wb", fileobj=f) as gz:
                gz.write(header + body)
        else:
            f.write(header + body)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def has_idx_files(root: str | os.PathLike, split: Split = "train") -> bool:
    """Whether ``root`` holds the Fashion-MNIST idx files of ``split`` (``.gz`` or not)."""
    return all(_find(Path(root), stem) is not None for stem in _FILES[split])


def _split_files(split: Split, root: str | os.PathLike | None) -> tuple[Path, Path]:
    """The (images, labels) idx files of ``split`` in ``root``, their headers checked to be Fashion-MNIST's
    (uint8 (N, 28, 28) images, uint8 (N,) labels, one N) before any data is read."""
    if split not in _FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}: use 'train' or 'test'")
    root_path = Path(DEBIAN_ROOT if root is None else root)
    paths = [_find(root_path, stem) for stem in _FILES[split]]
    if any(p is None for p in paths):
        missing = [s for s, p in zip(_FILES[split], paths) if p is None]
        debian = root_path.resolve() == Path(DEBIAN_ROOT).resolve()
        hint = " (the Debian package installs them there: apt-get install dataset-fashion-mnist)" if debian else ""
        raise FileNotFoundError(f"Fashion-MNIST {split} files {', '.join(missing)}[.gz] not found in {root_path}{hint}")
    images, labels = (read_idx_header(p) for p in paths)
    if images.dtype != np.uint8 or len(images.shape) != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise IdxFileError(f"{images.path}: Fashion-MNIST images are uint8 N x {IMAGE_SIZE} x {IMAGE_SIZE}, its header "
                           f"declares {images.dtype} {' x '.join(map(str, images.shape))}")
    if labels.dtype != np.uint8 or len(labels.shape) != 1 or labels.shape[0] != images.shape[0]:
        raise IdxFileError(f"{labels.path}: Fashion-MNIST labels are {images.shape[0]} uint8 values (one per image of "
                           f"{images.path}), its header declares {labels.dtype} {' x '.join(map(str, labels.shape))}")
    return paths[0], paths[1]  # type: ignore[return-value]


def load_fashion_mnist(split: Split = "test", root: str | os.PathLike | None = None,
                       rows: Sequence[int] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load one Fashion-MNIST split (``rows``: only those images, in that order, read without holding the
    others; :func:`read_idx`).

    Returns ``images`` uint8 (N, 28, 28) and ``labels`` int64 (N,), N = 60000 (train) or 10000 (test).
    ``root``: a directory with the standard idx files (``.gz`` or not). ``root=None`` reads the bundled
    copy for ``split="test"`` and the Debian package's directory for ``split="train"``.
    Raises FileNotFoundError with a one-line message (path and install hint) when files are missing, and
    :class:`IdxFileError` (a ValueError) naming the file when its header is not Fashion-MNIST's.
    """
    if root is None and split == "test" and BUNDLED_TEST.is_file():
        with np.load(BUNDLED_TEST) as z:
            images, labels = z["images"].astype(np.uint8), z["labels"].astype(np.int64)
        return (images, labels) if rows is None else (images[np.asarray(rows)], labels[np.asarray(rows)])
    image_path, label_path = _split_files(split, root)
    return read_idx(image_path, rows).astype(np.uint8), read_idx(label_path, rows).astype(np.int64)


def split_size(split: Split = "train", root: str | os.PathLike | None = None) -> int:
    """The number of images of ``split`` in ``root``, from the idx headers alone (checked as
    :func:`load_fashion_mnist` checks them)."""
    return read_idx_header(_split_files(split, root)[0]).shape[0]


def train_val_split(n: int = 60000, val_size: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into (train indices, validation indices), both sorted int64.

    The validation images come from the *train* split; the test split is kept for reporting only.
    """
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be in (0, {n}), got {val_size}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]).astype(np.int64), np.sort(perm[:val_size]).astype(np.int64)


def load_train_val(root: str | os.PathLike | None = None, val_size: int = 5000, seed: int = 0):
    """The train split divided by :func:`train_val_split`: ``((x_train, y_train), (x_val, y_val))``."""
    images, labels = load_fashion_mnist("train", root)
    tr, va = train_val_split(len(labels), val_size, seed)
    return (images[tr], labels[tr]), (images[va], labels[va])


def load_val(root: str | os.PathLike | None = None, limit: int | None = None, seed: int = 0,
             val_size: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """The held-out validation part of the train split (:func:`train_val_split`), or with ``limit`` a seeded
    random ``limit`` of it (``torch.randperm`` with ``seed``, kept in order), reading only those images:
    the memory of the images returned, whatever the file's size."""
    import torch

    n = split_size("train", root)
    if n <= val_size:
        raise IdxFileError(f"{_split_files('train', root)[0]} holds {n} images: the validation part is "
                           f"{val_size} images of a larger train split")
    _, va = train_val_split(n, val_size)
    if limit is not None and limit < len(va):
        keep = torch.randperm(len(va), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        va = va[keep.numpy()]
    return load_fashion_mnist("train", root, rows=va)
