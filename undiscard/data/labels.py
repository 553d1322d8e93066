"""Labels of labelled images: class maps, ImageNet folder detection, and the one check every label passes.

One place decides which class index each class folder ``DIR/CLASS`` gets, for ``eval``, ``calibrate``,
``train-aggregator`` and ``fit-tta`` alike (:func:`folder_labels`), in this order:

1. ``--class-map``: a file (:func:`load_class_map`: a JSON object of folder name -> index, or one name per
   line), ``imagenet`` (the shipped WordNet id -> ImageNet-1k index map) or ``sorted`` (the sorted folder
   positions, asked for);
2. no class map and a model with 1000 outputs (ImageNet-1k): each folder named by the WordNet id of an
   ImageNet-1k class (``n01440764``) or by one of the class's names (``tench``, ``espresso_maker``: any of
   its comma-separated names, case-blind, ``_`` for a space, when it names one class only) gets that
   class's standard index (said on stderr and in the JSON's ``labels``). A folder that is neither, or a
   name of several classes (``crane``), is refused in one line: sorted folder positions would give labels
   that silently mean other classes (0% accuracy, exit 0), so ``--class-map`` must say what they are;
3. otherwise the sorted folder positions 0, 1, ...

Every index, from any source, is then checked (:func:`check_labels`): an integer (``true`` is not 1),
at least 0 (``-1`` would silently index the last class) and below the model's class count. The
Fashion-MNIST idx labels go through the same check.
"""
from __future__ import annotations

import json
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from ..analysis.outputs import select_output
from ..errors import UndiscardError

__all__ = ["IMAGENET_CLASS_MAP", "SORTED_CLASS_MAP", "ClassMapError", "FolderLabels", "load_class_map",
           "folder_labels", "detect_imagenet_classes", "check_labels", "output_classes"]

IMAGENET_CLASS_MAP = "imagenet"  # --class-map imagenet: the shipped WordNet id -> index map
SORTED_CLASS_MAP = "sorted"  # --class-map sorted: the sorted folder positions, asked for


class ClassMapError(UndiscardError, ValueError):
    """A class map or a label that does not fit (one line naming the file, folder or value)."""


