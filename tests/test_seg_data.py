"""Segmentation canvases: seeded generator, masks, splits, bundled test split (no training)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from undiscard.data import fashion_mnist as fm, segmentation as seg
from undiscard.errors import UndiscardError


@pytest.fixture(scope="module")
def test_gen():
    return seg.canvas_generator("test", seed=0)


def _has_train_files() -> bool:
    return fm.has_idx_files(fm.DEBIAN_ROOT, "train")


def test_object_mask_fills_holes_only():
    ring = np.zeros((7, 7), np.uint8)
    ring[1:6, 1:6] = 200
    ring[2:5, 2:5] = 0  # a closed dark interior: part of the object
    assert seg.object_mask(ring).sum() == 25
    cup = ring.copy()
    cup[1, 2:5] = 0  # opened at the top: the gap and the interior are reached by the background
    m = seg.object_mask(cup)
    assert not m[2:5, 2:5].any() and not m[1, 2:5].any() and m.sum() == 25 - 9 - 3
    faint = np.full((5, 5), seg.THRESHOLD - 1, np.uint8)
    assert not seg.object_mask(faint).any()


@pytest.mark.parametrize("index", [0, 7, 123456])
def test_canvas_is_a_function_of_seed_split_and_index(test_gen, index):
    img, lab = test_gen.canvas(index)
    again = seg.canvas_generator("test", seed=0)
    again.canvas(index + 1)  # generating others first changes nothing
    img2, lab2 = again.canvas(index)
    assert np.array_equal(img, img2) and np.array_equal(lab, lab2)
    assert np.array_equal(test_gen.layout(index), again.layout(index))
    other = seg.canvas_generator("test", seed=1)
    assert not np.array_equal(other.layout(index), test_gen.layout(index))
    same_sources_val_stream = seg.CanvasGenerator(test_gen.images, test_gen.labels, seed=0, stream=1)
    assert not np.array_equal(same_sources_val_stream.layout(index), test_gen.layout(index))


def test_canvas_geometry_and_label_range(test_gen):
    cfg = test_gen.config
    images, labels = test_gen.batch(range(60))
    assert images.shape == labels.shape == (60, cfg.size, cfg.size)
    assert images.dtype == labels.dtype == np.uint8
    assert labels.max() <= seg.NUM_CLASSES - 1 and seg.IGNORE_INDEX not in labels
    bg = (labels == seg.BACKGROUND).mean()
    assert 0.6 < bg < 0.95, bg
    assert len(np.unique(labels)) == seg.NUM_CLASSES  # every class occurs in 60 canvases
    touching = 0
    for i in range(60):
        lay = test_gen.layout(i)
        assert cfg.min_objects <= len(lay) <= cfg.max_objects
        src, lab, top, left, side = lay.T
        assert np.array_equal(lab, test_gen.labels[src] + 1)
        assert ((side >= cfg.min_scale) & (side <= cfg.max_scale)).all()
        out = (cfg.max_outside * side).astype(int)
        assert ((top >= -out) & (left >= -out) & (top + side <= cfg.size + out) & (left + side <= cfg.size + out)).all()
        m = labels[i] > 0
        touching += bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())
    assert touching > 10  # objects cross the border: the canvas is not padded


def test_masks_consistent_with_pixels(test_gen):
    for i in range(20):
        img, lab = test_gen.canvas(i)
        assert (img[lab == seg.BACKGROUND] == 0).all()  # only mask pixels are painted
        assert (lab[img >= seg.THRESHOLD] != seg.BACKGROUND).all()
        # the last object painted is on top: all of its (visible) mask pixels carry its label
        src, label, top, left, side = test_gen.layout(i)[-1].tolist()
        alone, alone_lab = test_gen.render(test_gen.layout(i)[-1:])
        top_mask = alone_lab > 0
        assert (lab[top_mask] == label).all() and np.array_equal(img[top_mask], alone[top_mask])
        # painting order matters: later objects occlude earlier ones
        lay = test_gen.layout(i)
        first_alone = test_gen.render(lay[:1])[1] > 0
        later = np.zeros_like(first_alone)
        for row in lay[1:]:
            later |= test_gen.render(row[None])[1] > 0
        assert (lab[first_alone & ~later] == lay[0, 1]).all()  # visible where nothing later covers it
        assert np.array_equal(lab > 0, first_alone | later)  # the label map is the union of the masks


def test_test_split_uses_the_test_images(test_gen):
    images, labels = fm.load_fashion_mnist("test")
    assert test_gen.split == "test" and np.array_equal(test_gen.source_ids, np.arange(len(images)))
    assert np.array_equal(test_gen.images, images) and np.array_equal(test_gen.labels, labels)


@pytest.mark.skipif(not _has_train_files(), reason="Fashion-MNIST train files not installed")
def test_train_and_val_sources_are_disjoint_train_images():
    tr = seg.canvas_generator("train")
    va = seg.canvas_generator("val")
    assert len(np.intersect1d(tr.source_ids, va.source_ids)) == 0
    assert len(tr.source_ids) + len(va.source_ids) == 60000 and len(va.source_ids) == seg.VAL_SIZE
    images, labels = fm.load_fashion_mnist("train")
    for gen in (tr, va):
        assert np.array_equal(gen.images[:50], images[gen.source_ids[:50]])
        assert np.array_equal(gen.labels, labels[gen.source_ids])
    assert not np.array_equal(tr.canvas(0)[0], va.canvas(0)[0])


def test_bundled_test_split_matches_the_generator():
    assert seg.BUNDLED_SEG_TEST.is_file() and seg.BUNDLED_SEG_TEST.stat().st_size < 6_000_000
    images, masks = seg.load_seg_test()
    info = seg.seg_test_info()
    n = len(images)
    assert n == 2000 and images.shape == masks.shape == (n, 96, 96)
    assert images.dtype == masks.dtype == np.uint8 and masks.max() < seg.NUM_CLASSES
    assert info["config"] == seg.DEFAULT_CONFIG and info["layouts"].shape == (n, seg.DEFAULT_CONFIG.max_objects, 5)
    gen = seg.canvas_generator("test", seed=info["seed"], config=info["config"])
    for i in (0, 1, 2, 999, n - 1):
        img, lab = gen.canvas(i)
        # the objects are resized by float32 interpolation, whose last bit depends on the kernel the CPU
        # picks (ATEN_CPU_CAPABILITY=default moves one pixel of canvas 1999 by one grey level): the
        # bundled canvases are the generator's to one grey level, on at most 0.1% of the pixels
        diff = np.abs(img.astype(np.int64) - images[i].astype(np.int64))
        assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3
        assert (lab != masks[i]).mean() <= 1e-3
        lay = info["layouts"][i]
        assert np.array_equal(lay[lay[:, 0] >= 0], gen.layout(i))


def test_save_and_load_round_trip(tmp_path, test_gen):
    path = tmp_path / "split.npz"
    seg.save_seg_split(path, test_gen, 3)
    images, masks = seg.load_seg_test(path)
    ref = test_gen.batch(range(3))
    assert np.array_equal(images, ref[0]) and np.array_equal(masks, ref[1])
    assert seg.seg_test_info(path)["seed"] == 0
    with pytest.raises(FileNotFoundError, match="bundle_seg_data.py") as e:
        seg.load_seg_test(tmp_path / "missing.npz")
    assert "\n" not in str(e.value)


def test_bad_settings_raise_one_line_errors(test_gen):
    for kwargs in (dict(min_objects=3, max_objects=2), dict(min_scale=50, max_scale=40),
                   dict(max_scale=200), dict(max_outside=1.0), dict(threshold=0)):
        with pytest.raises(seg.SegDataError):
            seg.CanvasConfig(**kwargs)
    with pytest.raises(seg.SegDataError, match="split"):
        seg.canvas_generator("validation")
    with pytest.raises(seg.SegDataError, match="index"):
        test_gen.canvas(-1)
    with pytest.raises(UndiscardError, match="labels"):
        seg.CanvasGenerator(np.zeros((2, 28, 28), np.uint8), np.array([0, 10]))


def test_to_input():
    images, _ = seg.load_seg_test()
    x = seg.to_input(images[:4])
    assert x.shape == (4, 1, 96, 96) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, 0], (torch.as_tensor(images[0]).float() / 255 - seg.MEAN) / seg.STD)
    assert seg.to_input(images[:2], in_chans=3).shape == (2, 3, 96, 96)
    assert len(seg.CLASS_NAMES) == seg.NUM_CLASSES and seg.CLASS_NAMES[0] == "background"
    assert seg.CLASS_NAMES[1:] == fm.CLASS_NAMES
