"""``TTA(model, policy, aggregate)``: image-space test-time augmentation around a classifier or a segmenter.

The views a policy's aggregator needs are made, run through ``model`` (views of one input shape as one
batched forward, chunked to ``chunk_size`` rows), mapped back onto the input where the output is a map,
and aggregated. What a view and an aggregate are depends on the task (``task=``):

- ``"classification"`` ((N, K) logits): views of :mod:`undiscard.tta.views` (flips, shifts, crops,
  scales, photometric), which keep the input's shape; the aggregates ``mean``, ``max``, ``gps``,
  ``classtta``, ``augtta`` (:mod:`undiscard.tta.aggregators`, the last three fitted on labelled images);
- ``"segmentation"`` ((N, K, H, W) logits, or a ``{"out": ...}`` dict as torchvision's segmenters
  return: :func:`undiscard.analysis.outputs.select_output`): de-augmentable views of
  :mod:`undiscard.tta.dense_views` (flips, scales, shifts, padded to ``size_divisor`` with ``pad_value``),
  whose output maps are flipped back, cropped and resized onto the input's (H, W) grid before the
  per-pixel aggregates ``mean`` (of probabilities, as mmseg), ``logits``, ``gmean`` or ``max``. Logits
  are resized back before the softmax, as mmseg does.

``task=None`` takes the task of a ``wrap(..., task=...)``-ed ``model`` (``"segmentation"`` when it was given
so), and is classification otherwise: pass ``task="segmentation"`` for a plain segmenter.

``model`` may be a plain network or a ``wrap()``-ed one: then every view gets its own phase search (the
views are just more images to the wrapped model), so "flip x ours" is ``TTA(wrap(net, budget=B), "flip")``.
Cost: ``last_cost`` is in plain forwards of ``model`` at the input's size, per input image, every view
counted: a classification view costs one plain forward; a dense view ``flops(view input) / flops(input)``
(measured once per input shape with :class:`torch.utils.flop_counter.FlopCounterMode`: a 1.25x view of a
96 px input, padded to 128 for a stride-32 net, costs ~1.8 forwards, not 1); each times the wrapped
model's own ``last_cost`` for that view (its search, in its own plain forwards). So TTA, the phase search
and both combined are compared at equal cost.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .._testtime import TestTimeModule
from ..analysis.outputs import select_output
from ..errors import UndiscardError
from .aggregators import FITTED, TTAAggregator, TTAFileError, load_tta, make_aggregator
from .dense_views import DenseView, PadValue, dense_policy_views
from .views import View, policy_views

__all__ = ["TTA", "TTA_TASKS"]

TTA_TASKS = ("classification", "segmentation")
CHUNK_SIZE = {"classification": 1024, "segmentation": 256}  # default rows per forward


def _task_of(model: nn.Module, task: str | None) -> str:
    """The TTA's task: ``task``, else a wrapped model's explicit ``"segmentation"``, else classification."""
    if task is None:
        inner = getattr(model, "task", None)
        return "segmentation" if getattr(inner, "name", None) == "segmentation" else "classification"
    if task not in TTA_TASKS:
        raise UndiscardError(f"unknown TTA task {task!r}: expected one of {', '.join(TTA_TASKS)}")
    return task


class TTA(nn.Module):
    """Test-time augmentation of ``model`` with a policy's views (see the module docstring).

    Args:
        model: a classifier (N, C, H, W) -> (N, K) or a segmenter -> (N, K, h, w), or a ``wrap()``-ed one.
        policy: classification: ``flip``, ``standard``, ``expanded``; segmentation: ``flip``, ``flips``,
            ``multiscale``, ``flip,shift``, ``flip,multiscale``; or a list of view strings / views.
        aggregate: classification: ``mean``, ``max``, ``gps``, ``classtta``, ``augtta`` — or the path of a
            file from ``undiscard fit-tta`` / :meth:`save` (its policy must match); segmentation: ``mean``
            (probabilities, mmseg), ``logits``, ``gmean`` or ``max``.
        budget: views to use (the first ``budget`` views; for ``gps`` the greedy steps). Default: all.
        chunk_size: most rows per forward pass (default: 1024 for classification, 256 for segmentation).
        task: ``"classification"``, ``"segmentation"``, or None (see the module docstring).
        size_divisor: segmentation: pad each view's input at the bottom/right to a multiple of this (smp
            models: 32).
        pad_value: segmentation: that padding, in the model's input space (a constant, one per channel, or
            ``"edge"``); mmseg pads raw images with 0, which is ``(0 - mean) / std`` after normalisation.
    """

    def __init__(self, model: nn.Module, policy: str | Sequence[str | View | DenseView] = "flip",
                 aggregate: str | Path | TTAAggregator = "mean", budget: int | None = None,
                 chunk_size: int | None = None, *, task: Literal["classification", "segmentation"] | None = None,
                 size_divisor: int = 1, pad_value: PadValue = 0.0):
        super().__init__()
        self.task = _task_of(model, task)
        self.dense = self.task == "segmentation"
        chunk_size = CHUNK_SIZE[self.task] if chunk_size is None else chunk_size
        if size_divisor < 1 or chunk_size < 1:
            raise UndiscardError(f"size_divisor and chunk_size must be >= 1, got {size_divisor} and {chunk_size}")
        if not self.dense and (size_divisor != 1 or pad_value != 0.0):
            raise UndiscardError("size_divisor and pad_value are for task='segmentation' (classification views keep "
                                 "the input's size)")
        self.model = model
        self.policy: list = dense_policy_views(policy) if self.dense else policy_views(policy)
        self.policy_name = policy if isinstance(policy, str) else ",".join(v.name for v in self.policy)
        self.aggregator = self._aggregator(aggregate, budget)
        self.size_divisor, self.pad_value, self.chunk_size = size_divisor, pad_value, chunk_size
        self.last_cost: float = 0.0  # plain forwards per input image, all views (and searches) counted
        self.last_cost_ideal: float = 0.0
        self._flops: dict[tuple, int] = {}

    def _aggregator(self, aggregate: str | Path | TTAAggregator, budget: int | None) -> TTAAggregator:
        """The aggregator ``aggregate`` names, for this policy: made, loaded from a file, or given."""
        fitted_file = isinstance(aggregate, Path) or (isinstance(aggregate, str) and aggregate.endswith(".pt"))
        if (fitted_file or isinstance(aggregate, TTAAggregator)) and budget is not None:
            raise UndiscardError("budget= applies to a new aggregator; a fitted one keeps the views it was "
                                 "fitted with")
        if isinstance(aggregate, TTAAggregator):
            agg = aggregate
        elif fitted_file:
            agg, names, _ = load_tta(aggregate)
            if names != [v.name for v in self.policy]:
                raise TTAFileError(f"{aggregate} was fitted for views {', '.join(names)}, not this policy's "
                                   f"{', '.join(v.name for v in self.policy)}")
        else:
            agg = make_aggregator(str(aggregate), len(self.policy), budget, task=self.task)
        if agg.num_views != len(self.policy):
            raise UndiscardError(f"the aggregator is for {agg.num_views} views, the policy has {len(self.policy)}")
        if agg.output_dims != (3 if self.dense else 1):
            raise UndiscardError(f"the {agg.name} aggregator is not for task={self.task!r}")
        return agg

    @property
    def views(self) -> list:
        """The views that are run (those the aggregator needs), in order."""
        return [self.policy[i] for i in self.aggregator.views()]

    @property
    def wrapped(self) -> bool:
        """Whether ``model`` is a ``wrap()``-ed model (per-call ``budget=``, its own ``last_cost``)."""
        return isinstance(self.model, TestTimeModule)

    # --- the pieces: augment, run, de-augment, count ----------------------------------------------
    def augment(self, x: Tensor, view: View | DenseView) -> Tensor:
        """``view``'s input for ``x`` (N, C, H, W)."""
        return view.apply(x, self.size_divisor, self.pad_value) if self.dense else view(x)

    def deaugment(self, y: Tensor, view: View | DenseView, size: tuple[int, int]) -> Tensor:
        """``view``'s output ``y`` mapped back to the (H, W) = ``size`` grid of the input (a class score
        does not move: classification outputs are returned as they are)."""
        return view.invert(y, size, self.size_divisor) if self.dense else y

    def run(self, x: Tensor, **call) -> Tensor:
        """``model``'s logits of ``x`` (its output selected: a tensor, a ``{"out": ...}`` dict, ...)."""
        return select_output(self.model(x, **call))

    def flops(self, shape: Sequence[int]) -> int:
        """FLOPs of one plain forward of ``model`` on one image of ``shape`` (C, H, W) (cached per shape)."""
        key = tuple(int(s) for s in shape)
        if key not in self._flops:
            p = next(iter(self.model.parameters()), None)
            x = torch.zeros((1, *key), dtype=p.dtype if p is not None else torch.float32,
                            device=p.device if p is not None else None)
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                self.run(x, **({"budget": 1} if self.wrapped else {}))
            self._flops[key] = int(counter.get_total_flops())
        return self._flops[key]

    def view_cost(self, x: Tensor, view: View | DenseView) -> float:
        """Plain forwards at ``x``'s size that one plain forward of ``view``'s input costs: 1 for a
        classification view (same size), the FLOPs ratio for a dense one (1.0 when the model does no
        counted FLOPs)."""
        if not self.dense:
            return 1.0
        base = self.flops(x.shape[1:])
        aug_shape = (x.shape[1], *self.augment(x[:1], view).shape[-2:])
        return self.flops(aug_shape) / base if base > 0 else 1.0

    # --- the whole -----------------------------------------------------------------------------------
    def view_logits(self, x: Tensor, views: Sequence | None = None, phase_budget: int | None = None) -> Tensor:
        """Logits (N, V, *output) of ``views`` (default: those the aggregator needs) of ``x`` (N, C, H, W),
        de-augmented; views whose inputs have the same shape run as one batched (chunked) forward. Sets
        ``last_cost`` (see the module docstring).

        ``phase_budget``: states a ``wrap()``-ed model searches per view in this call (default: its own
        ``budget``, which this never changes)."""
        views = self.views if views is None else list(views)
        if phase_budget is not None and not self.wrapped and phase_budget != 1:
            raise UndiscardError(f"phase_budget={phase_budget} needs TTA around a wrap()-ed model")
        call = {"budget": phase_budget} if self.wrapped and phase_budget is not None else {}
        n, size = x.shape[0], (x.shape[-2], x.shape[-1])
        inputs = [self.augment(x, v) for v in views]
        groups: dict[tuple, list[int]] = {}
        for i, xi in enumerate(inputs):
            groups.setdefault(tuple(xi.shape[-2:]), []).append(i)
        outs: list[Tensor | None] = [None] * len(views)
        cost = ideal = 0.0
        for idx in groups.values():
            batch = torch.cat([inputs[i] for i in idx])  # view-major: rows j*N .. (j+1)*N-1
            ratio = self.view_cost(x, views[idx[0]]) if n else 1.0
            parts = []
            for start in range(0, batch.shape[0], self.chunk_size):
                chunk = batch[start:start + self.chunk_size]
                parts.append(self.run(chunk, **call))
                rows = chunk.shape[0]
                cost += ratio * (self.model.last_cost if self.wrapped else 1.0) * rows
                ideal += ratio * (self.model.last_cost_ideal if self.wrapped else 1.0) * rows
            y = torch.cat(parts)
            if len(groups) == 1 and not self.dense:  # every view in one batch, nothing to map back
                self.last_cost, self.last_cost_ideal = cost / n, ideal / n
                return y.unflatten(0, (len(views), n)).transpose(0, 1)
            for j, i in enumerate(idx):
                outs[i] = self.deaugment(y[j * n:(j + 1) * n], views[i], size)
        self.last_cost, self.last_cost_ideal = (cost / n, ideal / n) if n else (0.0, 0.0)
        return torch.stack(outs, dim=1)

    def forward(self, x: Tensor, phase_budget: int | None = None) -> Tensor:
        """Aggregated logits (N, *output) of the views of ``x`` (N, C, H, W); ``phase_budget`` as in
        :meth:`view_logits`. Segmentation: (N, K, H, W) in the aggregate's space (module docstring)."""
        if self.aggregator.name in FITTED and not self.aggregator.fitted:
            raise UndiscardError(f"TTA aggregate {self.aggregator.name!r} must be fitted first: TTA.fit(images, "
                                 "labels) or a file from `undiscard fit-tta`")
        return self.aggregator(self.view_logits(x, phase_budget=phase_budget))

    @torch.no_grad()
    def fit(self, images: Tensor, labels: Tensor, batch_size: int = 256) -> "TTA":
        """Fit a learned aggregator on labelled ``images`` (never the test set): logits of every view of
        the policy are cached, then the aggregator is fitted on them."""
        logits = torch.cat([self.view_logits(images[s:s + batch_size], self.policy)
                            for s in range(0, len(images), batch_size)])
        with torch.enable_grad():
            self.aggregator.fit(logits, labels.to(logits.device))
        return self

    def save(self, path: str | Path, meta: dict | None = None) -> Path:
        """Save the (fitted) aggregator with this policy's view names."""
        from .aggregators import save_tta

        return save_tta(path, self.aggregator, [v.name for v in self.policy], meta)

    def extra_repr(self) -> str:
        extra = f", size_divisor={self.size_divisor}" if self.dense else ""
        return (f"task={self.task!r}, policy={len(self.policy)} views, aggregate={self.aggregator.name!r}, "
                f"running {len(self.views)} views{extra}")
