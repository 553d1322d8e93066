"""Combining the logits of a policy's views into one prediction: (N, V, K) -> (N, K) for a classifier,
(N, V, K, H, W) -> (N, K, H, W) for a segmenter (``task="segmentation"``, views already de-augmented).

Classification (:data:`TTA_AGGREGATES`):

- ``mean``: mean of the views' logits; ``max``: per-class maximum.
- ``gps``: greedy policy search (Molchanov et al., 2020). Each view's logits are temperature-scaled
  (one temperature per view, fitted by NLL), then views are added greedily, with replacement, to an
  ensemble averaging their calibrated log-probabilities, each time taking the view that most improves
  the ensemble's log-likelihood; ``budget`` steps, so at most ``budget`` distinct views are ever run.
- ``classtta``: a weight per view and class, ``Σ_v W[v, k] * logits[v, k]`` (Shanmugam et al., 2021).
- ``augtta``: a weight per view, ``Σ_v w[v] * logits[v]``.

The last three are fitted on cached view logits of a labelled split (never the test set): weights
start at the mean (1/V), and are fitted by cross-entropy with L-BFGS. ``budget`` limits the views used:
the first ``budget`` views of the policy (mean, max, classtta, augtta) or the greedy steps of gps.
Every aggregator says which views it needs (:meth:`TTAAggregator.views`), so only those are run.

Segmentation (:data:`DENSE_AGGREGATES`), per pixel, never fitted:

============  ===================================================  ================================
aggregate     averages                                             returns (N, K, H, W)
============  ===================================================  =======================================
``mean``      softmax **probabilities** (mmsegmentation's          log of the mean probability
              ``SegTTAModel``: ``seg_logit.softmax`` summed / V)   (log-probabilities; ``exp`` sums to 1)
``logits``    raw **logits** (qubvel/ttach's ``merge_mode="mean"``) the mean logits (one view: the network's
                                                                   output itself, bit for bit)
``gmean``     **log-probabilities** (geometric mean of the         log-probabilities (renormalised)
              probabilities)
``max``       per-class maximum of the probabilities               log-probabilities (renormalised)
============  ===================================================  =======================================

Whatever the aggregator, ``argmax(1)`` of the result is the predicted label map and ``log_softmax(1)``
of it the log-probabilities.
=======
They are a registry (:func:`register_tta_aggregate`; ``TTA_AGGREGATES`` is the tuple of registered names).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._files import load_tagged, save_tagged
from .._registry import Registry
from ..errors import UndiscardError

__all__ = ["TTAAggregator", "TTA_AGGREGATES", "DENSE_AGGREGATES", "FITTED", "make_aggregator", "register_tta_aggregate",
           "list_tta_aggregates", "save_tta", "load_tta", "TTAFileError"]

FORMAT = "undiscard-tta-aggregator/1"
FITTED = ("gps", "classtta", "augtta")


class TTAFileError(UndiscardError, ValueError):
    """A fitted-TTA file that is missing, unreadable, or made for another policy."""


class TTAAggregator(nn.Module):
    """Aggregates (N, len(views()), K) logits of the views it needs into (N, K)."""

    name = "mean"

    def __init__(self, num_views: int, budget: int | None = None):
        super().__init__()
        if num_views < 1:
            raise UndiscardError("a TTA policy needs at least one view")
        if budget is not None and budget < 1:
            raise UndiscardError(f"TTA budget must be positive, got {budget}")
        self.num_views = num_views
        self.budget = min(budget or num_views, num_views)
        self.fitted = self.name not in FITTED

    def views(self) -> list[int]:
        """Indices (into the policy's views) of the views this aggregator needs, in order."""
        return list(range(self.budget))

    def combine(self, logits: Tensor) -> Tensor:  # pragma: no cover - overridden
        return logits.mean(1)

    output_dims = 1  # dims of one prediction: (K,); a dense aggregator's (K, H, W)

    def forward(self, logits: Tensor) -> Tensor:
        if logits.dim() != 2 + self.output_dims or logits.shape[1] != len(self.views()):
            shape = "K" if self.output_dims == 1 else "K, H, W"
            raise UndiscardError(f"{self.name} expects (N, {len(self.views())}, {shape}) view logits, got "
                                 f"{tuple(logits.shape)}")
        return self.combine(logits)

    def fit(self, logits: Tensor, labels: Tensor) -> "TTAAggregator":
        """Fit on (N, V, K) logits of *all* the policy's views and labels (N,); no-op for mean/max."""
        self.fitted = True
        return self

    def extra_repr(self) -> str:
        return f"views={self.num_views}, budget={self.budget}"


class MeanTTA(TTAAggregator):
    name = "mean"

    def combine(self, logits: Tensor) -> Tensor:
        return logits.mean(1)


class MaxTTA(TTAAggregator):
    name = "max"

    def combine(self, logits: Tensor) -> Tensor:
        return logits.max(1).values


def _check_fit_inputs(logits: Tensor, labels: Tensor, num_views: int) -> None:
    if logits.dim() != 3 or logits.shape[1] != num_views or labels.shape != logits.shape[:1]:
        raise UndiscardError(f"fit expects (N, {num_views}, K) logits of every view and (N,) labels, got "
                             f"{tuple(logits.shape)} and {tuple(labels.shape)}")


def _lbfgs(params: list[Tensor], loss_fn, steps: int = 100) -> None:
    opt = torch.optim.LBFGS(params, lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)


class WeightedTTA(TTAAggregator):
    """Linear weights on the first ``budget`` views' logits: per view (augtta) or per view and class."""

    per_class = False

    def __init__(self, num_views: int, budget: int | None = None, num_classes: int = 0):
        super().__init__(num_views, budget)
        shape = (self.budget, num_classes) if self.per_class else (self.budget, 1)
        self.weight = nn.Parameter(torch.full(shape, 1.0 / self.budget), requires_grad=False)

    def combine(self, logits: Tensor) -> Tensor:
        w = self.weight.to(logits.dtype)
        if self.per_class and w.shape[1] != logits.shape[-1]:
            raise UndiscardError(f"{self.name} was fitted for {w.shape[1]} classes, the model gives {logits.shape[-1]}")
        return (logits * w).sum(1)

    def fit(self, logits: Tensor, labels: Tensor, weight_decay: float = 1e-3) -> "WeightedTTA":
        _check_fit_inputs(logits, labels, self.num_views)
        x = logits[:, :self.budget].detach().float()
        if self.per_class:
            self.weight = nn.Parameter(torch.full((self.budget, x.shape[-1]), 1.0 / self.budget), requires_grad=False)
        w = self.weight.detach().clone().float().requires_grad_(True)
        start = w.detach().clone()

        def loss() -> Tensor:
            return F.cross_entropy((x * w).sum(1), labels) + weight_decay * (w - start).pow(2).sum()

        _lbfgs([w], loss)
        self.weight.data.copy_(w.detach())
        self.fitted = True
        return self


class AugTTA(WeightedTTA):
    name = "augtta"
    per_class = False


class ClassTTA(WeightedTTA):
    name = "classtta"
    per_class = True


class GPS(TTAAggregator):
    """Greedy policy search with per-view temperature scaling (see the module doc)."""

    name = "gps"

    def __init__(self, num_views: int, budget: int | None = None):
        super().__init__(num_views, budget)
        self.register_buffer("temperature", torch.ones(num_views))
        self.register_buffer("counts", torch.zeros(num_views))
        self.counts[0] = 1.0  # unfitted: the first view alone

    def views(self) -> list[int]:
        return [int(v) for v in torch.nonzero(self.counts > 0).flatten()]

    def combine(self, logits: Tensor) -> Tensor:
        idx = self.views()
        t = self.temperature[idx].to(logits.dtype).view(1, -1, 1)
        w = (self.counts[idx] / self.counts[idx].sum()).to(logits.dtype).view(1, -1, 1)
        return (torch.log_softmax(logits / t, dim=-1) * w).sum(1)

    def fit(self, logits: Tensor, labels: Tensor) -> "GPS":
        _check_fit_inputs(logits, labels, self.num_views)
        x = logits.detach().float()
        temps = torch.ones(self.num_views)
        for v in range(self.num_views):  # temperature scaling, one view at a time
            log_t = torch.zeros((), requires_grad=True)
            _lbfgs([log_t], lambda v=v, log_t=log_t: F.cross_entropy(x[:, v] / log_t.exp(), labels), steps=50)
            temps[v] = float(log_t.detach().exp())
        logp = torch.log_softmax(x / temps.view(1, -1, 1), dim=-1)  # (N, V, K) calibrated
        counts = torch.zeros(self.num_views)
        total = torch.zeros_like(logp[:, 0])
        for step in range(self.budget):
            # candidate ensembles: the current average with each view added once more
            cand = (total[:, None] + logp) / (step + 1)  # (N, V, K)
            nll = F.cross_entropy(cand.permute(0, 2, 1), labels[:, None].expand(-1, self.num_views),
                                  reduction="none").mean(0)  # (V,)
            best = int(nll.argmin())
            counts[best] += 1
            total = total + logp[:, best]
        self.temperature.copy_(temps)
        self.counts.copy_(counts)
        self.fitted = True
        return self


def _mean_prob(logits: Tensor) -> Tensor:
    v = logits.shape[1]
    return torch.logsumexp(torch.log_softmax(logits, dim=2), dim=1) - math.log(v)


def _mean_logits(logits: Tensor) -> Tensor:
    return logits[:, 0] if logits.shape[1] == 1 else logits.mean(1)


def _gmean(logits: Tensor) -> Tensor:
    return torch.log_softmax(torch.log_softmax(logits, dim=2).mean(1), dim=1)


def _max_prob(logits: Tensor) -> Tensor:
    return torch.log_softmax(torch.log_softmax(logits, dim=2).amax(1), dim=1)


DENSE_AGGREGATES: dict[str, Callable[[Tensor], Tensor]] = {
    "mean": _mean_prob, "logits": _mean_logits, "gmean": _gmean, "max": _max_prob}


class DenseTTAAggregator(TTAAggregator):
    """A per-pixel aggregate of de-augmented (N, V, K, H, W) view logits (:data:`DENSE_AGGREGATES`)."""

    output_dims = 3

    def __init__(self, name: str, num_views: int, budget: int | None = None):
        self.name = name
        super().__init__(num_views, budget)

    def combine(self, logits: Tensor) -> Tensor:
        return DENSE_AGGREGATES[self.name](logits)


_CLASSES: Registry[type[TTAAggregator]] = Registry("TTA aggregate")
for _cls in (MeanTTA, MaxTTA, GPS, ClassTTA, AugTTA):
    _CLASSES.add(_cls.name, _cls)
register_tta_aggregate = _CLASSES.register  # @register_tta_aggregate(name): TTA(..., aggregate=name)
__getattr__ = _CLASSES.module_getattr("TTA_AGGREGATES", __name__)  # TTA_AGGREGATES: names


def list_tta_aggregates() -> list[str]:
    """The registered TTA aggregate names, in registration order (``TTA(..., aggregate=...)``)."""
    return list(_CLASSES.names())


def make_aggregator(name: str, num_views: int, budget: int | None = None, num_classes: int = 0,
                    task: str = "classification") -> TTAAggregator:
    """An (unfitted) TTA aggregator by name for a policy of ``num_views`` views: of :data:`TTA_AGGREGATES`,
    or for ``task="segmentation"`` of :data:`DENSE_AGGREGATES`."""
    if task == "segmentation":
        if name not in DENSE_AGGREGATES:
            raise UndiscardError(f"unknown dense TTA aggregate {name!r}: expected one of {', '.join(DENSE_AGGREGATES)}")
        return DenseTTAAggregator(name, num_views, budget)
    cls = _CLASSES.get(name)  # unknown names: one UndiscardError listing them
    if issubclass(cls, WeightedTTA):
        return cls(num_views, budget, num_classes)
    return cls(num_views, budget)


def save_tta(path: str | Path, aggregator: TTAAggregator, views: list[str], meta: dict[str, Any] | None = None) -> Path:
    """Save a (fitted) aggregator with the names of the policy's views it was fitted for."""
    return save_tagged(path, FORMAT, {"aggregate": aggregator.name, "views": list(views), "budget": aggregator.budget,
                                      "state_dict": {k: v.detach().cpu() for k, v in aggregator.state_dict().items()},
                                      "meta": meta})


def load_tta(path: str | Path) -> tuple[TTAAggregator, list[str], dict[str, Any]]:
    """Load a file from :func:`save_tta` / ``undiscard fit-tta``: (aggregator, view names, meta)."""
    blob = load_tagged(path, FORMAT, TTAFileError, "TTA aggregator")
    state = blob["state_dict"]
    classes = state["weight"].shape[1] if "weight" in state else 0
    agg = make_aggregator(blob["aggregate"], len(blob["views"]), blob["budget"], classes)
    agg.load_state_dict(state)
    agg.fitted = True
    return agg.eval(), list(blob["views"]), dict(blob.get("meta", {}))
