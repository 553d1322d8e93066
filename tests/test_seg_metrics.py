"""Segmentation metrics: confusion matrix, IoU/mIoU, pixel accuracy, boundary F-score, shift consistency."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from undiscard.data.shift import translate
from undiscard.metrics import segmentation as sm

# target / prediction, 2 x 3 pixels, 5 classes (2 and 4 absent from both)
T = torch.tensor([[0, 0, 1], [1, 3, 3]])
P = torch.tensor([[0, 1, 1], [1, 3, 0]])


def test_hand_computed_case():
    cm = sm.confusion_matrix(P, T, 5)
    expected = torch.zeros(5, 5, dtype=torch.int64)
    for t, p in [(0, 0), (0, 1), (1, 1), (1, 1), (3, 3), (3, 0)]:
        expected[t, p] += 1
    assert torch.equal(cm, expected)
    iou = sm.iou_per_class(cm)
    # class 0: TP 1, FP 1 (a 3 predicted 0), FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 3: 1/2
    torch.testing.assert_close(iou[[0, 1, 3]], torch.tensor([1 / 3, 2 / 3, 1 / 2], dtype=torch.float64))
    assert iou[2].isnan() and iou[4].isnan()  # absent from target and prediction: no IoU
    assert sm.mean_iou(cm) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)  # absent classes excluded
    assert sm.pixel_accuracy(cm) == pytest.approx(4 / 6)


def test_ignore_index_and_errors():
    t = T.clone()
    t[1, 1:] = 255  # both 3s ignored: class 3 then appears nowhere
    cm = sm.confusion_matrix(P, t, 5, ignore_index=255)
    assert int(cm.sum()) == 4
    assert sm.iou_per_class(cm)[3].isnan()
    assert sm.mean_iou(cm) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert sm.pixel_accuracy(cm) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="0..4"):
        sm.confusion_matrix(P, t, 5)  # 255 without ignore_index
    with pytest.raises(ValueError, match="shape"):
        sm.confusion_matrix(P[:1], T, 5)
    with pytest.raises(ValueError, match="integer"):
        sm.confusion_matrix(P.float(), T, 5)
    empty = sm.confusion_matrix(P, torch.full_like(T, 255), 5, ignore_index=255)
    assert math.isnan(sm.mean_iou(empty)) and math.isnan(sm.pixel_accuracy(empty))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_matches_a_loop_and_accumulates(seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 6, (3, 7, 5), generator=g)
    p = torch.randint(0, 6, (3, 7, 5), generator=g)
    ref = torch.zeros(6, 6, dtype=torch.int64)
    for a, b in zip(t.flatten().tolist(), p.flatten().tolist()):
        ref[a, b] += 1
    assert torch.equal(sm.confusion_matrix(p, t, 6), ref)
    acc = sm.ConfusionMatrix(6)
    for k in range(3):
        acc.update(p[k], t[k])
    assert torch.equal(acc.cm, ref)
    assert acc.miou == sm.mean_iou(ref) and acc.acc == sm.pixel_accuracy(ref)


def _torchmetrics():
    if importlib.util.find_spec("torchmetrics") is None:
        pytest.skip("torchmetrics not installed")
    if importlib.util.find_spec("torchvision") is not None:
        from undiscard._compat import import_torchvision

        import_torchvision()  # torchmetrics imports torchvision (CPU-torch workaround first)
    import torchmetrics.classification as tmc

    return tmc


@pytest.mark.parametrize("seed,ignore", [(0, None), (1, None), (2, 255), (3, 255)])
def test_miou_matches_torchmetrics(seed, ignore):
    tmc = _torchmetrics()
    k = 11
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, k - 3, (4, 16, 16), generator=g)  # classes 8..10 never in the target ...
    p = torch.where(torch.rand(t.shape, generator=g) < 0.7, t, torch.randint(0, k - 1, t.shape, generator=g))
    # ... class 9 is predicted only (IoU 0, counted), class 10 appears nowhere (excluded)
    if ignore is not None:
        t = torch.where(torch.rand(t.shape, generator=g) < 0.1, torch.full_like(t, ignore), t)
    cm = sm.confusion_matrix(p, t, k, ignore_index=ignore)
    jac = tmc.MulticlassJaccardIndex(num_classes=k, average="macro", ignore_index=ignore)
    assert sm.mean_iou(cm) == pytest.approx(float(jac(p, t)), abs=1e-6)
    per = tmc.MulticlassJaccardIndex(num_classes=k, average="none", ignore_index=ignore)(p, t)
    ours = sm.iou_per_class(cm)
    present = ~ours.isnan()
    torch.testing.assert_close(ours[present].float(), per[present], rtol=0, atol=1e-6)
    assert not present[10] and present[9] and ours[9] == 0
    acc = tmc.MulticlassAccuracy(num_classes=k, average="micro", ignore_index=ignore)(p, t)
    assert sm.pixel_accuracy(cm) == pytest.approx(float(acc), abs=1e-6)


def test_boundary_map_and_f1():
    lab = torch.zeros(1, 4, 6, dtype=torch.long)
    lab[:, :, 3:] = 2  # a vertical edge between columns 2 and 3
    b = sm.boundary_map(lab)
    assert torch.equal(b[0].nonzero()[:, 1].unique(), torch.tensor([2, 3]))  # both sides, every row
    assert int(b.sum()) == 8 and sm.boundary_map(lab[0]).shape == (4, 6)
    assert sm.boundary_f1(sm.boundary_counts(lab, lab, tolerance=0)) == 1.0
    moved = torch.zeros_like(lab)
    moved[:, :, 4:] = 2  # edge one column to the right
    assert sm.boundary_f1(sm.boundary_counts(moved, lab, tolerance=1)) == 1.0
    assert sm.boundary_f1(sm.boundary_counts(moved, lab, tolerance=0)) == pytest.approx(0.5)  # column 3 shared
    flat = torch.zeros_like(lab)
    assert sm.boundary_f1(sm.boundary_counts(flat, lab)) == 0.0
    assert sm.boundary_f1(sm.boundary_counts(flat, flat)) == 1.0
    counts = sm.boundary_counts(moved, lab, tolerance=0, valid=torch.zeros_like(lab, dtype=torch.bool))
    assert counts.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("dy,dx", [(0, 0), (2, -1), (-3, 4), (5, 0)])
def test_shift_labels_is_translate(dy, dx):
    lab = torch.randint(1, 5, (2, 9, 8))
    torch.testing.assert_close(sm.shift_labels(lab, dy, dx, fill=0), translate(lab, dy, dx))
    out = sm.shift_labels(lab, dy, dx, fill=255)
    assert int((out == 255).sum()) == 2 * (72 - (9 - abs(dy)) * (8 - abs(dx)))


def test_shift_consistency_counts():
    g = torch.Generator().manual_seed(0)
    lab = torch.randint(0, 4, (3, 10, 12), generator=g)
    offsets = torch.tensor([[1, 2], [-3, 0], [0, 0]])
    # a perfectly equivariant "model": the prediction moves with the input
    shifted = torch.stack([sm.shift_labels(lab[k], dy, dx, fill=0) for k, (dy, dx) in enumerate(offsets.tolist())])
    agree, total = sm.shift_consistency_counts(lab, shifted, offsets).tolist()
    assert agree == total == 9 * 10 + 7 * 12 + 10 * 12  # only pixels present in both views
    # a "model" that ignores its input: agreement = pixels equal to their (dy, dx) neighbour
    agree, total = sm.shift_consistency_counts(lab, lab, offsets).tolist()
    expected = sum(int((lab[k, max(0, -dy):10 - max(0, dy), max(0, -dx):12 - max(0, dx)]
                        == lab[k, max(0, dy):10 - max(0, -dy), max(0, dx):12 - max(0, -dx)]).sum())
                   for k, (dy, dx) in enumerate(offsets.tolist()))
    assert agree == expected and total == 9 * 10 + 7 * 12 + 10 * 12
    valid = torch.zeros(3, 10, 12, dtype=torch.bool)
    valid[2, :5] = True
    assert sm.shift_consistency_counts(lab, shifted, offsets, valid=valid).tolist() == [60, 60]
    with pytest.raises(ValueError, match="offsets"):
        sm.shift_consistency_counts(lab, lab, offsets[:2])
