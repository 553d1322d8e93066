"""Adaptive polyphase selection (APS): per image and unit, keep the phase whose map has the largest norm.

Chaman & Dokmanić ("Truly shift-invariant convolutional neural networks", CVPR 2021) replace each
subsampling layer's fixed phase 0 by the polyphase component of largest norm of its dense output, chosen
per image. Here it is a test-time selection on a pretrained model, no retraining, in **one pass**:

- for each chosen unit, its first layer (in execution order, :attr:`~undiscard.analysis.discovery.Unit.layers`)
  computes all R² phases from one dense pass (:meth:`~undiscard.layers.registry.PhaseAdapter.all_phases`),
  scores each phase's map (:func:`phase_scores`) and keeps, per image, the best one (:func:`rank_phases`);
  the unit's other layers (a ResNet block's strided shortcut) run at that same phase, per sample. The
  first layer's map decides because it is computed first; the shortcut's map (the block input subsampled)
  carries less of what the block computes.
- units run in sequence through the network, so the choice at unit 1 changes what unit 2 sees;
- ties go to the lowest phase index, so an input whose phases all have the same norm (a constant image
  under circular padding) keeps phase 0, the original model.

Scores of a phase's map y (one image), over its positions and channels c:

- ``p = 1``: Σ|y|; ``p = 2``: Σ y² (the squared L2 norm: the same order as the norm); ``p = inf``: max |y|;
- ``channel_norm=True``: each channel's energy e_c,s (Σ|y_c|^p, or max |y_c| for inf) is first divided
  by its sum over the R² phases, so every channel votes with weight one and a few channels of large
  magnitude do not decide alone: the score is Σ_c e_c,s / Σ_s' e_c,s' (a channel that is zero at every
  phase votes uniformly).
- ``border=False`` (the default): the first and last row and column of every phase map are left out of
  the score (when the map has more than two). Those cells read the layer's padding or the extension past
  the bottom/right edge, differently at each phase: on EfficientNet-Lite0's stem (TF "same" padding) that
  edge alone makes phase 0's L2 norm the largest on every photo (by ~0.5%, against real differences of
  ~0.2%), so APS would never move. ``border=True`` scores the whole map, as the paper does (its networks pad
  circularly, where no cell is special; the invariance theorem needs it).

With circular padding, strided convolutions and global average pooling, APS at *every* subsampling layer
makes the network's output invariant to circular shifts of the input by any integer (the paper's
theorem; ``tests/test_aps.py`` checks it). Real models pad with zeros and read past their borders, so
there it is only approximately so, and which units get it decides whether it helps.

On a wrapped model, :func:`undiscard.selection.aps` runs it; its result (:class:`~undiscard.selection.APSResult`) gives the logits, per image the *state* chosen (one phase per searched
unit of the wrapped model; 0 at units not selected), so the state's offset is known
(:func:`~undiscard.analysis.geometry.state_offsets`) and ``model.run_state(x, state)`` reproduces the logits (to
float rounding: a dense pass sliced and a strided pass are different kernels), and the cost, in plain
forwards, counted with ``torch.utils.flop_counter`` on the pass itself: one forward plus, per selected
unit, the dense computation of its first layer ((R² - 1) times that layer's strided FLOPs more).
:func:`~undiscard.selection.aggregate_states` combines several such results (APS and the plain model, say) as the wrapped
model aggregates its searched states.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..analysis.geometry import select_units
from ..errors import PhaseError, UndiscardError
from ..layers.plans import Adaptive
from ..layers.registry import PhaseAdapter

if TYPE_CHECKING:  # type hints only
    from ._engine import Engine

__all__ = ["NORMS", "APSRule", "phase_scores", "rank_phases", "PolyphaseChoice", "aps_plan", "aps_positions"]

NORMS = (1.0, 2.0, math.inf)


@dataclass(frozen=True)
class APSRule:
    """How a phase's map is scored: the norm's ``p`` (1, 2 or inf) and whether each channel's energy is
    normalised across the phases before the channels are summed (see the module docstring)."""

    p: float = 2.0
    channel_norm: bool = False
    border: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.p, bool) or float(self.p) not in NORMS:
            raise UndiscardError(f"APS norm p must be 1, 2 or inf, got {self.p!r}")
        object.__setattr__(self, "p", float(self.p))

    @property
    def label(self) -> str:
        """A short name: ``L2``, ``Linf/ch`` (channel-normalised), ..."""
        p = "inf" if math.isinf(self.p) else str(int(self.p))
        return f"L{p}" + ("/ch" if self.channel_norm else "") + (" border" if self.border else "")


def phase_scores(phases: Tensor, rule: APSRule, channels_last: bool = False) -> Tensor:
    """One score per image and phase, (N, R², ...) -> (N, R²) float64, higher first (module docstring).

    ``phases`` are a layer's R² phase maps, (N, R², C, h, w), or (N, R², h, w, C) when ``channels_last``."""
    if phases.dim() < 3:
        raise PhaseError(f"phase maps must be (N, R², C, ...), got shape {tuple(phases.shape)}")
    a = phases.detach().double().abs()
    if phases.dim() >= 4:  # channels at dim 2 (NCHW) or last (NHWC); energies per (image, phase, channel)
        a = a.movedim(-1, 2) if channels_last else a
        if not rule.border and a.shape[-2] > 2 and a.shape[-1] > 2:
            a = a[..., 1:-1, 1:-1]
        a = a.flatten(3)
    else:  # (N, R², L): a sequence without channels of its own: one channel
        a = a.unsqueeze(2)
    energy = a.amax(-1) if math.isinf(rule.p) else (a.sum(-1) if rule.p == 1 else a.square().sum(-1))
    if rule.channel_norm:
        total = energy.sum(1, keepdim=True)
        uniform = torch.full_like(energy, 1.0 / energy.shape[1])
        energy = torch.where(total > 0, energy / total.clamp_min(torch.finfo(energy.dtype).tiny), uniform)
        return energy.sum(-1)
    return energy.amax(-1) if math.isinf(rule.p) else energy.sum(-1)


