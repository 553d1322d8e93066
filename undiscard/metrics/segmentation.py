"""Counting a segmenter's results: confusion matrix, IoU / mIoU, pixel accuracy, boundary F-score and
pixel shift consistency. Torch only.

Everything is kept as exact integer sums (a confusion matrix, agreement and boundary counts), so that
batches and shards add up to the whole-data-set numbers; ratios are made only at the end.

Conventions: label maps are integer tensors (N, H, W) (or (H, W)); predictions are label maps too
(``logits.argmax(1)``). The confusion matrix ``cm[t, p]`` counts pixels of true class ``t`` predicted as
``p``; pixels whose target is ``ignore_index`` are not counted anywhere.

:class:`SegmentationTally` is what ``task="segmentation"`` counts one result row with: both confusion
matrices (clean, shifted), boundary counts, pixel agreement between clean and shifted predictions, cost.

mIoU: IoU_c = TP / (TP + FP + FN) per class; **classes absent from both the targets and the predictions
(TP + FP + FN = 0) have no IoU (NaN) and are excluded from the mean**, which is what mmsegmentation
and torchmetrics' ``MulticlassJaccardIndex(average="macro")`` do (torchmetrics tests assert the match).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.shift import overlap, translate
from .tally import Tally

__all__ = [
    "ConfusionMatrix", "SegmentationTally", "boundary_counts", "boundary_f1", "boundary_map", "confusion_matrix", "iou_per_class",
    "mean_iou", "pixel_accuracy", "shift_consistency_counts", "shift_labels",
]


def _check_maps(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} label maps differ in shape")
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError("label maps must be integer tensors (use logits.argmax(1) for predictions)")


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """Confusion matrix int64 (K, K), ``cm[t, p]`` = pixels with target t predicted p, of label maps of any
    equal shape. Pixels whose target is ``ignore_index`` are skipped; any other value outside 0..K-1 (in
    target or prediction) raises ValueError."""
    _check_maps(pred, target)
    t, p = target.reshape(-1).long(), pred.reshape(-1).long()
    if ignore_index is not None:
        keep = t != ignore_index
        t, p = t[keep], p[keep]
    if t.numel():
        lo, hi = int(torch.minimum(t.min(), p.min())), int(torch.maximum(t.max(), p.max()))
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"label values must be in 0..{num_classes - 1} (or ignore_index={ignore_index}), "
                             f"got {lo}..{hi}")
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(cm: Tensor) -> Tensor:
    """Per-class IoU float64 (K,) from a confusion matrix: TP / (TP + FP + FN); NaN where TP + FP + FN = 0."""
    cm = cm.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def mean_iou(cm: Tensor) -> float:
    """Mean IoU over the classes present in the targets or the predictions (NaN classes excluded)."""
    iou = iou_per_class(cm)
    present = ~iou.isnan()
    return float(iou[present].mean()) if present.any() else float("nan")


def pixel_accuracy(cm: Tensor) -> float:
    """Share of counted pixels whose prediction equals the target."""
    total = cm.sum()
    return float(cm.diagonal().sum().double() / total) if total > 0 else float("nan")


class ConfusionMatrix:
    """A running confusion matrix: ``update(pred, target)`` per batch, then read ``miou``, ``iou``, ``acc``.

    Matrices of shards add: ``a.cm + b.cm`` is the matrix of both.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> "ConfusionMatrix":
        """Add the pixels of label maps ``pred`` and ``target`` (same shape)."""
        self.cm += confusion_matrix(pred.cpu(), target.cpu(), self.num_classes, self.ignore_index)
        return self

    @property
    def iou(self) -> Tensor:
        return iou_per_class(self.cm)

    @property
    def miou(self) -> float:
        return mean_iou(self.cm)

    @property
    def acc(self) -> float:
        return pixel_accuracy(self.cm)


# ------------------------------------------------------------------------------------------ boundaries


def boundary_map(labels: Tensor) -> Tensor:
    """Bool (N, H, W): pixels of label maps (N, H, W) with a 4-neighbour of another label (both sides of an
    edge are marked). The image border is not a boundary."""
    lab = labels if labels.dim() == 3 else labels.unsqueeze(0)
    b = torch.zeros(lab.shape, dtype=torch.bool, device=lab.device)
    dy = lab[:, 1:, :] != lab[:, :-1, :]
    dx = lab[:, :, 1:] != lab[:, :, :-1]
    b[:, 1:, :] |= dy
    b[:, :-1, :] |= dy
    b[:, :, 1:] |= dx
    b[:, :, :-1] |= dx
    return b if labels.dim() == 3 else b[0]


