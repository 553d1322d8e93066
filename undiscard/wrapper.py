"""``wrap(net, budget=...)``: the model users call.

``Undiscard`` holds a private deep copy of ``net`` (``net`` itself is never modified) whose unit layers
follow phase plans (:mod:`undiscard.execution`). On the first call for an input shape it discovers the
units, splits the model into features and head, cuts the features into a chain and counts FLOPs
(:class:`undiscard.engine.Engine`); pass ``example_input=`` to do that eagerly.

A forward call searches ``budget`` states per image (:mod:`undiscard.search`), aligns and aggregates
their feature maps (:mod:`undiscard.aggregate`) and applies the head. ``budget=1`` returns the copied
network's own output, bit for bit. A budget larger than the number of states of the searched units is
an error (it would silently cost more than it can use otherwise).
"""
from __future__ import annotations

import copy
import threading
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .aggregate import AGGREGATES, align_maps, state_weights, weighted_sum
from .attention import AggregatorFileError, AttentionAggregator, load_aggregator
from .chain import build_chain
from .discovery import Unit, discover
from .engine import Engine
from .errors import PhaseError, UndiscardError, UnsupportedLayerError
from .execution import install_phased_layers, phase_plan
from .search import CRITERIA, Candidate, best_first, score_states, state_offset
from .split import from_map, get_split, to_map

__all__ = ["Undiscard", "Candidates", "wrap"]

UnitSelector = Sequence[int | str] | None


class Candidates(list):
    """Per image, the list of :class:`~undiscard.search.Candidate` chosen in selection order; knows the
    engine (input shape) it was searched with, and caches the stacked tensors of its candidates."""

    engine: Engine | None = None
    stacked: tuple[Tensor, Tensor, Tensor] | None = None


def _default_search(units: list[Unit]) -> list[int]:
    spatial = [i for i, u in enumerate(units) if u.spatial]
    return spatial if len(spatial) < 3 else spatial[1:-1]


def _select(units: list[Unit], selector: UnitSelector) -> list[int]:
    if selector is None:
        return _default_search(units)
    if isinstance(selector, (str, int)):
        selector = [selector]
    chosen: list[int] = []
    names = [u.name for u in units]
    for s in selector:
        if isinstance(s, bool):
            raise PhaseError(f"unit selector must be an index or a name, got {s!r}")
        if isinstance(s, int):
            if not -len(units) <= s < len(units):
                raise PhaseError(f"unit index {s} out of range: the model has {len(units)} units ({', '.join(names)})")
            idx = s % len(units)
        elif s in names:
            idx = names.index(s)
        else:
            raise PhaseError(f"unknown unit {s!r}: the model's units are {', '.join(names) or '(none)'}")
        if idx in chosen:
            raise PhaseError(f"unit {names[idx]!r} selected twice")
        chosen.append(idx)
    return sorted(chosen)