def rank_phases(scores: Tensor, rank: int = 0) -> Tensor:
    """(N,) long: per row of ``scores`` (N, R²), the phase with the ``rank``-th highest score (0: the best),
    ties to the lower phase index."""
    if not 0 <= rank < scores.shape[1]:
        raise PhaseError(f"phase rank {rank} out of range for {scores.shape[1]} phases")
    order = torch.sort(-scores, dim=1, stable=True).indices  # descending scores, ties keep index order
    return order[:, rank].contiguous()


class PolyphaseChoice(Adaptive):
    """The phase spec of one unit for one forward pass: its first layer (``selector``) chooses per image
    the phase of ``rank``-th largest score (:func:`phase_scores`), the unit's other layers follow it.
    After the pass, :attr:`phases` holds the choice ((N,) long)."""

    def __init__(self, selector: nn.Module, rule: APSRule, rank: int = 0):
        self.selector, self.rule, self.rank = selector, rule, rank
        self.phases: Tensor | None = None

    def decide(self, layer: nn.Module, adapter: PhaseAdapter, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if layer is self.selector:
            maps = adapter.all_phases(layer, x)  # (N, R², ...) from one dense pass
            phases = rank_phases(phase_scores(maps, self.rule, adapter.channels_last), self.rank).to(x.device)
            self.phases = phases
            return phases, maps[torch.arange(maps.shape[0], device=maps.device), phases]
        if self.phases is None or self.phases.shape[0] != x.shape[0]:
            raise PhaseError("a layer of an APS unit ran before the unit's first layer chose its phases")
        return self.phases, None


def aps_positions(engine: "Engine", units: Sequence[int | str] | None) -> list[int]:
    """Positions among ``engine``'s searched units of the units to select: indices (negative from the end)
    or names (:func:`~undiscard.analysis.geometry.select_units`); None: all of them. One
    :class:`~undiscard.errors.PhaseError` for a bad one."""
    searched = engine.search_units
    return list(range(len(searched))) if units is None else select_units(searched, list(units))


def aps_plan(engine: "Engine", positions: Sequence[int], rule: APSRule,
             ranks: Mapping[int, int] | None = None) -> dict[int, PolyphaseChoice]:
    """A fresh phase plan {unit index: :class:`PolyphaseChoice`} selecting the searched units at
    ``positions`` (``ranks``: position -> the rank of the phase kept there, default 0, the largest)."""
    modules = dict(engine.net.named_modules())
    plan: dict[int, PolyphaseChoice] = {}
    for k in positions:
        unit = engine.units[engine.searched[k]]
        plan[engine.searched[k]] = PolyphaseChoice(modules[unit.layers[0]], rule, (ranks or {}).get(k, 0))
    return plan
