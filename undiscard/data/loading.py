"""Reading labelled images for a model: image folders through the model's preprocessing, and the
labelled (never test) images that fitting commands use. No argparse here: the CLI passes plain values.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..errors import UndiscardError
from ..progress import progress_bar
from . import fashion_mnist
from .fashion_mnist import has_idx_files, load_train_val
from .folder import FolderData, load_class_map, load_image, scan_folder
from .preprocess import resize, to_float

if TYPE_CHECKING:
    from ..models import LoadedModel, Preprocess

__all__ = ["read_folder_images", "load_labelled"]


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


def load_labelled(root: str | Path, loaded: "LoadedModel", limit: int | None = None, seed: int = 0,
                  class_map: str | Path | None = None, quiet: bool = False) -> tuple[Tensor, Tensor, str]:
    """Labelled training images for fitting (never the test set), as [0, 1] tensors and labels.

    ``root`` is either a directory with the Fashion-MNIST idx files (zoo models: the 5,000-image
    validation part of the train split, which the zoo never trained on) or an image folder
    ROOT/CLASS/IMAGE (labels: ``class_map`` or the sorted folder names). ``limit`` keeps a seeded
    random ``limit`` of them. Returns images, labels and a description.
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
    if has_idx_files(root, "train"):
        if not loaded.name.startswith("zoo:"):
            raise UndiscardError("Fashion-MNIST idx files fit the zoo models only; give an image folder "
                                 "DIR/CLASS/IMAGE")
        _, (val_images, val_labels) = load_train_val(root)
        x01 = resize(to_float(val_images), loaded.preprocess.input_size)
        y = torch.as_tensor(val_labels).long()
        what = f"Fashion-MNIST train split, held-out validation part ({len(y)} images) of {root}"
    else:
        data = scan_folder(root, load_class_map(class_map) if class_map else None)
        x01, y, _ = read_folder_images(data, list(range(len(data.paths))), loaded.preprocess, quiet)
        what = f"image folder {root} ({len(y)} images)"
    if limit is not None and limit < len(y):
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        x01, y = x01[keep], y[keep]
        what += f", seeded subset of {len(y)}"
    return x01, y, what
