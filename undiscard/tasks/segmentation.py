"""Dense prediction: the ``"segmentation"`` task (docs/semantics.md, "Aggregation"), for networks with (N, K, H, W) logits.

``undiscard.wrap(seg_net, budget=B, task="segmentation")`` searches B states per image as for a
classifier; what differs is here, in :class:`SegmentationTask` (the search, the engine and the layers
are the same):

- **scoring** — a state's uncertainty is the *mean per-pixel* normalised entropy of its logits (each
  pixel's entropy over its K classes from ``log_softmax``, divided by log K, averaged over H x W): what
  ``criterion="entropy"`` pops first. ``offset``, ``grid``, ``random`` and ``learned`` work unchanged.
- **what is combined** — the decoder's *output logits*, not an intermediate feature map: the model is
  split at its output (:func:`undiscard.analysis.split.output_split`: features = the selected output, head = the
  identity), so every state's output is the network's own output at that state
  (``model.run_state(x, state)``), and there is no head to run after combining. The combined output is
  logits too, in the same space: ``mean`` averages *logits*, per pixel, exactly as it averages feature
  maps for a classifier; ``entropy`` weights each state at each pixel by
  ``1 - H(softmax(logits_s at that pixel)) / log K`` (normalised over the states, per pixel); the
  ``attention`` aggregator runs per pixel over the K logit channels (untrained, it is ``mean`` bit for
  bit). Probabilities are never averaged here (image-space TTA, :mod:`undiscard.tta`, may do so).
- **alignment** — a state's offset is in pixels of the first searched unit's input grid; its output map
  is shifted back at output resolution before combining, by the part of the offset that really moves
  the output (``align=True``, the default, also named ``"lineage"``): the terms of the searched units
  that *dominate* the output (every path from the input to the output runs through them). A unit that a
  decoder skip bypasses (SegFormer's 1/4 stage, DeepLabV3+'s layer1 beside its layer2 unit) leaves the
  output where it is, and its term is dropped. Which units move the output is traced once per engine
  (input shape) from the output's autograd lineage (:mod:`undiscard.tasks._dense_alignment`); for a plain
  stride network it is every unit, the offset alignment. ``align="offset"`` shifts by the whole offset
  (every unit; what ``True`` did before), ``align=False`` combines the maps as they are. The output's
  stride relative to that grid comes from the geometry (:func:`undiscard.analysis.geometry.output_stride`):

  * the usual segmentation output, at the input's resolution (smp and torchvision models upsample to it):
    the stride is ``1 / P`` with ``P`` the product of the rates before the first searched unit, so an
    offset (dy, dx) is a whole number of output pixels, ``(P * dy, P * dx)``: an exact integer shift;
  * an output coarser than that grid (a stride-8 map, say, with the first searched unit at stride 2):
    stride ``S = 8 / 2 = 4``, offsets in quarters of an output cell; the shift is the box interpolation of
    :func:`undiscard.tasks.aggregation.align_maps`, ``aligned[i] = ((S - r) m[i - q] + r m[i - q - 1]) / S``
    for offset ``q S + r`` (what upsampling by S, shifting and average-pooling by S gives);
  * any other output size cannot be aligned: one :class:`~undiscard.errors.UndiscardError` (pass
    ``align=False``) — unless no state moves the output, when there is nothing to shift.

  The pixels a shifted state does not see (the first ``P * dy`` rows and ``P * dx`` columns, or the
  uncovered part of a cell at fractional offsets) take the original model's logits there (state 0,
  always the first candidate), not zeros — a zero logit map would be a confident "uniform" vote
  (:func:`undiscard.tasks.aggregation.align_filled`). The attention aggregator is given the states' own
  offsets (which state each map is), whatever the alignment.
- **exactness** — budget 1 is ``net(x)`` bit for bit (the wrapper runs the network itself); phase 0 of
  every unit is the original network; an untrained attention aggregator equals ``mean``.
"""
from __future__ import annotations

import weakref
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..analysis.geometry import moved_offsets, output_stride
from ..errors import UndiscardError
from ..metrics.segmentation import SegmentationTally, confusion_matrix, mean_iou
from ._dense_alignment import align_mode, probe_for, units_moving_output
from .aggregation import Aggregation, align_filled, normalized_entropy
from .base import StateMaps, Task, register_task

if TYPE_CHECKING:  # type hints only: the engine is built by the wrapper and handed in
    from ..search._engine import Engine

__all__ = ["SegmentationTask"]


def _check_dense(logits: Tensor, lead: int) -> None:
    if logits.dim() != lead + 3:
        shape = tuple(logits.shape[lead:])
        raise UndiscardError(f"task='segmentation' needs (N, K, H, W) logits, but each prediction of this model has "
                             f"shape {shape}: pass task='classification' (or task=None to detect it)")


