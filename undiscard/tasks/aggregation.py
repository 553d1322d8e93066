"""Aggregating the feature maps of several states (docs/semantics.md, "Aggregation"): pure tensor functions.

Shapes: N images, B states per image, C channels, an h x w feature grid, K classes.

- :func:`align_maps` shifts each state's map by its offset so that all maps sit on the grid of the
  original model (state 0). A state's map value at cell i describes input pixel ``S*i + offset`` of the
  first searched unit's input grid, where ``S`` is the total stride from that grid to the feature map;
  the aligned map is the map upsampled by S (nearest), shifted by the offset (zero fill), then
  average-pooled by S. That equals a per-axis two-tap filter,
  ``aligned[i] = ((S - r) * m[i - q] + r * m[i - q - 1]) / S`` with ``offset = q*S + r``, which is what
  is computed here (no S-times larger intermediate). ``S`` may be a :class:`~fractions.Fraction` p/q, for
  a map finer than the grid (a dense output at input resolution: ``S = 1/P``, offsets are then whole
  output pixels, ``offset * P``): the offset is ``offset * q / p`` cells.
- :func:`align_filled`: the same, with the cells a shifted state does not cover (the first rows and
  columns, moved out of its view by its offset) filled from the first state's map (the original model's)
  instead of zeros — what dense outputs (logits, where 0 is not "nothing") are aligned with.
- :func:`uniform_weights` (``mean``) and :func:`entropy_weights` of :func:`normalized_entropy` (``entropy``:
  ``w_s ∝ 1 - H(softmax(logits_s)) / log K``, H from ``log_softmax`` so no NaN when probabilities underflow;
  uniform when every weight is 0).
- :func:`weighted_sum` combines aligned maps with the weights.

The aggregations a wrapped model can use (``wrap(..., aggregate=NAME)``) are a registry of small
:class:`Aggregation` classes, :func:`register_aggregate` (a taken name is refused unless ``replace=True``;
:func:`list_aggregates`): ``mean``, ``entropy`` and ``attention`` (the
learned aggregator of :mod:`undiscard.tasks.attention`) below; a new one is one class. Each says whether it
needs a trained aggregator (``needs_aggregator``) and combines the aligned maps of N images' B states.
``AGGREGATES`` is the tuple of registered names.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import ClassVar

import torch
from torch import Tensor, nn

from .._registry import NamedRegistry
from ..errors import UndiscardError

__all__ = ["normalized_entropy", "uniform_weights", "entropy_weights", "shift_axis", "align_maps",
           "align_filled", "weighted_sum", "Aggregation", "register_aggregate", "get_aggregate", "list_aggregates",
           "AGGREGATES"]


def normalized_entropy(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dim divided by log K; in [0, 1]. Shape: logits.shape[:-1]."""
    k = logits.shape[-1]
    if k < 2:
        return torch.zeros(logits.shape[:-1], dtype=logits.dtype, device=logits.device)
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    h = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)  # p = 0 (e.g. a -inf logit) adds 0, not NaN
    return (h / math.log(k)).clamp_(0.0, 1.0)


def uniform_weights(n: int, b: int, dtype: torch.dtype, device: torch.device | str | None = None) -> Tensor:
    """The ``mean`` weights: (N, B), all 1/B (the attention aggregator's residual uses the same)."""
    return torch.full((n, b), 1.0 / b, dtype=dtype, device=device)


def entropy_weights(entropy: Tensor) -> Tensor:
    """Weights ``1 - entropy`` normalised over dim 1 (B), from normalised entropies (N, B, ...); uniform
    where every state's weight is 0."""
    w = 1.0 - entropy
    total = w.sum(1, keepdim=True)
    uniform = torch.full_like(w, 1.0 / w.shape[1])
    return torch.where(total > 0, w / total.clamp_min(torch.finfo(w.dtype).tiny), uniform)


