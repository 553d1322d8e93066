"""Every state of every image, on disk: what calibration ranks, in memory bounded by a chunk of images.

Calibration evaluates S states of N images and then combines subsets of them many times. Held in memory,
that is N x S aligned feature maps (EfficientNet-Lite0: 64 states x 1280 x 7 x 7 floats = 16 MB per image),
which grows with N until nothing fits. A :class:`StateStore` keeps them in memory-mapped files in a
temporary directory instead (``numpy.memmap``; deleted when the store is closed), written a batch of images
at a time and read back a chunk of rows at a time:

- ``maps`` and ``extra`` (the aligned maps and prefix tokens of :class:`~undiscard.task.StateMaps`) in the
  store's ``dtype`` (float16 halves the disk and the page cache; each combination is computed in float32);
- ``logits``, ``entropy`` and ``offsets`` at their own precision.

Only the chunk being read is in the process's memory (the operating system's page cache holds what it
can of the files and gives it back under pressure). ``max_rows`` records the most rows ever read or written
at once: the working set, whatever N is.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["StateStore"]

_NUMPY = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64, torch.int64: np.int64,
          torch.bfloat16: None}


class StateStore:
    """Per image, per state tensors in memory-mapped files (see the module docstring). Fields are created on
    the first :meth:`write` that has them (their shape then known), for ``rows`` images in all."""

    def __init__(self, rows: int, dtype: torch.dtype | None = None, directory: str | Path | None = None):
        self.rows = rows
        self.dtype = dtype if dtype is not None else torch.float32
        if _NUMPY.get(self.dtype) is None:
            raise ValueError(f"a state store keeps floats as float16, float32 or float64, not {self.dtype}")
        self._dir = tempfile.TemporaryDirectory(prefix="undiscard-states-", dir=directory)
        self._files: dict[str, np.memmap | None] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self.max_rows = 0

    @property
    def path(self) -> Path:
        return Path(self._dir.name)

    @property
    def nbytes(self) -> int:
        """Bytes on disk."""
        return sum(int(m.nbytes) for m in self._files.values() if m is not None)

    def write(self, start: int, cast: dict[str, Tensor | None], exact: dict[str, Tensor | None]) -> None:
        """Rows ``start..start+n`` of each field: ``cast`` ones stored in the store's dtype, ``exact`` ones
        at their own dtype; None: the field is absent (for every row)."""
        for fields, convert in ((cast, True), (exact, False)):
            for key, t in fields.items():
                if t is None:
                    self._files.setdefault(key, None)
                    continue
                t = t.detach().cpu()
                if convert and t.is_floating_point():
                    t = t.to(self.dtype)
                if key not in self._files:
                    self._dtypes[key] = t.dtype
                    self._files[key] = np.memmap(self.path / f"{key}.bin", dtype=_NUMPY[t.dtype], mode="w+",
                                                 shape=(self.rows, *t.shape[1:]))
                mm = self._files[key]
                assert mm is not None
                mm[start:start + t.shape[0]] = t.numpy()
                self.max_rows = max(self.max_rows, int(t.shape[0]))

    def read(self, key: str, rows: slice, states: list[int] | None = None) -> Tensor | None:
        """Rows ``rows`` of field ``key`` (states ``states`` of dim 1 only, when given) as a tensor in memory;
        None for an absent field."""
        mm = self._files.get(key)
        if mm is None:
            return None
        part = mm[rows] if states is None else mm[rows][:, states]
        self.max_rows = max(self.max_rows, int(part.shape[0]))
        return torch.from_numpy(np.array(part))

    def close(self) -> None:
        """Delete the files."""
        self._files.clear()  # the maps go with their last reference; the directory with its files
        self._dir.cleanup()

    def __enter__(self) -> "StateStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