@register_task("segmentation")
class SegmentationTask(Task):
    """(N, K, H, W) logits: per-pixel entropy, output logits aligned at output resolution and combined per
    pixel (see the module docstring)."""

    at_output = True

    def __init__(self) -> None:
        # per engine (one per input shape): which searched units move the output (dense_alignment)
        self._moves: dict[int, tuple[weakref.ref, tuple[bool, ...]]] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_moves": {}}  # weak references do not pickle; traced again when needed

    def __deepcopy__(self, memo: dict) -> "SegmentationTask":
        memo[id(self)] = copy = type(self)()  # nothing else to copy; a copy traces its own engines
        return copy

    def entropy(self, logits: Tensor) -> Tensor:
        """Normalised entropy over the classes (dim -3) of every pixel: (…, K, H, W) -> (…, H, W)."""
        return normalized_entropy(logits.movedim(-3, -1))

    def state_uncertainty(self, logits: Tensor) -> Tensor:
        """Mean per-pixel normalised entropy of each state, (M, K, H, W) -> (M,) (at least float32)."""
        _check_dense(logits, 1)
        return self.entropy(logits if logits.dtype == torch.float64 else logits.float()).mean((-2, -1))

    def with_entropy(self, states: StateMaps, logits: Tensor) -> StateMaps:
        """``states`` with their per-pixel entropies: those of the *aligned* logits (what :meth:`combine`
        weighs by), in blocks of states at float32 or wider."""
        maps = states.maps
        ent = torch.cat([self.entropy(m if m.dtype == torch.float64 else m.float()) for m in maps.split(1, dim=1)], 1)
        return replace(states, entropy=ent)

    def calibration_score(self, logits: Tensor, labels: Tensor) -> tuple[float, float]:
        """(mIoU, mean per-pixel NLL) of (N, K, H, W) logits against (N, H, W) labels; pixels whose label
        is not a class (an ignore index such as 255) are not counted, and classes absent from both the
        labels and the predictions are left out of the mean, as in :mod:`undiscard.metrics.segmentation`."""
        _check_dense(logits, 1)
        k = logits.shape[1]
        valid = (labels >= 0) & (labels < k)
        cm = confusion_matrix(logits.max(1).indices[valid], labels[valid], k)  # = argmax(1), 6x faster on CPU
        nll = F.cross_entropy(logits.float(), torch.where(valid, labels, -100).long(), ignore_index=-100)
        return mean_iou(cm), float(nll)

    def tally(self, num_classes: int, ignore_index: int | None = 255) -> SegmentationTally:
        """Confusion matrices, boundary and pixel-consistency counts of (N, K, H, W) logits against (N, H, W)
        label maps (:class:`~undiscard.metrics.segmentation.SegmentationTally`)."""
        return SegmentationTally(num_classes, ignore_index)

    def units_moving_output(self, engine: "Engine", logits: Tensor) -> tuple[bool, ...]:
        """Per searched unit of ``engine``, whether its phase moves the output (traced once per engine, see
        :mod:`undiscard.tasks._dense_alignment`); ``logits`` (…, K, h, w) give the output's size, dtype and device."""
        known = self._moves.get(id(engine))
        if known is not None and known[0]() is engine:
            return known[1]
        split = engine.split
        probe = probe_for(engine.net, engine.units, logits.dtype, logits.device)
        moves = units_moving_output(lambda x: split.head(split.features(x)), engine.net, engine.units,
                                    engine.searched, probe, (logits.shape[-2], logits.shape[-1]))
        self._moves[id(engine)] = (weakref.ref(engine), moves)
        return moves

    def shifts(self, engine: "Engine", logits: Tensor, offsets: Tensor, align: object) -> Tensor | None:
        """What each state's output map is shifted back by, (N, B, 2) in pixels of the first searched unit's
        input grid, for ``align`` (True/``"lineage"``, ``"offset"``; None for False)."""
        mode = align_mode(align)
        if mode is None:
            return None
        if mode == "offset":
            return offsets
        return moved_offsets(offsets, engine.search_units, self.units_moving_output(engine, logits))

    def combine(self, engine: "Engine", aggregation: Aggregation, features: Tensor, logits: Tensor,
                offsets: Tensor, align: object, aggregator: nn.Module | None) -> Tensor:
        """Combined logits (N, K, H, W) of the states' output ``logits`` (N, B, K, H, W), aligned at output
        resolution by :meth:`shifts` of their ``offsets`` (N, B, 2); the per-pixel ``entropy`` weights are
        those of the aligned logits. ``features`` are not used (the logits are what is combined)."""
        return self.combine_aligned(engine, aggregation, self.aligned_states(engine, features, logits, offsets, align),
                                    logits, offsets, aggregator)

    def combine_aligned(self, engine: "Engine", aggregation: Aggregation, states: StateMaps, logits: Tensor,
                        offsets: Tensor, aggregator: nn.Module | None) -> Tensor:
        combined, _ = aggregation.combine(states.maps, None, offsets, self.states_entropy(aggregation, states, states.maps),
                                          aggregator)
        return combined

    def aligned_states(self, engine: "Engine", features: Tensor, logits: Tensor, offsets: Tensor,
                       align: object) -> StateMaps:
        """The states' output ``logits`` (N, B, K, H, W) shifted back by :meth:`shifts` (cells a shifted
        state does not cover filled from state 0: :func:`~undiscard.tasks.aggregation.align_filled`)."""
        _check_dense(logits, 2)
        stride = None
        maps = logits
        shifts = self.shifts(engine, logits, offsets, align)
        if shifts is not None and bool((shifts != 0).any()):
            stride = output_stride(engine.units, engine.searched, (logits.shape[-2], logits.shape[-1]))
            if stride is None:
                raise UndiscardError(f"cannot align the states' outputs: a {logits.shape[-2]}x{logits.shape[-1]} "
                                     "output is at no whole stride of the network's input; pass align=False")
            maps = align_filled(logits, shifts, stride)
        return StateMaps(maps, None, stride)