def shift_axis(m: Tensor, offset: Tensor, stride: int, dim: int) -> Tensor:
    """Shift ``m`` (N, B, ..., L along ``dim``) by a per-(n, b) ``offset`` (N, B) in 1/stride cells.

    ``out[i] = ((S - r) * m[i - q] + r * m[i - q - 1]) / S`` with offset = q*S + r, zero outside.
    """
    length = m.shape[dim]
    q = torch.div(offset, stride, rounding_mode="floor")
    r = (offset - q * stride).to(m.dtype)
    view = [offset.shape[0], offset.shape[1]] + [1] * (m.dim() - 2)
    idx = torch.arange(length, device=m.device)
    out = torch.zeros_like(m)
    for lag, coef in ((q, (stride - r) / stride), (q + 1, r / stride)):
        src = idx.view(*([1] * 2), length) - lag.unsqueeze(-1)  # (N, B, L)
        valid = (src >= 0) & (src < length)
        shape = [offset.shape[0], offset.shape[1]] + [1] * (m.dim() - 2)
        shape[dim] = length
        gather_idx = src.clamp(0, length - 1).view(shape).expand_as(m)
        # in place: the same values as out + gathered * (...), with one temporary of m's size, not three
        out.add_(torch.gather(m, dim, gather_idx).mul_(valid.view(shape).to(m.dtype) * coef.view(view)))
    return out


BLOCK_BYTES = 1 << 24  # the largest temporary (16 MiB) a batched aggregation step makes at once


