"""Every state of every image, on disk: what calibration ranks, in memory bounded by a chunk of images.

Calibration evaluates S states of N images and then combines subsets of them many times. Held in memory,
that is N x S aligned feature maps (EfficientNet-Lite0: 64 states x 1280 x 7 x 7 floats = 16 MB per image),
which grows with N until nothing fits. A :class:`StateStore` keeps them in files in a temporary directory
instead (deleted when the store is closed), written a batch of images at a time and read back a chunk of
rows at a time:

- ``maps``, ``extra`` and ``logits`` (the aligned maps and prefix tokens of :class:`~undiscard.tasks.base.StateMaps`,
  the states' logits) in the store's ``dtype`` (float16 halves the disk and the page cache; each
  combination is computed in float32);
- ``entropy`` and ``offsets`` at their own precision.

The files are read and written with ``os.pread``/``os.pwrite``, not memory-mapped: only the chunk being
read is in the process's memory (the operating system's page cache holds what it can of the files, outside
the process, and gives it back under pressure). ``max_rows`` records the most rows read or written at once:
the working set, whatever N is. :class:`DiskTensor` is one such file seen as a tensor sliced by rows (the
images ``undiscard calibrate`` reads from a folder are kept so).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["DiskTensor", "StateStore"]

_NUMPY = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64, torch.int64: np.int64,
          torch.uint8: np.uint8}


class DiskTensor:
    """A tensor of ``shape`` and ``dtype`` kept in the file ``path``, row by row: ``t[a:b]`` reads rows a..b-1
    into memory (a Tensor), :meth:`write` writes rows. Only ``shape``, ``dtype``, ``len()`` and slicing of dim 0."""

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype: torch.dtype):
        if dtype not in _NUMPY:
            raise ValueError(f"a file-backed tensor holds {', '.join(map(str, _NUMPY))}, not {dtype}")
        self.path, self.shape, self.dtype = Path(path), tuple(shape), dtype
        self._np = np.dtype(_NUMPY[dtype])
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self._np.itemsize
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self._fd, self.row_bytes * self.shape[0])
        self.max_rows = 0
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.row_bytes * self.shape[0]

    def write(self, start: int, rows: Tensor) -> None:
        data = np.ascontiguousarray(rows.detach().cpu().to(self.dtype).numpy())
        os.pwrite(self._fd, data.tobytes(), start * self.row_bytes)
        self.max_rows = max(self.max_rows, int(rows.shape[0]))

    def __getitem__(self, rows: slice) -> Tensor:
        if not isinstance(rows, slice):
            raise TypeError("a file-backed tensor is read by a slice of rows")
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise TypeError("a file-backed tensor is read by contiguous rows")
        count = max(0, stop - start)
        self.max_rows = max(self.max_rows, count)
        raw = os.pread(self._fd, count * self.row_bytes, start * self.row_bytes)
        arr = np.frombuffer(raw, dtype=self._np).reshape((count, *self.shape[1:]))
        return torch.from_numpy(arr.copy())

    def close(self) -> None:
        """Close the file (its rows can no longer be read or written)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            self.close()


class StateStore:
    """Per image, per state tensors in files (see the module docstring). Fields are created on the first
    :meth:`write` that has them (their shape then known), for ``rows`` images in all."""

    def __init__(self, rows: int, dtype: torch.dtype | None = None, directory: str | Path | None = None):
        self.rows = rows
        self.dtype = dtype if dtype is not None else torch.float32
        if self.dtype not in (torch.float16, torch.float32, torch.float64):
            raise ValueError(f"a state store keeps floats as float16, float32 or float64, not {self.dtype}")
        self._dir = tempfile.TemporaryDirectory(prefix="undiscard-states-", dir=directory)
        self._files: dict[str, DiskTensor | None] = {}

    @property
    def path(self) -> Path:
        return Path(self._dir.name)

    @property
    def nbytes(self) -> int:
        """Bytes on disk."""
        return sum(f.nbytes for f in self._files.values() if f is not None)

    @property
    def max_rows(self) -> int:
        """The most rows of one field read or written at once."""
        return max([f.max_rows for f in self._files.values() if f is not None] or [0])

    def write(self, start: int, cast: dict[str, Tensor | None], exact: dict[str, Tensor | None]) -> None:
        """Rows ``start..start+n`` of each field: ``cast`` ones stored in the store's dtype, ``exact`` ones
        at their own dtype; None: the field is absent (for every row)."""
        for fields, convert in ((cast, True), (exact, False)):
            for key, t in fields.items():
                if t is None:
                    self._files.setdefault(key, None)
                    continue
                dtype = self.dtype if convert and t.is_floating_point() else t.dtype
                if key not in self._files:
                    self._files[key] = DiskTensor(self.path / f"{key}.bin", (self.rows, *t.shape[1:]), dtype)
                disk = self._files[key]
                assert disk is not None
                disk.write(start, t)

    def read(self, key: str, rows: slice) -> Tensor | None:
        """Rows ``rows`` of field ``key`` as a tensor in memory; None for an absent field."""
        disk = self._files.get(key)
        return None if disk is None else disk[rows]

    def close(self) -> None:
        """Delete the files."""
        for disk in self._files.values():
            if disk is not None:
                disk.close()
        self._files.clear()
        self._dir.cleanup()

    def __enter__(self) -> "StateStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