def _dilate(mask: Tensor, radius: int) -> Tensor:
    if radius == 0:
        return mask
    return F.max_pool2d(mask.unsqueeze(1).float(), 2 * radius + 1, stride=1, padding=radius).squeeze(1) > 0


def boundary_counts(pred: Tensor, target: Tensor, tolerance: int = 1, valid: Tensor | None = None) -> Tensor:
    """Class-agnostic boundary matching counts int64 (4,): (predicted boundary pixels within ``tolerance`` px
    (Chebyshev) of a true boundary pixel, predicted boundary pixels, true boundary pixels within tolerance
    of a predicted one, true boundary pixels), over label maps (N, H, W). ``valid`` (N, H, W) bool limits
    the counted pixels (e.g. target != ignore). Sum the counts over batches, then :func:`boundary_f1`."""
    _check_maps(pred, target)
    pred, target = (t if t.dim() == 3 else t.unsqueeze(0) for t in (pred, target))
    bp, bt = boundary_map(pred), boundary_map(target)
    if valid is not None:
        valid = valid if valid.dim() == 3 else valid.unsqueeze(0)
        bp, bt = bp & valid, bt & valid
    near_t, near_p = _dilate(bt, tolerance), _dilate(bp, tolerance)
    return torch.stack([(bp & near_t).sum(), bp.sum(), (bt & near_p).sum(), bt.sum()]).long().cpu()


def boundary_f1(counts: Tensor) -> float:
    """Boundary F-score from :func:`boundary_counts`: 2PR / (P + R) with P, R the matched shares of predicted
    and true boundary pixels (1.0 when both maps have no boundary)."""
    mp, np_, mt, nt = (float(v) for v in counts)
    if np_ == 0 and nt == 0:
        return 1.0
    p = mp / np_ if np_ else 0.0
    r = mt / nt if nt else 0.0
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


# -------------------------------------------------------------------------------------- shift checks


def shift_labels(labels: Tensor, dy: int, dx: int, fill: int) -> Tensor:
    """Translate label maps (..., H, W) by (dy, dx) (down/right positive), ``fill`` where nothing moves in:
    ``out[..., i + dy, j + dx] = labels[..., i, j]`` (:func:`undiscard.data.shift.translate`)."""
    return translate(labels, dy, dx, fill=fill)


def shift_consistency_counts(pred: Tensor, pred_shifted: Tensor, offsets: Tensor,
                             valid: Tensor | None = None) -> Tensor:
    """Pixel shift consistency counts int64 (2,): (agreeing pixels, compared pixels).

    ``pred`` (N, H, W): labels predicted for the images; ``pred_shifted`` (N, H, W): labels predicted for
    the same images translated by ``offsets`` (N, 2) = (dy, dx) (down/right positive, as
    :func:`undiscard.data.shift_images` does). Image pixel (i, j) is compared with shifted pixel
    (i + dy, j + dx), i.e. the shifted prediction is moved back by (-dy, -dx); only pixels present in both
    views are compared (and, with ``valid`` (N, H, W) bool in the unshifted frame, only valid ones).
    """
    _check_maps(pred, pred_shifted)
    if offsets.shape != (pred.shape[0], 2):
        raise ValueError(f"offsets must have shape ({pred.shape[0]}, 2), got {tuple(offsets.shape)}")
    n, h, w = pred.shape
    agree = total = 0
    for k, (dy, dx) in enumerate(offsets.tolist()):
        where = overlap(h, w, dy, dx)
        if where is None:
            continue
        (sy, sx), (ty, tx) = where  # image pixel src moves to dst in the shifted view
        a, b = pred[k, sy, sx], pred_shifted[k, ty, tx]
        same = a == b
        if valid is not None:
            v = valid[k, sy, sx]
            same, count = same & v, int(v.sum())
        else:
            count = a.numel()
        agree += int(same.sum())
        total += count
    return torch.tensor([agree, total], dtype=torch.int64)


# ------------------------------------------------------------------------------------------- the tally


