"""Reading labelled images for a model: image folders through the model's preprocessing (all at once,
or streamed batch by batch by a ``DataLoader``: :func:`folder_loader`), and the labelled (never test)
images that fitting commands use. No argparse here: the CLI passes plain values.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .._progress import progress_bar
from ..data import fashion_mnist
from ..data.fashion_mnist import has_idx_files, load_val
from ..data.folder import FolderData, FolderImages, FolderItem, load_image, normalize_batch, scan_folder
from ..data.labels import check_labels, folder_labels, output_classes
from ..data.preprocess import resize, to_float
from ..data.shift import shift_images
from ..errors import UndiscardError

if TYPE_CHECKING:
    from ..models.loading import LoadedModel, Preprocess

__all__ = ["read_folder_images", "load_labelled", "FolderBatch", "folder_loader", "DEFAULT_WORKERS"]

DEFAULT_WORKERS = 4  # loader processes, as timm's validate.py (--workers 4)


def read_folder_images(data: FolderData, order: list[int], pre: "Preprocess",
                       quiet: bool = False) -> tuple[Tensor, Tensor, list[int]]:
    """Read images ``order`` (indices into ``data.paths``) of a scanned folder with the model's
    preprocessing, as [0, 1] tensors (N, C, H, W) and labels (N,); unreadable files are appended to
    ``data.skipped_unreadable``. Also returns the positions in ``order`` that were read."""
    images, labels, kept = [], [], []
    with progress_bar(len(order), "loading", enabled=not quiet) as bar:
        for p, i in enumerate(order):
            try:
                images.append(load_image(data.paths[i], **pre.image_kwargs()))
                labels.append(data.labels[i])
                kept.append(p)
            except (OSError, ValueError):
                data.skipped_unreadable.append(str(data.paths[i]))
            bar.update(1)
    if not images:
        raise UndiscardError(f"none of the {len(order)} image files given could be read")
    return torch.stack(images), torch.tensor(labels), kept


class FolderBatch(NamedTuple):
    """One batch from :func:`folder_loader`: normalised images (N, C, H, W), labels (N,), their shifted
    copies normalised (or None), the positions of the images in the loader's ``order`` (N,), and the
    paths in this batch that could not be read (skipped, not in the N)."""

    images: Tensor
    labels: Tensor
    shifted: Tensor | None
    positions: Tensor
    unreadable: list[str]


class _Collate:
    """Readable items -> one :class:`FolderBatch`; the shifted copies are made here, per batch, each image
    moved by ``offsets[position]`` (offsets drawn once per global position: a sharded run shifts every
    image as a single process does). A class, not a closure, so worker processes can unpickle it."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], offsets: Tensor | None) -> None:
        self.mean, self.std, self.offsets = tuple(mean), tuple(std), offsets

    def __call__(self, items: list[FolderItem]) -> FolderBatch:
        good = [it for it in items if it.image is not None]
        unreadable = [it.path for it in items if it.image is None]
        if not good:
            empty = torch.empty(0)
            return FolderBatch(empty, torch.empty(0, dtype=torch.long), None if self.offsets is None else empty,
                               torch.empty(0, dtype=torch.long), unreadable)
        x01 = torch.stack([it.image for it in good])
        positions = torch.tensor([it.position for it in good])
        shifted = None
        if self.offsets is not None:
            moved, _ = shift_images(x01, 0, 0, offsets=self.offsets[positions])
            shifted = normalize_batch(moved, self.mean, self.std)
        return FolderBatch(normalize_batch(x01, self.mean, self.std), torch.tensor([it.label for it in good]),
                           shifted, positions, unreadable)


def folder_loader(data: FolderData, order: Sequence[int], pre: "Preprocess", *, batch_size: int,
                  workers: int = DEFAULT_WORKERS, offsets: Tensor | None = None,
                  sampler: Iterable[int] | None = None, labels: Sequence[int] | None = None,
                  pin_memory: bool = False, segment: int = 512) -> "DataLoader | SegmentedLoader":
    """A ``DataLoader`` of batches (:class:`FolderBatch`) over images ``order`` of a scanned folder: ``workers``
    processes (0: the calling process) read and preprocess each batch as it is needed, so at most a few
    batches (``workers`` x ``prefetch_factor`` 2 ahead) are in memory, whatever the folder's size.

    ``offsets`` (len(order), 2): the shift of the image at each position (``random_offsets``), applied
    per batch; None for no shifted copies. ``sampler``: the positions to read, in order (default all;
    :class:`undiscard.evaluation.distributed.ShardSampler` for this process's shard). ``labels``: per path of
    ``data`` (default ``data.labels``). ``segment``: with workers, images per set of worker processes
    (:class:`SegmentedLoader`; 0: one set for the whole folder, whose memory grows with it).
    """
    dataset = FolderImages(data, order, pre.image_kwargs(), labels)
    n_batches = -(-len(sampler if sampler is not None else dataset) // batch_size)  # type: ignore[arg-type]
    workers = max(0, min(workers, n_batches))  # no idle processes for a small folder
    collate = _Collate(pre.mean, pre.std, offsets)
    if workers == 0 or segment == 0:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=workers,
                          collate_fn=collate, pin_memory=pin_memory)
    return SegmentedLoader(dataset, list(sampler if sampler is not None else range(len(dataset))), batch_size,
                           workers, collate, pin_memory, segment)


