"""``DenseTTA(model, policy, aggregate)``: image-space test-time augmentation for segmentation.

Every view of the policy (:mod:`undiscard.tta.dense_views`: flips, scales) is applied to the input, run
through ``model`` and its (N, K, h, w) logits are mapped back onto the input's (H, W) grid (flipped back,
padding cropped, resized bilinearly); then the views are combined per pixel by an aggregator:

============  ===================================================  =======================================
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
of it the log-probabilities. Logits are resized back *before* the softmax, as mmseg does.

``model`` may be a plain segmenter (a tensor, or a ``{"out": ...}`` dict as torchvision's segmenters
return: :func:`undiscard.analysis.outputs.select_output`) or a ``wrap(seg_net, task="segmentation")``-ed one: then
every view gets its own phase search (the views are more images to it), so "flip x ours" is
``DenseTTA(wrap(net, budget=B, task="segmentation"), "flip")``.

Cost: ``last_cost`` is in plain forwards of ``model`` at the input's size, per input image, every view
counted: a view costs ``flops(view input) / flops(input)`` plain forwards (measured once per input shape
with :class:`torch.utils.flop_counter.FlopCounterMode`, which counts convolutions and matrix products:
a 1.25x view of a 96 px input, padded to 128 for a stride-32 net, costs ~1.8 forwards, not 1), times
the wrapped model's own ``last_cost`` for that view (its search, in its own plain forwards).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .._testtime import TestTimeModule
from ..analysis.outputs import select_output
from ..errors import UndiscardError
from .dense_views import DenseView, PadValue, dense_policy_views

__all__ = ["DenseTTA", "DENSE_AGGREGATES", "combine_dense"]


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


def combine_dense(logits: Tensor, aggregate: str = "mean") -> Tensor:
    """Combine de-augmented view logits (N, V, K, H, W) into (N, K, H, W) (see the module docstring)."""
    if aggregate not in DENSE_AGGREGATES:
        raise UndiscardError(f"unknown dense TTA aggregate {aggregate!r}: expected one of {', '.join(DENSE_AGGREGATES)}")
    if logits.dim() != 5:
        raise UndiscardError(f"dense TTA combines (N, V, K, H, W) view logits, got {tuple(logits.shape)}")
    return DENSE_AGGREGATES[aggregate](logits)


class DenseTTA(nn.Module):
    """Dense test-time augmentation of ``model`` (see the module docstring).

    Args:
        model: a segmenter (N, C, H, W) -> (N, K, h, w) logits, or a ``wrap(..., task="segmentation")``-ed one.
        policy: ``flip``, ``flips``, ``multiscale``, ``flip,multiscale``, or a list of views / view strings.
        aggregate: ``mean`` (probabilities, mmseg), ``logits``, ``gmean`` or ``max``.
        size_divisor: pad each view's input at the bottom/right to a multiple of this (smp models: 32).
        pad_value: the padding, in the model's input space (a constant, one per channel, or ``"edge"``);
            mmseg pads raw images with 0, which is ``(0 - mean) / std`` after normalisation.
        chunk_size: most rows per forward pass.
    """

    def __init__(self, model: nn.Module, policy: str | Sequence[str | DenseView] = "flip", aggregate: str = "mean",
                 size_divisor: int = 1, pad_value: PadValue = 0.0, chunk_size: int = 256):
        super().__init__()
        if aggregate not in DENSE_AGGREGATES:
            raise UndiscardError(f"unknown dense TTA aggregate {aggregate!r}: expected one of "
                                 f"{', '.join(DENSE_AGGREGATES)}")
        if size_divisor < 1 or chunk_size < 1:
            raise UndiscardError(f"size_divisor and chunk_size must be >= 1, got {size_divisor} and {chunk_size}")
        self.model = model
        self.views = dense_policy_views(policy)
        self.policy_name = policy if isinstance(policy, str) else ",".join(v.name for v in self.views)
        self.aggregate = aggregate
        self.size_divisor, self.pad_value, self.chunk_size = size_divisor, pad_value, chunk_size
        self.last_cost: float = 0.0  # plain forwards per input image, all views (and searches) counted
        self.last_cost_ideal: float = 0.0
        self._flops: dict[tuple, int] = {}

    @property
    def wrapped(self) -> bool:
        """Whether ``model`` is a ``wrap()``-ed model (per-call ``budget=``, its own ``last_cost``)."""
        return isinstance(self.model, TestTimeModule)

    # --- the pieces: augment, run, de-augment, count ----------------------------------------------
    def augment(self, x: Tensor, view: DenseView) -> Tensor:
        """``view``'s input for ``x`` (N, C, H, W)."""
        return view.apply(x, self.size_divisor, self.pad_value)

    def deaugment(self, y: Tensor, view: DenseView, size: tuple[int, int]) -> Tensor:
        """``view``'s output ``y`` (N, K, h, w) mapped back to the (H, W) = ``size`` grid of the input."""
        return view.invert(y, size, self.size_divisor)

    def run(self, x: Tensor, **call) -> Tensor:
        """``model``'s logits of ``x`` (its output selected: a tensor, or ``{"out": ...}``)."""
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

    def view_cost(self, x: Tensor, view: DenseView) -> float:
        """Plain forwards at ``x``'s size that one plain forward of ``view``'s input costs (FLOPs ratio;
        1.0 when the model does no counted FLOPs)."""
        base = self.flops(x.shape[1:])
        aug_shape = (x.shape[1], *self.augment(x[:1], view).shape[-2:])
        return self.flops(aug_shape) / base if base > 0 else 1.0

    # --- the whole -----------------------------------------------------------------------------------
    def view_logits(self, x: Tensor, phase_budget: int | None = None) -> Tensor:
        """De-augmented logits (N, V, K, H, W) of every view of ``x`` (N, C, H, W); views whose inputs have
        the same shape run as one batched (chunked) forward. Sets ``last_cost`` (see the module docstring).

        ``phase_budget``: states a ``wrap()``-ed model searches per view in this call (default: its own)."""
        if phase_budget is not None and not self.wrapped and phase_budget != 1:
            raise UndiscardError(f"phase_budget={phase_budget} needs DenseTTA around a wrap()-ed model")
        call = {"budget": phase_budget} if self.wrapped and phase_budget is not None else {}
        n, size = x.shape[0], (x.shape[-2], x.shape[-1])
        groups: dict[tuple, list[int]] = {}
        inputs = [self.augment(x, v) for v in self.views]
        for i, xi in enumerate(inputs):
            groups.setdefault(tuple(xi.shape[-2:]), []).append(i)
        outs: list[Tensor | None] = [None] * len(self.views)
        cost = ideal = 0.0
        for idx in groups.values():
            batch = torch.cat([inputs[i] for i in idx])  # view-major
            ratio = self.view_cost(x, self.views[idx[0]]) if n else 1.0
            parts = []
            for start in range(0, batch.shape[0], self.chunk_size):
                chunk = batch[start:start + self.chunk_size]
                parts.append(self.run(chunk, **call))
                rows = chunk.shape[0]
                cost += ratio * (self.model.last_cost if self.wrapped else 1.0) * rows
                ideal += ratio * (self.model.last_cost_ideal if self.wrapped else 1.0) * rows
            y = torch.cat(parts)
            for j, i in enumerate(idx):
                outs[i] = self.deaugment(y[j * n:(j + 1) * n], self.views[i], size)
        self.last_cost, self.last_cost_ideal = (cost / n, ideal / n) if n else (0.0, 0.0)
        return torch.stack(outs, dim=1)

    def forward(self, x: Tensor, phase_budget: int | None = None) -> Tensor:
        """Combined (N, K, H, W) of the views of ``x`` (N, C, H, W) (see the module docstring for the space)."""
        return combine_dense(self.view_logits(x, phase_budget), self.aggregate)

    def extra_repr(self) -> str:
        return (f"views={[v.name for v in self.views]}, aggregate={self.aggregate!r}, "
                f"size_divisor={self.size_divisor}")
