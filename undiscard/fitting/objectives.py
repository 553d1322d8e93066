"""What a calibrated state order maximises: objectives accumulated over chunks of images.

:func:`undiscard.fitting.calibration.calibrate` ranks states greedily by an :class:`Objective` of the aggregate's
output. Outputs arrive a chunk of rows at a time (the states of every image are never all in memory), so
each objective is an accumulator: ``acc = objective.accumulator(task)``, ``acc.add(outputs, targets)`` per
chunk, ``acc.result()`` -> ``(quality, tie)``: higher quality first, then lower ``tie``.

- ``accuracy`` (needs labels): the task's score — classification: top-1 accuracy, ties by the mean negative
  log-likelihood (float64); segmentation: mIoU of the confusion matrix summed over all images (pixels whose
  label is not a class are not counted), ties by the mean per-pixel NLL. Another task's outputs are kept
  and scored once by its :meth:`~undiscard.tasks.base.Task.calibration_score`.
- label-free, on *pairs* (rows ``2i`` and ``2i+1``: an image and the same scene displaced by a few pixels
  of real content), for classifiers:

  * ``consistency``: the share of pairs whose two top-1 classes agree, ties by the mean symmetric KL
    divergence ``KL(p||q) + KL(q||p)`` of the two softmax distributions;
  * ``agreement``: the mean probability that the two views agree, ``Σ_k p_k q_k`` (a smooth version of the
    top-1 agreement: it moves with every logit, not only when an argmax flips), ties by the symmetric KL;
  * ``kl``: minus the mean symmetric KL, ties by minus the agreement.

  None of them sees a label: a state that made every image the same class would be perfectly consistent, so
  label-free orders are only as good as the model's own predictions; the evaluation reports top-1 beside it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .._registry import NamedRegistry
from ..errors import UndiscardError
from ..metrics.segmentation import confusion_matrix, mean_iou

if TYPE_CHECKING:  # type hints only
    from ..tasks.base import Task

__all__ = ["Objective", "Accumulator", "register_objective", "get_objective", "pair_stats", "list_objectives", "OBJECTIVES"]


class Accumulator:
    """Sums over chunks of rows; :meth:`result` is (quality, tie-break)."""

    def add(self, outputs: Tensor, targets: Tensor | None) -> None:
        raise NotImplementedError

    def result(self) -> tuple[float, float]:
        raise NotImplementedError


class Objective:
    """One calibration objective. ``needs_labels``: rows come with targets; ``pairs``: rows come as pairs
    (``2i``, ``2i+1``) and a chunk never splits one."""

    name: ClassVar[str] = ""
    needs_labels: ClassVar[bool] = True
    pairs: ClassVar[bool] = False

    def accumulator(self, task: "Task") -> Accumulator:
        raise NotImplementedError


_OBJECTIVES: NamedRegistry[Objective] = NamedRegistry("objective")
register_objective = _OBJECTIVES.register
get_objective = _OBJECTIVES.create  # unknown names: one UndiscardError listing the objectives
__getattr__ = _OBJECTIVES.module_getattr("OBJECTIVES", __name__)


def list_objectives() -> list[str]:
    """The registered calibration objective names, in registration order (``undiscard calibrate --objective``)."""
    return list(_OBJECTIVES.names())


class _TopOne(Accumulator):
    def __init__(self) -> None:
        self.correct, self.nll, self.n = 0, 0.0, 0

    def add(self, outputs: Tensor, targets: Tensor | None) -> None:
        assert targets is not None
        self.correct += int((outputs.argmax(-1) == targets).sum())
        self.nll += float(F.cross_entropy(outputs.double(), targets, reduction="sum"))
        self.n += int(targets.shape[0])

    def result(self) -> tuple[float, float]:
        return self.correct / self.n, self.nll / self.n


class _MeanIoU(Accumulator):
    def __init__(self) -> None:
        self.cm: Tensor | None = None
        self.nll, self.pixels = 0.0, 0

    def add(self, outputs: Tensor, targets: Tensor | None) -> None:
        assert targets is not None
        k = outputs.shape[1]
        valid = (targets >= 0) & (targets < k)
        cm = confusion_matrix(outputs.max(1).indices[valid], targets[valid], k)
        self.cm = cm if self.cm is None else self.cm + cm
        self.nll += float(F.cross_entropy(outputs.float(), torch.where(valid, targets, -100).long(),
                                          ignore_index=-100, reduction="sum"))
        self.pixels += int(valid.sum())

    def result(self) -> tuple[float, float]:
        assert self.cm is not None
        return mean_iou(self.cm), self.nll / max(1, self.pixels)


class _Whole(Accumulator):
    """Another task: outputs kept, scored once by the task (not bounded in the number of images)."""

    def __init__(self, task: "Task") -> None:
        self.task, self.outputs, self.targets = task, [], []

    def add(self, outputs: Tensor, targets: Tensor | None) -> None:
        self.outputs.append(outputs)
        self.targets.append(targets)

    def result(self) -> tuple[float, float]:
        return self.task.calibration_score(torch.cat(self.outputs), torch.cat(self.targets))


@register_objective("accuracy")
class Accuracy(Objective):
    """The task's calibration score on labelled images (top-1; mIoU for segmentation)."""

    def accumulator(self, task: "Task") -> Accumulator:
        name = task.resolved_name
        if name == "classification":
            return _TopOne()
        if name == "segmentation":
            return _MeanIoU()
        return _Whole(task)