class SegmentationTally(Tally):
    """Exact sums of one row (:class:`~undiscard.metrics.tally.Tally`): confusion matrices of the clean
    images and of their shifted copies, boundary counts, pixel agreement, cost (every image run counted,
    clean and shifted). Targets are label maps (N, H, W); ``ignore_index`` pixels are not counted, and
    are what a shifted target is filled with where nothing moved in (255 when None)."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.clean = ConfusionMatrix(num_classes, ignore_index)
        self.shifted = ConfusionMatrix(num_classes, ignore_index)
        self.boundary = torch.zeros(4, dtype=torch.int64)
        self.agree = torch.zeros(2, dtype=torch.int64)
        self.cost = self.cost_ideal = 0.0
        self.images = 0  # clean images counted
        self.calls = 0  # images run (clean and shifted)
        self._clean: tuple[Tensor, Tensor] | None = None  # the last clean batch's (predictions, targets)

    def _valid(self, target: Tensor) -> Tensor | None:
        return None if self.ignore_index is None else target != self.ignore_index

    def update(self, logits: Tensor, target: Tensor, *, clean: bool = True, cost: float = 1.0, ideal: float = 1.0,
               offsets: Tensor | None = None) -> None:
        """Count one batch of logits (N, K, H, W) against the clean images' label maps ``target`` (N, H, W):
        the clean images' (``clean``), or then their shifted copies', translated by ``offsets`` (N, 2) =
        (dy, dx) (down/right positive): their target is ``target`` translated alike, and each pixel is
        compared with the clean prediction it came from (consistency)."""
        pred, target = logits.argmax(1).cpu(), target.long().cpu()
        if clean:
            self.clean.update(pred, target)
            self.boundary += boundary_counts(pred, target, valid=self._valid(target))
            self.images += pred.shape[0]
            self._clean = (pred, target)
        else:
            if offsets is None:
                raise ValueError("shifted images need their offsets")
            if self._clean is None:
                raise RuntimeError("SegmentationTally.update: a shifted batch must follow its clean batch")
            pred_clean, target_clean = self._clean
            fill = 255 if self.ignore_index is None else self.ignore_index
            off = offsets.cpu()
            shifted = torch.stack([shift_labels(target_clean[i], int(dy), int(dx), fill)
                                   for i, (dy, dx) in enumerate(off.tolist())])
            self.shifted.update(pred, shifted)
            self.agree += shift_consistency_counts(pred_clean, pred, off, valid=self._valid(target_clean))
        self.cost += cost * pred.shape[0]
        self.cost_ideal += ideal * pred.shape[0]
        self.calls += pred.shape[0]

    def counts(self) -> dict[str, float]:
        k = self.num_classes
        cells = [(t, p) for t in range(k) for p in range(k)]
        return {**{f"clean_{t}_{p}": float(self.clean.cm[t, p]) for t, p in cells},
                **{f"shifted_{t}_{p}": float(self.shifted.cm[t, p]) for t, p in cells},
                **{f"boundary_{i}": float(v) for i, v in enumerate(self.boundary.tolist())},
                "agree": float(self.agree[0]), "compared": float(self.agree[1]), "cost_sum": self.cost,
                "ideal_sum": self.cost_ideal, "n": float(self.images), "calls": float(self.calls)}

    def load_counts(self, counts: Mapping[str, float]) -> None:
        k = self.num_classes
        for name, cm in (("clean", self.clean), ("shifted", self.shifted)):
            cm.cm = torch.tensor([[counts[f"{name}_{t}_{p}"] for p in range(k)] for t in range(k)]).round().long()
        self.boundary = torch.tensor([counts[f"boundary_{i}"] for i in range(4)]).round().long()
        self.agree = torch.tensor([counts["agree"], counts["compared"]]).round().long()
        self.cost, self.cost_ideal = float(counts["cost_sum"]), float(counts["ideal_sum"])
        self.images, self.calls = int(counts["n"]), int(counts["calls"])

    def row(self) -> dict[str, Any]:
        """Percentages (mIoU, pixel accuracy, boundary F1, shifted mIoU/accuracy, consistency) and the mean
        cost per image run; shifted values are None when no shifted copy was counted."""
        shifted = self.shifted.cm.sum() > 0
        return {"miou": 100 * self.clean.miou, "pixel_acc": 100 * self.clean.acc,
                "boundary_f1": 100 * boundary_f1(self.boundary),
                "miou_shifted": 100 * self.shifted.miou if shifted else None,
                "pixel_acc_shifted": 100 * self.shifted.acc if shifted else None,
                "consistency": 100 * float(self.agree[0]) / float(self.agree[1]) if self.agree[1] > 0 else None,
                "cost": self.cost / max(self.calls, 1), "cost_ideal": self.cost_ideal / max(self.calls, 1),
                "n": self.images}
