"""Adaptive polyphase selection on a wrapped model: one pass, per image the phase of largest norm.

:func:`aps` runs a wrapped model's network once with APS (:mod:`undiscard.search.aps`: the rule and the
phase plan) at some of its searched units and returns the logits, each image's chosen state and the
cost of the pass; :func:`aggregate_states` combines several such passes as the wrapped model aggregates
its searched states.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from .analysis.geometry import state_offsets
from .analysis.outputs import select_output
from .errors import UndiscardError
from .layers.plans import phase_plan
from .search.aps import APSRule, aps_plan, aps_positions
from .tasks.aggregation import get_aggregate

if TYPE_CHECKING:  # type hints only
    from .search._engine import Engine
    from .wrapper import Undiscard

__all__ = ["APSResult", "aps", "aggregate_states"]


@dataclass
class APSResult:
    """One APS pass over N images.

    logits: (N, K) (the model's output); states: per image, one phase per searched unit (0 where not
    selected); features: the native features (N, ...) when asked for (to aggregate), else None; cost:
    mean per image, in plain forwards (FLOPs counted on the pass); engine: the model's setup it ran on."""

    logits: Tensor
    states: list[tuple[int, ...]]
    features: Tensor | None
    cost: float
    engine: "Engine" = field(repr=False, compare=False)


@torch.no_grad()
def aps(model: "Undiscard", x: Tensor, units: Sequence[int | str] | None = None, p: float = 2.0,
        channel_norm: bool = False, *, border: bool = False, ranks: Mapping[int, int] | None = None,
        features: bool = False) -> APSResult:
    """Run ``model``'s network once on ``x`` (N, C, H, W) with APS at ``units`` (positions or names among
    ``model.search_units``; None: all of them; ``[]``: none, the plain network bit for bit).

    ``ranks`` (position -> rank) keeps the ``rank``-th largest phase at a unit instead (1: the runner-up,
    a neighbour of the APS state). ``features=True`` runs the model's split (features, then head) and
    returns the features too, for :func:`aggregate_states`. ``p``, ``channel_norm``, ``border``: :class:`APSRule`."""
    rule = APSRule(p, channel_norm, border)
    engine = model.prepare(x)
    positions = aps_positions(engine, units)
    plan = aps_plan(engine, positions, rule, ranks)
    with FlopCounterMode(display=False) as counter, phase_plan(plan or None):
        if features:
            feats = engine.split.features(x)
            logits = engine.split.head(feats)
        else:
            feats, logits = None, select_output(engine.net(x), model.output)
    n = x.shape[0]
    zeros = torch.zeros(n, dtype=torch.long)
    columns = [plan[engine.searched[k]].phases.cpu() if k in positions else zeros  # type: ignore[union-attr]
               for k in range(len(engine.searched))]
    states = [tuple(int(c[i]) for c in columns) for i in range(n)]
    assert engine.flops is not None
    cost = float(counter.get_total_flops()) / (engine.flops.baseline * n) if n else 0.0
    return APSResult(logits, states, feats, cost, engine)


@torch.no_grad()
def aggregate_states(model: "Undiscard", results: Sequence[APSResult]) -> Tensor:
    """Logits (N, K) combining B passes over the same images (each with ``features=True``: :func:`aps`, the
    plain network at ``units=[]``, ...) as ``model`` aggregates its searched states: their feature maps
    aligned by the states' offsets (``model.align``) and combined by ``model.aggregate``. The first result
    is the reference state (state 0's role: segmentation fills what a shifted state does not cover from it)."""
    if not results or any(r.features is None for r in results):
        raise UndiscardError("aggregate_states needs the features of every pass (aps(..., features=True))")
    engine = results[0].engine
    if any(r.engine is not engine or len(r.states) != len(results[0].states) for r in results):
        raise UndiscardError("aggregate_states combines passes over the same images with the same model")
    feats = torch.stack([r.features for r in results], 1)  # type: ignore[misc]
    logits = torch.stack([r.logits for r in results], 1)
    per_image = [list(s) for s in zip(*[r.states for r in results])]
    offsets = state_offsets(per_image, engine.search_units, logits.device)
    return model.task.combine(engine, get_aggregate(model.aggregate), feats, logits, offsets, model.align,
                              model.aggregator)
