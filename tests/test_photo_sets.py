"""The bundled calibration and evaluation photos: disjoint sets, sources and licenses recorded, labels that are
ImageNet classes, and pairs of crops that are real displacements of the same scene."""
from __future__ import annotations

import csv

import pytest
import torch

from undiscard.data.imagenet import imagenet_class_map
from undiscard.data.photos import PHOTO_DIR, crop_pairs, photo_set
from undiscard.errors import UndiscardError


def rows() -> list[dict]:
    with open(PHOTO_DIR / "photos.tsv", newline="") as f:
        return list(csv.DictReader((line for line in f if not line.startswith("#")), delimiter="\t"))


def test_sets_are_disjoint_recorded_and_labelled_with_imagenet_classes():
    cal, ev = photo_set("calibration"), photo_set("evaluation")
    assert len(cal) >= 10 and len(ev) >= 20
    assert not {p.name for p in cal} & {p.name for p in ev}
    table = {r["name"]: r for r in rows()}
    assert set(table) == {p.name for p in cal + ev}
    assert all(table[n]["license"] and table[n]["source"] for n in table)
    classes = imagenet_class_map()
    assert all(w in classes for p in ev for w in p.labels)
    assert not any(p.labels for p in cal)  # calibration is label-free
    assert sum(bool(p.labels) for p in ev) >= 10
    assert all(tuple(p.image.shape) == (3, 320, 320) for p in cal + ev)
    with pytest.raises(UndiscardError):
        photo_set("test")


def test_crop_pairs_are_the_same_scene_displaced():
    img = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    base, moved, offsets, owner = crop_pairs([img, img.flip(-1)], 5, 32, max_shift=4, seed=1)
    assert base.shape == moved.shape == (10, 3, 32, 32) and owner.tolist() == [0] * 5 + [1] * 5
    assert bool((offsets.abs().amax(1) >= 1).all()) and bool((offsets.abs().amax(1) <= 4).all())
    for k in range(10):
        dy, dx = offsets[k].tolist()
        src = (img if owner[k] == 0 else img.flip(-1))
        # locate the base crop in the photo, then the moved crop must be the photo at that corner + offset
        hits = [(t, l) for t in range(33) for l in range(33) if torch.equal(src[:, t:t + 32, l:l + 32], base[k])]
        assert len(hits) == 1
        t, l = hits[0]
        assert torch.equal(moved[k], src[:, t + dy:t + dy + 32, l + dx:l + dx + 32])
    with pytest.raises(ValueError):
        crop_pairs([img], 1, 60, max_shift=4)