def _in_blocks(fn, maps: Tensor, *args) -> Tensor:
    """``fn(maps, *args)`` computed in blocks of images (dim 0) into one output: the values of one call on
    the whole batch (every op here treats images independently), with temporaries of at most about
    ``BLOCK_BYTES`` (one image's size when an image is larger)."""
    n = maps.shape[0]
    per_image = max(1, maps[:1].numel() * maps.element_size())
    block = max(1, BLOCK_BYTES // per_image)
    if n <= block:
        return fn(maps, *args)
    parts = [fn(maps[i:i + block], *(a[i:i + block] if a.shape[0] == n else a for a in args))
             for i in range(0, n, block)]
    return torch.cat(parts)


def align_maps(maps: Tensor, offsets: Tensor, stride: int | Fraction) -> Tensor:
    """Align (N, B, C, h, w) maps by integer offsets (N, B, 2) = (dy, dx) at total stride ``stride`` (an int,
    or a Fraction p/q: offsets of ``offset * q / p`` cells; see the module docstring). Computed image by
    image: memory beyond the input and the output is that of one image's maps."""
    if isinstance(stride, Fraction):
        offsets, stride = offsets * stride.denominator, stride.numerator
    if stride <= 1 and bool((offsets == 0).all()):
        return maps
    return _in_blocks(lambda m, o: shift_axis(shift_axis(m, o[..., 0], stride, dim=3), o[..., 1], stride, dim=4),
                      maps, offsets)


def align_filled(maps: Tensor, offsets: Tensor, stride: int | Fraction) -> Tensor:
    """:func:`align_maps` of (N, B, C, h, w) maps, state 0 (offset 0) first, where the part of each cell
    that a state's shifted map does not cover is filled from state 0's map (the original model's at that
    cell) instead of zeros: ``aligned + (1 - covered) * maps[:, 0]``, ``covered`` the aligned map of ones
    (0 in the first ``offset`` output pixels, 1 further in, a fraction in between at fractional offsets).
    States at offset 0 are returned unchanged, bit for bit. Computed in blocks of images, like :func:`align_maps`."""
    return _in_blocks(lambda m, o: _filled(m, o, stride), maps, offsets)


def _filled(maps: Tensor, offsets: Tensor, stride: int | Fraction) -> Tensor:
    aligned = align_maps(maps, offsets, stride)
    covered = align_maps(maps.new_ones((*maps.shape[:2], 1, *maps.shape[3:])), offsets, stride)
    filled = aligned + (1 - covered) * maps[:, :1]
    still = (offsets == 0).all(-1).view(*offsets.shape[:2], *([1] * (maps.dim() - 2)))
    return torch.where(still, maps, filled)


def weighted_sum(maps: Tensor, weights: Tensor) -> Tensor:
    """Sum over B of (N, B, ...) maps with (N, B) weights -> (N, ...). Per-location weights (N, B, h, w)
    of (N, B, C, h, w) maps apply to every channel. Computed in blocks of images (no (N, B, ...) temporary)."""
    if weights.dim() == 4 and maps.dim() == 5:
        weights = weights[:, :, None]
    w = weights.to(maps.dtype).view(*weights.shape, *([1] * (maps.dim() - weights.dim())))
    return _in_blocks(lambda m, v: (m * v).sum(1), maps, w)


# --------------------------------------------------------------------------------------- registry
class Aggregation:
    """One way to combine the states of each image: ``wrap(..., aggregate=name)``.

    It sees tensors only — the aligned maps, the prefix tokens, the offsets and, when it
    ``needs_entropy``, each state's normalised prediction entropy, computed by the task (per image for a
    classifier, per pixel for a segmenter) — never the task itself. ``needs_aggregator``: it needs an
    attention aggregator (trained: ``wrap(..., aggregator=FILE)``; an untrained one is made, with a
    warning, when none is given).
    """

    name: ClassVar[str] = ""
    needs_aggregator: ClassVar[bool] = False
    needs_entropy: ClassVar[bool] = False

    def combine(self, maps: Tensor, extra: Tensor | None, offsets: Tensor, entropy: Tensor | None,
                aggregator: nn.Module | None) -> tuple[Tensor, Tensor | None]:
        """Combined ``(maps (N, C, h, w), extra (N, P, C) or None)`` of the aligned ``maps`` (N, B, C, h, w)
        and prefix tokens ``extra`` (N, B, P, C) or None, given the states' ``offsets`` (N, B, 2) and, when
        :attr:`needs_entropy`, their normalised ``entropy`` (N, B, *predictions) in [0, 1]."""
        weights = self.weights(maps, entropy)
        return weighted_sum(maps, weights), (weighted_sum(extra, weights) if extra is not None else None)

    def weights(self, maps: Tensor, entropy: Tensor | None) -> Tensor:
        """Per-state weights (N, B, ...) summing to 1 over B."""
        raise NotImplementedError


_AGGREGATES: NamedRegistry[Aggregation] = NamedRegistry("aggregate")
register_aggregate = _AGGREGATES.register  # @register_aggregate(name): wrap(aggregate=name)
get_aggregate = _AGGREGATES.create  # unknown names: one UndiscardError
__getattr__ = _AGGREGATES.module_getattr("AGGREGATES", __name__)  # AGGREGATES: names


def list_aggregates() -> list[str]:
    """The registered aggregation names, in registration order (``wrap(aggregate=...)``)."""
    return list(_AGGREGATES.names())


@register_aggregate("mean")
class Mean(Aggregation):
    """The plain average of the aligned maps."""

    def weights(self, maps: Tensor, entropy: Tensor | None) -> Tensor:
        return uniform_weights(maps.shape[0], maps.shape[1], maps.dtype, maps.device)


@register_aggregate("entropy")
class Entropy(Aggregation):
    """States weighted by ``1 - H/log K`` of their predictions (the task computes ``H``: per image, or
    per pixel)."""

    needs_entropy = True

    def weights(self, maps: Tensor, entropy: Tensor | None) -> Tensor:
        if entropy is None:
            raise UndiscardError("aggregate='entropy' needs the states' entropies")
        return entropy_weights(entropy)


@register_aggregate("attention")
class Attention(Aggregation):
    """The learned attention aggregator (:class:`~undiscard.tasks.attention.AttentionAggregator`); prefix
    tokens are combined with its location-averaged attention, scaled like its maps."""

    needs_aggregator = True

    def combine(self, maps: Tensor, extra: Tensor | None, offsets: Tensor, entropy: Tensor | None,
                aggregator: nn.Module | None) -> tuple[Tensor, Tensor | None]:
        if aggregator is None:
            raise UndiscardError("aggregate='attention' needs an aggregator: wrap(..., aggregator=FILE) "
                                 "(undiscard train-aggregator) or wrap(..., aggregate='attention')")
        agg, attn = aggregator(maps, offsets)
        if extra is None:
            return agg, None
        weights = attn.flatten(2).mean(-1)  # prefix tokens: the location-averaged attention
        mean_x = weighted_sum(extra, Mean().weights(maps, None))
        scale = aggregator.scale.to(extra.dtype)
        return agg, mean_x + scale * (weighted_sum(extra, weights) - mean_x)