class Undiscard(nn.Module):
    """A classifier that searches discarded phases at test time (see :func:`wrap`)."""

    def __init__(self, net: nn.Module, budget: int = 8, criterion: str = "entropy", aggregate: str = "entropy",
                 align: bool = True, units: UnitSelector = None, *,
                 features: Callable[[nn.Module, Tensor], Tensor] | None = None,
                 head: Callable[[nn.Module, Tensor], Tensor] | None = None,
                 layout: str = "nchw", strict: bool = False, chunk_size: int = 256, seed: int = 0,
                 aggregator: AttentionAggregator | str | Path | None = None,
                 example_input: Tensor | None = None):
        super().__init__()
        self._units: list[Unit] | None = None
        self._searched: list[int] | None = None
        self.budget = budget
        if criterion not in CRITERIA:
            raise UndiscardError(f"unknown criterion {criterion!r}: expected one of {', '.join(CRITERIA)}")
        if aggregate not in AGGREGATES:
            raise UndiscardError(f"unknown aggregate {aggregate!r}: expected one of {', '.join(AGGREGATES)}")
        if chunk_size < 1:
            raise UndiscardError(f"chunk_size must be >= 1, got {chunk_size}")
        self.net = copy.deepcopy(net)
        self.aggregator: AttentionAggregator | None = None
        self._aggregator_units: list[str] | None = None  # the units a loaded aggregator was trained for
        if isinstance(aggregator, (str, Path)):
            self.aggregator, info = load_aggregator(aggregator)
            self._aggregator_units = info.units
            if info.align != align:
                warnings.warn(f"the aggregator in {aggregator} was trained with align={info.align}, used with "
                              f"align={align}", UserWarning, stacklevel=3)
        elif aggregator is not None:
            if not isinstance(aggregator, AttentionAggregator):
                raise UndiscardError(f"aggregator must be an AttentionAggregator or a file path, got "
                                     f"{type(aggregator).__name__}")
            self.aggregator = aggregator
        self.criterion = criterion
        self.aggregate = aggregate
        self.align = align
        self.unit_selector = units
        self.strict = strict
        self.chunk_size = chunk_size
        self.seed = seed
        self._split_override = (features, head, layout)
        self._engines: dict[tuple, Engine] = {}
        self._lock = threading.Lock()
        self.last_cost: float = 0.0
        self.last_cost_ideal: float = 0.0
        if example_input is not None:
            self.prepare(example_input)

    # --- setup ---------------------------------------------------------------------------------
    @property
    def budget(self) -> int:
        """States searched per image; may be changed between calls (the setup is reused)."""
        return self._budget

    @budget.setter
    def budget(self, value: int) -> None:
        self._budget = self._check_budget(value)

    @property
    def units(self) -> list[Unit]:
        """All units of the model (after the first call or ``prepare``)."""
        if self._units is None:
            raise UndiscardError("units are found on the first call: call the model once or prepare(example_input)")
        return self._units

    @property
    def search_units(self) -> list[Unit]:
        """The units searched, in execution order."""
        return [self.units[i] for i in self._searched or []]

    @property
    def num_states(self) -> int:
        """Number of states of the searched units (Π R_l²)."""
        total = 1
        for u in self.search_units:
            total *= u.num_phases
        return total

    def prepare(self, x: Tensor) -> Engine:
        """Discover units and build the engine for inputs shaped like ``x`` (done on first call otherwise)."""
        if not isinstance(x, Tensor) or x.dim() < 3:
            raise PhaseError(f"expected a batched image tensor (N, C, H, W), got "
                             f"{type(x).__name__ if not isinstance(x, Tensor) else tuple(x.shape)}")
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        engine = self._engines.get(key)
        if engine is not None:
            return engine
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                # setup traces tensor versions, which inference tensors lack: build outside inference mode
                with torch.inference_mode(False):
                    engine = self._build(x[:1].clone())
                self._engines[key] = engine
        return engine

    def _build(self, x: Tensor) -> Engine:
        try:
            report = discover(self.net, x)
        except RuntimeError as err:  # the network itself cannot run on this input
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PhaseError(f"the model cannot run on input of shape {tuple(x.shape[1:])} (input too small or "
                             f"wrong channels?): {first}") from None
        if report.unsupported:
            msg = f"strided layers left at phase 0: {report.describe_unsupported()}"
            if self.strict:
                raise UnsupportedLayerError(msg)
            warnings.warn(msg, UserWarning, stacklevel=3)
        if self._units is None:
            searched = _select(report.units, self.unit_selector)
            states = 1
            for i in searched:
                states *= report.units[i].num_phases
            if self.budget > states:
                raise PhaseError(f"budget {self.budget} exceeds the {states} states of the searched units "
                                 f"({', '.join(report.units[i].name for i in searched) or 'none'})")
            install_phased_layers(self.net, [u.layers for u in report.units], copy_net=False)
            self._units, self._searched = report.units, searched
        elif [u.layers for u in report.units] != [u.layers for u in self._units]:
            raise UndiscardError("this input size changes the model's subsampling units; wrap the model per size")
        features, head, layout = self._split_override
        split = get_split(self.net, x, features, head, layout)
        chain = build_chain(split, x, self.net)
        engine = Engine(self.net, split, chain, self._units, list(self._searched or []))
        engine.measure(x)
        if self._needs_aggregator():
            self._setup_aggregator(engine, x)
        return engine

    def _needs_aggregator(self) -> bool:
        return self.aggregate == "attention" or self.criterion == "learned" or self.aggregator is not None

    def _setup_aggregator(self, engine: Engine, x: Tensor) -> None:
        """Check a given aggregator against the searched units; make an untrained one if none was given."""
        names = [u.name for u in self.search_units]
        if self._aggregator_units is not None and self._aggregator_units != names:
            raise AggregatorFileError(f"the aggregator was trained for units {', '.join(self._aggregator_units)} "
                                      f"but {', '.join(names) or 'none'} are searched: pass the same units=")
        offsets = 1
        for u in self.search_units:
            if u.spatial:
                offsets *= u.rate
        with torch.no_grad(), phase_plan(None):
            maps, _, _ = self._to_maps(engine, engine.split.features(x))
        channels = maps.shape[1]
        if self.aggregator is None:
            warnings.warn("aggregate='attention'/criterion='learned' with an untrained attention aggregator: it "
                          "aggregates like 'mean' and ranks states by its random initial weights (seeded) until "
                          "trained (undiscard train-aggregator)", UserWarning, stacklevel=4)
            with torch.random.fork_rng(devices=[]):  # seeded, and the caller's RNG stream is left alone
                torch.manual_seed(self.seed)
                self.aggregator = AttentionAggregator(channels, offsets).eval()
        elif (self.aggregator.channels, self.aggregator.offsets) != (channels, offsets):
            raise AggregatorFileError(
                f"the aggregator expects {self.aggregator.channels} channels and {self.aggregator.offsets} offsets "
                f"per axis but this model gives {channels} and {offsets}: it was trained for another model or units")
        self.aggregator.to(device=x.device)

    # --- running -------------------------------------------------------------------------------
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise PhaseError(f"expected an image batch of shape (N, C, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")

    def forward(self, x: Tensor, budget: int | None = None) -> Tensor:
        """Logits (N, K): aggregated over ``budget`` searched states (default: the model's own; a per-call
        budget leaves the model's setting alone); ``budget=1`` is ``net(x)`` exactly."""
        self._check_input(x)
        budget = self.budget if budget is None else self._check_budget(budget)
        engine = self.prepare(x)
        engine.reset_cost()
        if budget == 1:
            out = engine.run_state(x, {})  # the network itself, in the caller's grad mode
            self.last_cost = self.last_cost_ideal = 1.0
            return out
        return self._aggregate(engine, self.candidates(x, budget))

    def candidates(self, x: Tensor, budget: int | None = None) -> "Candidates":
        """Per image, the searched candidates (state, native features, logits) in selection order.

        The search is incremental: the first b candidates of a budget-B search are exactly those of a
        budget-b search, so one search serves every smaller budget (:meth:`aggregate_candidates`,
        :meth:`candidates_cost`).
        """
        self._check_input(x)
        engine = self.prepare(x)
        budget = self.budget if budget is None else self._check_budget(budget)
        engine.reset_cost()
        cands = Candidates(self._search(engine, x, budget))
        cands.engine = engine
        self._record_cost(engine, x.shape[0])
        return cands

    def check_budget(self, budget: int) -> int:
        """``budget`` if it is a positive integer within the searched units' states (known after the first
        call or ``prepare``); otherwise a one-line :class:`~undiscard.errors.PhaseError`."""
        return self._check_budget(budget)

    def _check_budget(self, budget: int) -> int:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise PhaseError(f"budget must be a positive integer, got {budget!r}")
        if self._units is not None and budget > self.num_states:
            raise PhaseError(f"budget {budget} exceeds the {self.num_states} states of the searched units "
                             f"({', '.join(u.name for u in self.search_units) or 'none'})")
        return budget

    def aggregate_candidates(self, cands: "Candidates", budget: int | None = None,
                             aggregate: str | None = None, align: bool | None = None) -> Tensor:
        """Logits (N, K) from the first ``budget`` candidates of each image (default: all of them), with
        ``aggregate``/``align`` overriding the model's own settings for this call."""
        engine = self._engine_for(cands)
        if aggregate is not None and aggregate not in AGGREGATES:
            raise UndiscardError(f"unknown aggregate {aggregate!r}: expected one of {', '.join(AGGREGATES)}")
        if budget is not None:
            self._check_budget(budget)
        lengths = {len(per) for per in cands}
        if budget is not None and len(lengths) > 1:  # ragged: images found different numbers of states
            cands, budget = [per[:budget] for per in cands], None
        if (budget or max(lengths)) == 1:  # budget 1: the original model's logits (its own head output)
            return torch.stack([per[0].logits for per in cands])
        return self._aggregate(engine, cands, aggregate, align, budget)

    def candidates_cost(self, cands: "Candidates", budget: int | None = None) -> tuple[float, float]:
        """Mean cost per image (measured, ideal) in baseline forwards of finding the first ``budget``
        candidates: what ``last_cost``/``last_cost_ideal`` would be after a search at that budget."""
        engine = self._engine_for(cands)
        assert engine.flops is not None
        if budget is not None:
            self._check_budget(budget)
        base = engine.flops.baseline
        rates = engine.rates()
        spent = ideal = 0.0
        for per in cands:
            depths = per[:budget][-1].expansions if budget is not None else per[-1].expansions
            spent += base + sum(engine.expansion_flops(d) for d in depths)
            ideal += base + sum((rates[d] ** 2 - 1) * engine.flops.tail[d] for d in depths)
        n = len(cands) * base
        return (spent / n, ideal / n) if n else (0.0, 0.0)

    def _engine_for(self, cands: "Candidates") -> Engine:
        if not cands or not cands[0]:
            raise PhaseError("no candidates given")
        engine = getattr(cands, "engine", None)
        if engine is None:
            if len(self._engines) != 1:
                raise PhaseError("pass the candidates as returned by model.candidates(x)")
            engine = next(iter(self._engines.values()))
        return engine

    def search(self, x: Tensor) -> list[list[tuple[int, ...]]]:
        """Per image, the chosen states in selection order (the first is the original model)."""
        return [[c.state for c in per_image] for per_image in self.candidates(x)]

    def run_state(self, x: Tensor, state: Sequence[int]) -> Tensor:
        """Logits of the network with one fixed state (one phase per searched unit) for every image."""
        self._check_input(x)
        engine = self.prepare(x)
        state = tuple(state)
        units = self.search_units
        if len(state) != len(units):
            raise PhaseError(f"state has {len(state)} phases but {len(units)} units are searched "
                             f"({', '.join(u.name for u in units) or 'none'})")
        phases: dict[int, Tensor] = {}
        for s, u, idx in zip(state, units, self._searched or []):
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < u.num_phases:
                raise PhaseError(f"phase {s!r} out of range for unit {u.name} (rate {u.rate}): "
                                 f"expected 0 <= phase < {u.num_phases}")
            if s:
                phases[idx] = torch.full((x.shape[0],), s, dtype=torch.long, device=x.device)
        return engine.run_state(x, phases)

    def _search(self, engine: Engine, x: Tensor, budget: int | None = None,
                scorer: Callable[..., list[float]] | None = None) -> list[list[Candidate]]:
        """Best-first search. ``scorer(images, attention_scores, logits, states, depth)`` overrides the
        criterion (training uses it); it gets the aggregator's per-state scores, not the features."""
        rates = engine.rates()
        spatial = [self.units[u].spatial for u in engine.searched]
        learned = self.criterion == "learned"

        def score(images: list[int], feats: Tensor, logits: Tensor, states: list[tuple[int, ...]],
                  depth: int) -> list[float]:
            if scorer is not None or learned:
                attn = self._attention_scores(engine, anchors[images], feats, states)
                if scorer is not None:
                    return scorer(images, attn, logits, states, depth)
                return (-attn.double()).tolist()
            return score_states(self.criterion, logits, states, depth, rates, spatial, self.seed)

        def expand(depth: int, caches: Tensor, prefix: Tensor):
            e = engine.expand(depth, caches, prefix)
            return e.features, e.logits, e.caches

        with torch.no_grad():
            feats, logits, cache = engine.root(x)
            anchors = self._to_maps(engine, feats)[0] if (learned or scorer is not None) else feats
            return best_first(feats, logits, cache, rates, self.budget if budget is None else budget, expand, score,
                              self.chunk_size)

    def _attention_scores(self, engine: Engine, anchors: Tensor, feats: Tensor,
                          states: list[tuple[int, ...]]) -> Tensor:
        """The aggregator's per-state score (higher = more attention) for M rows of native
        features with their states, against their images' original maps ``anchors`` (M, C, h, w)."""
        assert self.aggregator is not None
        maps, _, gridded = self._to_maps(engine, feats)
        offsets = self._offsets(engine, [states], feats.device).transpose(0, 1)  # (M, 1, 2)
        maps = maps[:, None]
        if self.align and gridded:
            maps = align_maps(maps, offsets, self._feature_stride(engine))
        return self.aggregator.state_scores(maps, offsets, anchors)[:, 0]

    def _to_maps(self, engine: Engine, feats: Tensor) -> tuple[Tensor, Tensor | None, bool]:
        """(M, C, h, w) maps of M native feature tensors, their prefix tokens, and whether the grid is real."""
        layout = self._layout(engine, feats.dim() + 1)
        grid = self._feature_grid()
        maps, extra = to_map(feats, layout, grid)
        # only real grids are aligned: NCHW/NHWC maps, and token sequences whose grid is known
        gridded = layout in ("nchw", "nhwc") or (layout == "tokens" and grid is not None
                                                 and tuple(maps.shape[-2:]) == tuple(grid))
        return maps, extra, gridded and maps.shape[-1] * maps.shape[-2] > 1

    @staticmethod
    def _layout(engine: Engine, dims: int) -> str:
        """The split's layout, refined by the (N, B, ...) stacked features' number of dims."""
        layout = engine.split.layout
        if layout == "nchw" and dims == 4:  # (N, B, L, C): a token sequence
            return "tokens"
        if layout == "nchw" and dims == 3:  # (N, B, C): a vector
            return "vector"
        return layout

    def _offsets(self, engine: Engine, cands_states: list[list[tuple[int, ...]]], device: torch.device) -> Tensor:
        """(N, B, 2) offsets (dy, dx) of the states, in pixels of the first searched unit's input."""
        rates = engine.rates()
        spatial = [self.units[u].spatial for u in engine.searched]
        return torch.tensor([[state_offset(s, rates, spatial) for s in per] for per in cands_states],
                            dtype=torch.long, device=device)

    def _stack(self, engine: Engine, cands: list[list[Candidate]]) -> tuple[Tensor, Tensor, Tensor]:
        """Features (N, B, ...), logits (N, B, K) and offsets (N, B, 2) of the candidates; cached on a
        :class:`Candidates` so that every budget prefix and aggregation of one search stacks once."""
        cached = getattr(cands, "stacked", None)
        if cached is not None:
            return cached
        feats = torch.stack([torch.stack([c.features for c in per]) for per in cands])  # (N, B, ...)
        logits = torch.stack([torch.stack([c.logits for c in per]) for per in cands])  # (N, B, K)
        offsets = self._offsets(engine, [[c.state for c in per] for per in cands], feats.device)
        if isinstance(cands, Candidates):
            cands.stacked = (feats, logits, offsets)
        return feats, logits, offsets

    def _aggregate(self, engine: Engine, cands: list[list[Candidate]], aggregate: str | None = None,
                   align: bool | None = None, budget: int | None = None) -> Tensor:
        aggregate = self.aggregate if aggregate is None else aggregate
        align = self.align if align is None else align
        feats, logits, offsets = self._stack(engine, cands)
        if budget is not None:
            feats, logits, offsets = feats[:, :budget], logits[:, :budget], offsets[:, :budget]
        n, b = feats.shape[:2]
        layout = self._layout(engine, feats.dim())
        maps, extra, gridded = self._to_maps(engine, feats.flatten(0, 1))
        maps = maps.unflatten(0, (n, b))
        if align and gridded:
            maps = align_maps(maps, offsets, self._feature_stride(engine))
        if aggregate == "attention":
            if self.aggregator is None:
                raise UndiscardError("aggregate='attention' needs an aggregator: wrap(..., aggregator=FILE) "
                                     "(undiscard train-aggregator) or wrap(..., aggregate='attention')")
            agg, attn = self.aggregator(maps, offsets)
            weights = attn.flatten(2).mean(-1)  # prefix tokens: the location-averaged attention
            if extra is not None:
                extra_b = extra.unflatten(0, (n, b))
                mean_x = weighted_sum(extra_b, state_weights(logits, "mean"))
                scale = self.aggregator.scale.to(extra_b.dtype)
                agg_extra = mean_x + scale * (weighted_sum(extra_b, weights) - mean_x)
            else:
                agg_extra = None
        else:
            weights = state_weights(logits, aggregate)
            agg = weighted_sum(maps, weights)
            agg_extra = weighted_sum(extra.unflatten(0, (n, b)), weights) if extra is not None else None
        return engine.split.head(from_map(agg, agg_extra, layout))

    def _feature_grid(self) -> tuple[int, int] | None:
        spatial = [u for u in self.units if u.spatial]
        return spatial[-1].out_size if spatial else None

    def _feature_stride(self, engine: Engine) -> int:
        """Total stride from the first searched unit's input grid to the feature map."""
        if not engine.searched:
            return 1
        first = engine.searched[0]
        stride = 1
        for u in self.units[first:]:
            if u.spatial:
                stride *= u.rate
        return stride

    def _record_cost(self, engine: Engine, n: int) -> None:
        assert engine.flops is not None
        base = engine.flops.baseline * n
        self.last_cost = engine.spent / base if base else 0.0
        self.last_cost_ideal = engine.spent_ideal / base if base else 0.0

    def extra_repr(self) -> str:
        return (f"budget={self.budget}, criterion={self.criterion!r}, aggregate={self.aggregate!r}, "
                f"align={self.align}")


