"""The learned attention aggregator (docs/semantics.md, "Aggregation") and the files it is saved in.

Given the B aligned feature maps of an image's searched states, per spatial location:

- a scalar **query** from the original model's map (state 0, always the first candidate),
- a scalar **key** per state from its map plus a learned encoding of its offset (dy, dx),
- attention ``a_b = softmax_b(q * k_b)`` across the states (dropout on it only while training),
- output ``mean + scale * (Σ_b a_b m_b - mean)`` with a per-channel ``scale`` initialised to zero.

``mean`` is computed exactly as ``aggregate="mean"`` computes it, so an untrained aggregator returns
the mean aggregate bit for bit; training moves ``scale`` away from zero only where attention helps.
Query and key read layer-normalised maps, so their scale does not depend on the backbone's.

The per-state attention logit averaged over locations, ``mean_hw(q * k_b)``, is what
``criterion="learned"`` ranks by: at each location the softmax is monotone in the logit, so this is a
cheap proxy for "the states the aggregator would attend to most" (a heuristic: the average of logits
is not the average of attention). It depends only on the state and the original map, not on which
other states were found, so search order never depends on batch composition.

The aggregator's life in a wrapped model is here too: :func:`resolve_aggregator` takes what
``wrap(aggregator=...)`` was given (a module or a file), :func:`fit_aggregator` checks it against the
searched units and the feature maps at setup (or makes an untrained one, seeded), and
:class:`AttentionScorer` gives the ``learned`` criterion its per-state scores during a search.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._files import load_tagged, save_tagged
from ..analysis.geometry import offsets_per_axis, state_offsets
from ..errors import UndiscardError
from ..layers.plans import phase_plan
from .aggregation import align_maps, uniform_weights, weighted_sum

if TYPE_CHECKING:  # type hints only
    from ..search._engine import Engine

__all__ = ["AttentionAggregator", "AggregatorFileError", "AttentionScorer", "save_aggregator", "load_aggregator",
           "resolve_aggregator", "fit_aggregator"]

FORMAT = "undiscard-attention-aggregator/1"


class AggregatorFileError(UndiscardError, ValueError):
    """An aggregator file that is missing, unreadable, or does not fit the model it is used with."""


class AttentionAggregator(nn.Module):
    """Attention across B states per location, for (N, B, C, h, w) aligned maps.

    Args:
        channels: C, the feature map's channels.
        offsets: T, the number of distinct offsets per axis (offsets are in [0, T)): the product of the
            searched spatial units' rates.
        dropout: dropout on the attention weights while training.
    """

    def __init__(self, channels: int, offsets: int, dropout: float = 0.1):
        super().__init__()
        if channels < 1 or offsets < 1:
            raise ValueError(f"channels and offsets must be positive, got {channels}, {offsets}")
        self.channels = channels
        self.offsets = offsets
        self.norm = nn.LayerNorm(channels)
        self.query = nn.Linear(channels, 1)
        self.key = nn.Linear(channels, 1)
        self.offset_y = nn.Embedding(offsets, channels)
        self.offset_x = nn.Embedding(offsets, channels)
        nn.init.normal_(self.offset_y.weight, std=0.02)
        nn.init.normal_(self.offset_x.weight, std=0.02)
        self.scale = nn.Parameter(torch.zeros(channels))
        self.dropout = nn.Dropout(dropout)

    def _check(self, maps: Tensor, offsets: Tensor) -> None:
        if maps.dim() != 5 or maps.shape[2] != self.channels:
            raise ValueError(f"attention aggregator expects (N, B, {self.channels}, h, w) maps, got "
                                      f"{tuple(maps.shape)}: was it trained for this model?")
        if offsets.shape != (*maps.shape[:2], 2):
            raise ValueError(f"offsets must be (N, B, 2) = {(*maps.shape[:2], 2)}, got {tuple(offsets.shape)}")
        if bool((offsets < 0).any()) or bool((offsets >= self.offsets).any()):
            raise AggregatorFileError(f"state offsets outside [0, {self.offsets}): the aggregator was trained "
                                      "for other searched units")

    def attention_logits(self, maps: Tensor, offsets: Tensor, anchor: Tensor) -> Tensor:
        """Logits ``q * k_b`` (N, B, h, w) of aligned ``maps`` (N, B, C, h, w) with offsets (N, B, 2), where
        ``anchor`` (N, C, h, w) is the original model's map the queries come from."""
        self._check(maps, offsets)
        p = self.query.weight.dtype
        enc = self.offset_y(offsets[..., 0]) + self.offset_x(offsets[..., 1])  # (N, B, C)
        keys = self.key(self.norm(maps.to(p).movedim(2, -1) + enc[:, :, None, None])).squeeze(-1)
        query = self.query(self.norm(anchor.to(p).movedim(1, -1))).squeeze(-1)  # (N, h, w)
        return query[:, None] * keys

    def forward(self, maps: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
        """Aggregate (N, B, C, h, w) aligned maps (state 0 first) with offsets (N, B, 2).

        Returns the aggregated map (N, C, h, w) and the attention (N, B, h, w).
        """
        n, b = maps.shape[:2]
        mean = weighted_sum(maps, uniform_weights(n, b, maps.dtype, maps.device))
        attn = torch.softmax(self.attention_logits(maps, offsets, maps[:, 0]), dim=1)
        mixed = (self.dropout(attn).to(maps.dtype)[:, :, None] * maps).sum(1)
        scale = self.scale.to(maps.dtype).view(1, -1, *([1] * (maps.dim() - 3)))
        return mean + scale * (mixed - mean), attn

    def state_scores(self, maps: Tensor, offsets: Tensor, anchor: Tensor) -> Tensor:
        """Per-state attention score (N, B): the location-averaged attention logit (higher = more attention)."""
        return self.attention_logits(maps, offsets, anchor).flatten(2).mean(-1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, offsets={self.offsets}"


@dataclass
class AggregatorInfo:
    """What an aggregator file says about the model and units it was trained for."""

    model: str
    units: list[str]
    channels: int
    offsets: int
    dropout: float
    meta: dict[str, Any]
    align: bool = True  # trained on aligned maps


def save_aggregator(path: str | Path, aggregator: AttentionAggregator, *, model: str, units: list[str],
                    align: bool = True, meta: dict[str, Any] | None = None) -> Path:
    """Save ``aggregator`` with the model name and searched unit names it was trained for."""
    state = {k: v.detach().cpu() for k, v in aggregator.state_dict().items()}
    return save_tagged(path, FORMAT, {"model": model, "units": list(units), "channels": aggregator.channels,
                                      "offsets": aggregator.offsets, "dropout": aggregator.dropout.p,
                                      "align": align, "state_dict": state, "meta": meta})


def load_aggregator(path: str | Path) -> tuple[AttentionAggregator, AggregatorInfo]:
    """Load a file written by :func:`save_aggregator` (or ``undiscard train-aggregator``)."""
    blob = load_tagged(path, FORMAT, AggregatorFileError, "aggregator")
    try:
        agg = AttentionAggregator(int(blob["channels"]), int(blob["offsets"]), float(blob["dropout"]))
        agg.load_state_dict(blob["state_dict"])
        info = AggregatorInfo(blob["model"], list(blob["units"]), agg.channels, agg.offsets, agg.dropout.p,
                              dict(blob.get("meta", {})), bool(blob.get("align", True)))
    except (KeyError, RuntimeError, TypeError, ValueError) as err:
        raise AggregatorFileError(f"{path}: damaged aggregator file ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else ''})") from None
    return agg.eval(), info


# --------------------------------------------------------------------------------------- in a wrapped model
def resolve_aggregator(aggregator: "AttentionAggregator | str | Path | None",
                       align: bool) -> tuple["AttentionAggregator | None", list[str] | None]:
    """What ``wrap(aggregator=...)`` was given, as ``(aggregator, the unit names it was trained for)``: a
    file is loaded (the units are those it names; a warning when it was trained with another ``align``),
    a module is taken as it is (units unknown), anything else is one :class:`UndiscardError`."""
    if isinstance(aggregator, (str, Path)):
        agg, info = load_aggregator(aggregator)
        if info.align != align:
            warnings.warn(f"the aggregator in {aggregator} was trained with align={info.align}, used with "
                          f"align={align}", UserWarning, stacklevel=4)
        return agg, info.units
    if aggregator is not None and not isinstance(aggregator, AttentionAggregator):
        raise UndiscardError(f"aggregator must be an AttentionAggregator or a file path, got "
                             f"{type(aggregator).__name__}")
    return aggregator, None


def fit_aggregator(aggregator: "AttentionAggregator | None", trained_units: list[str] | None, engine: "Engine",
                   x: Tensor, seed: int) -> AttentionAggregator:
    """The aggregator to use with ``engine`` (set up on the example input ``x``): ``aggregator`` when it
    was trained for the searched units and fits the feature maps' channels and the states' offsets per
    axis (moved to x's device), else one :class:`AggregatorFileError` saying what differs; without one,
    an untrained aggregator made with ``seed`` (leaving the caller's RNG alone), with a warning."""
    names = [u.name for u in engine.search_units]
    if trained_units is not None and trained_units != names:
        raise AggregatorFileError(f"the aggregator was trained for units {', '.join(trained_units)} "
                                  f"but {', '.join(names) or 'none'} are searched: pass the same units=")
    with torch.no_grad(), phase_plan(None):
        channels = engine.split.to_maps(engine.split.features(x))[0].shape[1]
    offsets = offsets_per_axis(engine.search_units)
    if aggregator is None:
        warnings.warn("aggregate='attention'/criterion='learned' with an untrained attention aggregator: it "
                      "aggregates like 'mean' and ranks states by its random initial weights (seeded) until "
                      "trained (undiscard train-aggregator)", UserWarning, stacklevel=5)
        with torch.random.fork_rng(devices=[]):  # seeded, and the caller's RNG stream is left alone
            torch.manual_seed(seed)
            aggregator = AttentionAggregator(channels, offsets).eval()
    elif (aggregator.channels, aggregator.offsets) != (channels, offsets):
        raise AggregatorFileError(
            f"the aggregator expects {aggregator.channels} channels and {aggregator.offsets} offsets "
            f"per axis but this model gives {channels} and {offsets}: it was trained for another model or units")
    return aggregator.to(device=x.device)


class AttentionScorer:
    """Per-state attention scores during one search (the ``learned`` criterion, training's scorer).

    Built on the root's native features (N, ...) of one engine: the original maps are the queries'
    anchors. Called with M nodes (their images' indices, native features (M, ...) and states), it returns
    the aggregator's (M,) score of each state on its own, its map aligned by its offset when ``align``.
    """

    def __init__(self, aggregator: AttentionAggregator, engine: "Engine", root_features: Tensor, align: bool):
        self.aggregator, self.engine, self.align = aggregator, engine, align
        self.anchors = engine.split.to_maps(root_features)[0]

    @classmethod
    def factory(cls, aggregator: AttentionAggregator | None, align: bool):
        """``(engine, root_features) -> AttentionScorer`` for a search (None without an aggregator)."""
        if aggregator is None:
            return None
        return lambda engine, root_features: cls(aggregator, engine, root_features, align)

    def __call__(self, images: list[int], features: Tensor, states: list[tuple[int, ...]]) -> Tensor:
        maps = self.engine.split.to_maps(features)[0][:, None]  # (M, 1, C, h, w)
        offsets = state_offsets([states], self.engine.search_units, features.device).transpose(0, 1)  # (M, 1, 2)
        if self.align and self.engine.split.alignable:
            maps = align_maps(maps, offsets, self.engine.feature_stride)
        return self.aggregator.state_scores(maps, offsets, self.anchors[images])[:, 0]