class SegmentedLoader:
    """A ``DataLoader`` with ``workers`` processes, restarted every ``segment`` images (whole batches).

    A loader worker's resident memory grows with every batch it hands over (up to about 1.6 MB per 224-px
    image it hands over, here; linear in the folder's size; not in-process, not the collector or the sharing
    strategy: benchmarks/README.md), so one set of workers for a whole ImageNet-sized folder would not
    stay bounded. Fresh workers per segment bound it by the segment, at the cost of one fork per segment;
    the batches are those one loader over ``positions`` would give, in the same order."""

    def __init__(self, dataset: FolderImages, positions: list[int], batch_size: int, workers: int, collate,
                 pin_memory: bool, segment: int = 512) -> None:
        self.dataset, self.sampler, self.batch_size = dataset, positions, batch_size
        self.workers, self.collate, self.pin_memory = workers, collate, pin_memory
        self.segment = max(1, segment // batch_size) * batch_size

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.sampler), self.segment):
            part = self.sampler[start:start + self.segment]
            workers = max(1, min(self.workers, -(-len(part) // self.batch_size)))
            yield from DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, sampler=part,
                                  num_workers=workers, collate_fn=self.collate, pin_memory=self.pin_memory)


def load_labelled(root: str | Path, loaded: "LoadedModel", limit: int | None = None, seed: int = 0,
                  class_map: str | Path | None = None, quiet: bool = False) -> tuple[Tensor, Tensor, str]:
    """Labelled training images for fitting (never the test set), as [0, 1] tensors and labels.

    ``root`` is either a directory with the Fashion-MNIST idx files (zoo models: the 5,000-image
    validation part of the train split, which the zoo never trained on; only the images kept are read,
    :func:`undiscard.data.fashion_mnist.load_val`) or an image folder ROOT/CLASS/IMAGE (labels: the rule of
    :func:`undiscard.data.labels.folder_labels`, as ``eval`` labels a folder: ``class_map``, ImageNet
    detection, or the sorted folder names). Every label is checked against the model's classes.
    ``limit`` keeps a seeded random ``limit`` of them. Returns images, labels and a description.
    """
    root = Path(root)
    if not root.is_dir():
        hint = (" (Fashion-MNIST: `apt-get install dataset-fashion-mnist` installs its idx files there)"
                if root.resolve() == Path(fashion_mnist.DEBIAN_ROOT).resolve() else "")
        raise UndiscardError(f"--data {root} is not a directory{hint}")
    if not has_idx_files(root, "train") and not any(d.is_dir() for d in root.iterdir()):
        test_only = " (only the test split: fitting never uses it)" if has_idx_files(root, "test") else ""
        raise UndiscardError(f"--data {root} holds neither the Fashion-MNIST train idx files{test_only} nor "
                             "class subfolders DIR/CLASS/IMAGE")
    pre = loaded.preprocess
    k = output_classes(loaded.model, pre.in_chans, pre.input_size)
    if has_idx_files(root, "train"):
        if not loaded.name.startswith("zoo:"):
            raise UndiscardError("Fashion-MNIST idx files fit the zoo models only; give an image folder "
                                 "DIR/CLASS/IMAGE")
        val_images, val_labels = load_val(root, limit, seed)
        y = torch.as_tensor(val_labels).long()
        check_labels(y, k, source=f"Fashion-MNIST labels in {root}")
        x01 = resize(to_float(val_images), pre.input_size)
        what = f"Fashion-MNIST train split, held-out validation part (5000 images) of {root}"
        return x01, y, what + (f", seeded subset of {len(y)}" if limit is not None and limit < 5000 else "")
    data = scan_folder(root)
    labels = folder_labels(data.classes, k, class_map, used=data.labels)
    if labels.note and not quiet:
        print(labels.note, file=sys.stderr)
    data.labels = [labels.index[c] for c in data.labels]
    x01, y, _ = read_folder_images(data, list(range(len(data.paths))), pre, quiet)
    what = f"image folder {root} ({len(y)} images; labels: {labels.source})"
    if limit is not None and limit < len(y):
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        x01, y = x01[keep], y[keep]
        what += f", seeded subset of {len(y)}"
    return x01, y, what
