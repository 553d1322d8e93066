"""The 1000 ImageNet-1k classes, shipped with the package: WordNet ids and names in the standard order.

``imagenet_classes.tsv`` (next to this module; made by ``scripts/make_imagenet_classes.py`` from timm's
ImageNet synset info) holds one ``WNID<TAB>names`` line per class, class k on data line k. The standard
index order is the sorted WordNet ids, the output order of every ImageNet-1k classifier. This lets
``predict`` name ImageNet classes and ``eval`` label an ImageNet-style folder (subfolders named by
WordNet id, e.g. ``n01440764``, or by class name, e.g. ``tench`` or ``espresso_maker``) with the model's
class indices, without timm or a hand-made map.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

__all__ = ["IMAGENET_CLASSES_FILE", "NUM_IMAGENET_CLASSES", "imagenet_wnids", "imagenet_class_names",
           "imagenet_class_map", "is_wnid", "imagenet_classes_named", "normalise_name"]

IMAGENET_CLASSES_FILE = Path(__file__).with_name("imagenet_classes.tsv")
NUM_IMAGENET_CLASSES = 1000
_WNID = re.compile(r"n\d{8}")


@lru_cache(maxsize=1)
def _table() -> tuple[tuple[str, ...], tuple[str, ...]]:
    rows = [line.split("\t", 1) for line in IMAGENET_CLASSES_FILE.read_text().splitlines()
            if line and not line.startswith("#")]
    if len(rows) != NUM_IMAGENET_CLASSES or any(len(r) != 2 for r in rows):
        raise RuntimeError(f"{IMAGENET_CLASSES_FILE} is damaged: expected {NUM_IMAGENET_CLASSES} 'WNID<TAB>names' lines")
    return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


def imagenet_wnids() -> list[str]:
    """The 1000 WordNet ids, index k = class k (``n01440764`` = 0, tench)."""
    return list(_table()[0])


def imagenet_class_names() -> list[str]:
    """The 1000 class names (WordNet lemmas, e.g. ``'tabby, tabby cat'``), index k = class k."""
    return list(_table()[1])


def imagenet_class_map() -> dict[str, int]:
    """WordNet id -> standard class index, for labelling an ImageNet-style folder."""
    return {w: i for i, w in enumerate(_table()[0])}


def is_wnid(name: str) -> bool:
    """``name`` has the form of a WordNet noun id (``n`` and 8 digits)."""
    return _WNID.fullmatch(name) is not None


def normalise_name(name: str) -> str:
    """A class name as folder names write it, compared case-blind with ``_`` for a space:
    ``Espresso_Maker`` -> ``espresso maker``."""
    return " ".join(name.replace("_", " ").lower().split())


@lru_cache(maxsize=1)
def _names() -> dict[str, tuple[int, ...]]:
    index: dict[str, set[int]] = {}
    for k, names in enumerate(_table()[1]):
        for name in {names, *names.split(",")}:
            index.setdefault(normalise_name(name), set()).add(k)
    return {name: tuple(sorted(ks)) for name, ks in index.items()}


def imagenet_classes_named(folder: str) -> tuple[int, ...]:
    """The ImageNet-1k classes a folder name denotes: its WordNet id's class, or every class one of whose
    comma-separated names (or whose whole name list) it is, compared by :func:`normalise_name`. Empty: none;
    more than one: the name is ambiguous (``crane`` is a bird and a machine)."""
    known = imagenet_class_map()
    if folder in known:
        return (known[folder],)
    return _names().get(normalise_name(folder), ())
