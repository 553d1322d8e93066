"""scripts/seg_ceiling.py: repainting the bundled test canvases with object labels is exact, and scores as it should."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from undiscard.data import load_fashion_mnist, segmentation as seg

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "seg_ceiling.py"


@pytest.fixture(scope="module")
def ceiling():
    spec = importlib.util.spec_from_file_location("seg_ceiling", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def canvases(ceiling):
    _, masks = seg.load_seg_test()
    info = seg.seg_test_info()
    n = 12
    layouts = info["layouts"][:n]
    return seg.canvas_generator("test", seed=info["seed"]), layouts, masks[:n], ceiling.object_rows(layouts)


def test_true_labels_repaint_the_masks_exactly(ceiling, canvases):
    gen, layouts, masks, rows = canvases
    iou = ceiling.score(gen, layouts, rows[:, 1] - 1, masks)
    present = np.isin(np.arange(seg.NUM_CLASSES), np.unique(masks))
    assert np.all(iou[present] == 1.0)


def test_one_wrong_label_costs_exactly_that_object(ceiling, canvases):
    gen, layouts, masks, rows = canvases
    labels = rows[:, 1] - 1
    wrong = labels.copy()
    wrong[0] = (labels[0] + 1) % 10  # the first object of canvas 0 gets the next class
    iou = ceiling.score(gen, layouts, wrong, masks)
    right = ceiling.score(gen, layouts, labels, masks)
    assert iou[0] == 1.0  # masks are perfect: background is untouched
    assert iou[labels[0] + 1] < 1.0 and iou[wrong[0] + 1] < 1.0  # canvas 0's first object is visible
    changed = {int(labels[0]) + 1, int(wrong[0]) + 1}
    others = [c for c in range(seg.NUM_CLASSES) if c not in changed and not np.isnan(right[c])]
    np.testing.assert_array_equal(iou[others], right[others])


def test_as_pasted_keeps_shape_and_loses_detail_only_when_shrunk(ceiling):
    images, _ = load_fashion_mnist("test")
    imgs = images[:4]
    same = ceiling.as_pasted(imgs, np.array([28, 28, 28, 28]))
    small = ceiling.as_pasted(imgs, np.array([20, 20, 20, 20]))
    assert same.shape == small.shape == imgs.shape and same.dtype == np.uint8
    np.testing.assert_array_equal(same, imgs)
    assert not np.array_equal(small, imgs)
