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
import os
import struct
from pathlib import Path
from typing import Literal

import numpy as np

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

Split = Literal["train", "test"]


def _open(path: str | os.PathLike):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (optionally gzip-compressed) into an array of its own shape and dtype.

    Format: 2 zero bytes, a type code, the number of dimensions D, D big-endian uint32 sizes, then the
    data in row-major order. Raises ValueError naming the file on a bad header or truncated data.
    """
    with _open(path) as f:
        header = f.read(4)
        if len(header) != 4 or header[:2] != b"\x00\x00" or header[2] not in _IDX_DTYPES:
            raise ValueError(f"{path}: not an idx file (bad magic number {header!r})")
        ndim = header[3]
        shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        dtype = np.dtype(_IDX_DTYPES[header[2]])
        count = int(np.prod(shape, dtype=np.int64))
        data = f.read()
    if len(data) < count * dtype.itemsize:
        raise ValueError(f"{path}: truncated idx file ({len(data)} bytes of data, expected {count * dtype.itemsize})")
    arr = np.frombuffer(data, dtype=dtype, count=count).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an idx file (gzip-compressed when ``path`` ends in ``.gz``)."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"idx cannot store dtype {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = array.astype(np.dtype(_IDX_DTYPES[code]), copy=False).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + body)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def has_idx_files(root: str | os.PathLike, split: Split = "train") -> bool:
    """Whether ``root`` holds the Fashion-MNIST idx files of ``split`` (``.gz`` or not)."""
    return all(_find(Path(root), stem) is not None for stem in _FILES[split])


def load_fashion_mnist(split: Split = "test", root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load one Fashion-MNIST split.

    Returns ``images`` uint8 (N, 28, 28) and ``labels`` int64 (N,), N = 60000 (train) or 10000 (test).
    ``root``: a directory with the standard idx files (``.gz`` or not). ``root=None`` reads the bundled
    copy for ``split="test"`` and the Debian package's directory for ``split="train"``.
    Raises FileNotFoundError with a one-line message (path and install hint) when files are missing.
    """
    if split not in _FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}: use 'train' or 'test'")
    if root is None and split == "test" and BUNDLED_TEST.is_file():
        with np.load(BUNDLED_TEST) as z:
            return z["images"].astype(np.uint8), z["labels"].astype(np.int64)
    root_path = Path(DEBIAN_ROOT if root is None else root)
    paths = [_find(root_path, stem) for stem in _FILES[split]]
    if any(p is None for p in paths):
        missing = [s for s, p in zip(_FILES[split], paths) if p is None]
        debian = root_path.resolve() == Path(DEBIAN_ROOT).resolve()
        hint = " (the Debian package installs them there: apt-get install dataset-fashion-mnist)" if debian else ""
        raise FileNotFoundError(f"Fashion-MNIST {split} files {', '.join(missing)}[.gz] not found in {root_path}{hint}")
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{root_path}: inconsistent Fashion-MNIST {split} files: images {images.shape}, labels {labels.shape}")
    return images.astype(np.uint8), labels.astype(np.int64)


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