def _index(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def load_class_map(path: str | Path) -> dict[str, int]:
    """Folder name -> class index: a JSON object of integers >= 0, or a text file with one name per line
    (the line number is the index; only the first whitespace-separated word of a line is used, so
    ImageNet's ``n01440764 tench, Tinca tinca`` lines work; lines starting with ``#`` are comments). The
    word ``imagenet`` names the shipped ImageNet-1k map, WordNet id -> standard index (a file called
    ``imagenet`` is given as ``./imagenet``). One :class:`ClassMapError` line for anything else."""
    if str(path) == IMAGENET_CLASS_MAP:
        from .imagenet import imagenet_class_map

        return imagenet_class_map()
    from .._files import check_file

    p = check_file(path, "class map", ClassMapError)
    try:
        text = p.read_text()
    except UnicodeDecodeError:
        raise ClassMapError(f"class map {p} is not a text file (JSON, or one folder name per line)") from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ClassMapError(f"class map {p} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ClassMapError(f"class map {p} must be a JSON object of folder name -> integer index")
        bad = next(((k, v) for k, v in data.items() if not _index(v) or v < 0), None)
        if bad is not None:
            raise ClassMapError(f"class map {p}: folder {bad[0]!r} has index {json.dumps(bad[1])}; indices are "
                                "integers >= 0 (the model's output positions)")
        return {str(k): int(v) for k, v in data.items()}
    names = [line.split()[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise ClassMapError(f"class map {p} names {twice!r} on two lines: each line is one class")
    return {name: i for i, name in enumerate(names)}


@dataclass
class FolderLabels:
    """The class index of each class folder (in the order given), where it came from (for the JSON's
    ``labels``), and a line to say on stderr (detection, or why folders that look like ImageNet's were not
    mapped), if any."""

    index: list[int]
    source: str
    note: str | None = None


def _imagenet(classes: Sequence[str]) -> tuple[list[int] | None, list[str], str]:
    """ImageNet indices of every folder (or None), the folders that do not map (with why), and what the
    mapped folders were named by."""
    from .imagenet import imagenet_classes_named, is_wnid

    index, bad = [], []
    for c in classes:
        found = imagenet_classes_named(c)
        if len(found) == 1:
            index.append(found[0])
        else:
            bad.append(f"{c} (names {len(found)} classes: {', '.join(map(str, found[:4]))})" if found else c)
    kinds = [k for k in ("WordNet ids", "class names") if any(is_wnid(c) == (k == "WordNet ids") for c in classes)]
    return (None if bad else index), bad, " and ".join(kinds)


def detect_imagenet_classes(classes: list[str], num_classes: int) -> list[int] | None:
    """When no class map was given: if the model has 1000 outputs and every class folder is an ImageNet-1k
    WordNet id or class name (see the module docstring), the standard class index of each folder (in the
    order of ``classes``), else None."""
    from .imagenet import NUM_IMAGENET_CLASSES

    if num_classes != NUM_IMAGENET_CLASSES or not classes:
        return None
    return _imagenet(classes)[0]


def folder_labels(classes: Sequence[str], num_classes: int, class_map: str | Path | None = None,
                  used: Iterable[int] | None = None) -> FolderLabels:
    """The class index of each folder of ``classes`` (sorted folder names) for a model with ``num_classes``
    outputs (see the module docstring); ``class_map`` as ``--class-map`` gives it. ``used``: positions
    of the folders that hold images (default all), whose indices must fit the model
    (:func:`check_labels`). One :class:`ClassMapError` line when the labels cannot be right."""
    from .imagenet import NUM_IMAGENET_CLASSES, imagenet_class_map, is_wnid

    classes = list(classes)
    note = None
    if class_map is not None and str(class_map) == SORTED_CLASS_MAP:
        labels = FolderLabels(list(range(len(classes))), "sorted folder names (--class-map sorted)")
    elif class_map is not None:
        mapping = load_class_map(class_map)
        unknown = [c for c in classes if c not in mapping]
        if unknown:
            raise ClassMapError(f"class map {class_map} has no index for folder(s) {', '.join(unknown[:5])}"
                                + (" ..." if len(unknown) > 5 else ""))
        labels = FolderLabels([mapping[c] for c in classes], f"class map {class_map}")
    elif num_classes == NUM_IMAGENET_CLASSES and classes:
        index, bad, kinds = _imagenet(classes)
        if index is None:
            raise ClassMapError(
                f"the model has 1000 outputs (ImageNet-1k), but {len(bad)} of the {len(classes)} class folders are "
                f"neither ImageNet-1k WordNet ids nor class names ({', '.join(bad[:3])}{' ...' * (len(bad) > 3)}): "
                "labels by sorted folder position would mean other classes; pass --class-map FILE (folder -> "
                "class index), or --class-map sorted if the sorted folders are the model's classes in order")
        note = (f"class folders are ImageNet {kinds}: labelled with the standard 1000-class indices "
                f"({len(classes)} classes; --class-map FILE overrides)")
        labels = FolderLabels(index, f"ImageNet {kinds} (detected)", note)
    else:
        labels = FolderLabels(list(range(len(classes))), "sorted folder names")
        if any(is_wnid(c) for c in classes):  # say why they were not mapped
            odd = [c for c in classes if c not in imagenet_class_map()]
            why = (f"{len(odd)} of them are not ImageNet-1k WordNet ids ({', '.join(odd[:3])}"
                   f"{' ...' * (len(odd) > 3)})" if odd else f"the model has {num_classes} classes, not 1000")
            labels.note = (f"class folders look like WordNet ids, but {why}: labels are the sorted folder "
                           "positions (pass --class-map to choose)")
    positions = range(len(classes)) if used is None else sorted(set(used))
    check_labels([labels.index[i] for i in positions], num_classes,
                 [classes[i] for i in positions], labels.source)
    return labels


def check_labels(labels: Sequence[object] | torch.Tensor, num_classes: int, names: Sequence[str] | None = None,
                 source: str = "the labels") -> None:
    """One :class:`ClassMapError` unless every label is an integer in ``0 .. num_classes - 1``; ``names``
    (one per label) say which folder a bad one belongs to, ``source`` where the labels came from."""
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ClassMapError(f"{source}: labels must be integers, got {labels.dtype}")
        if labels.numel() == 0:
            return
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ClassMapError(f"{source}: labels go from {low} to {high}, but the model has {num_classes} classes "
                                f"(0 to {num_classes - 1}): pass --class-map, or a model with that many classes")
        return
    for i, label in enumerate(labels):
        if not _index(label) or not 0 <= int(label) < num_classes:  # type: ignore[arg-type]
            where = f" (folder {names[i]})" if names is not None else ""
            raise ClassMapError(f"{source}: label {json.dumps(label) if not isinstance(label, numbers.Integral) else label}"
                                f"{where} is not a class of the model, which has {num_classes} classes "
                                f"(0 to {num_classes - 1}): pass --class-map (or --num-classes with --weights)")


@torch.no_grad()
def output_classes(model: nn.Module, in_chans: int, input_size: int) -> int:
    """The number of classes of a classifier: its output's last dimension on one blank image (independent
    of the pixels; the model's modes are restored)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        device = next((t.device for t in model.parameters()), torch.device("cpu"))
        return int(select_output(model(torch.zeros(1, in_chans, input_size, input_size, device=device))).shape[-1])
    finally:
        for m, training in modes:
            m.training = training