def wrap(net: nn.Module, budget: int = 8, criterion: str = "entropy", aggregate: str = "entropy",
         align: bool = True, units: UnitSelector = None, **kwargs) -> Undiscard:
    """Wrap a classifier so that it searches ``budget`` states of its subsampling units per image.

    Args:
        net: any classifier mapping (N, C, H, W) images to (N, K) logits. Not modified.
        budget: states per image (1 = the original model, bit for bit).
        criterion: search order, one of ``entropy``, ``random`` (seeded), ``offset``, ``learned``
            (states with the largest attention logit of the attention aggregator first).
        aggregate: ``mean`` or ``entropy`` weighting of the states' feature maps, or ``attention`` (the
            learned aggregator; untrained it equals ``mean``).
        align: shift each state's feature map by its offset before aggregating.
        units: indices or names of the units to search (default: all spatial units but the first and
            the last; all of them when there are fewer than three).
        **kwargs: ``aggregator`` (an AttentionAggregator or a file from ``undiscard train-aggregator``),
            ``features``/``head`` (callables ``(model, x)``) to split an unknown model, ``layout``,
            ``strict`` (raise on unsupported strided layers), ``chunk_size`` (max samples per expansion
            pass), ``seed`` (random criterion), ``example_input`` (set up eagerly).
    """
    return Undiscard(net, budget, criterion, aggregate, align, units, **kwargs)