def pair_stats(outputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per pair of rows (2i, 2i+1) of classification logits (2P, K): (top-1 agrees (P,) bool, the probability
    the two views agree Σ_k p_k q_k (P,), the symmetric KL divergence (P,)), in float64."""
    if outputs.dim() != 2 or outputs.shape[0] % 2:
        raise UndiscardError(f"consistency objectives need (2P, K) logits of pairs of views, got "
                             f"{tuple(outputs.shape)}")
    logp = torch.log_softmax(outputs.double(), -1)
    a, b = logp[0::2], logp[1::2]
    agree = a.argmax(-1) == b.argmax(-1)
    prob = (a.exp() * b.exp()).sum(-1)
    kl = ((a.exp() - b.exp()) * (a - b)).sum(-1)
    return agree, prob, kl


class _Pairs(Accumulator):
    def __init__(self, quality: str, tie: str) -> None:
        self.sums = {"agree": 0.0, "prob": 0.0, "kl": 0.0}
        self.n, self.quality, self.tie = 0, quality, tie

    def add(self, outputs: Tensor, targets: Tensor | None) -> None:
        agree, prob, kl = pair_stats(outputs)
        self.sums["agree"] += float(agree.sum())
        self.sums["prob"] += float(prob.sum())
        self.sums["kl"] += float(kl.sum())
        self.n += int(agree.shape[0])

    def value(self, key: str) -> float:
        sign = -1.0 if key.startswith("-") else 1.0
        return sign * self.sums[key.lstrip("-")] / max(1, self.n)

    def result(self) -> tuple[float, float]:
        return self.value(self.quality), self.value(self.tie)


class _PairObjective(Objective):
    needs_labels = False
    pairs = True
    quality: ClassVar[str] = "agree"
    tie: ClassVar[str] = "kl"

    def accumulator(self, task: "Task") -> Accumulator:
        if task.resolved_name == "segmentation":
            raise UndiscardError(f"objective {self.name!r} compares the top-1 classes of pairs of views: it is for "
                                 "classifiers (segmentation calibrates with labels: objective='accuracy')")
        return _Pairs(self.quality, self.tie)


@register_objective("consistency")
class Consistency(_PairObjective):
    """Top-1 agreement of pairs of views, ties by the mean symmetric KL."""


@register_objective("agreement")
class Agreement(_PairObjective):
    """The mean probability that the two views of a pair agree, ties by the mean symmetric KL."""

    quality = "prob"


@register_objective("kl")
class SymmetricKL(_PairObjective):
    """Minus the mean symmetric KL between the views of a pair, ties by minus the agreement probability."""

    quality, tie = "-kl", "-prob"
