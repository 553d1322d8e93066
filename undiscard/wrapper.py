"""``wrap(net, budget=...)``: the model users call. It orchestrates; the work is done elsewhere.

Set up once per input shape (:mod:`undiscard._setup`; on the first call above budget 1, or with
``example_input=``/``prepare(x)``), a call searches ``budget`` states per image (:mod:`undiscard.search._candidates`,
ordered by :mod:`undiscard.search.criteria`) and the task (:mod:`undiscard.tasks.base`) combines them
(:mod:`undiscard.tasks.aggregation`); ``budget=1`` runs the private copy of the network itself, before any setup,
bit for bit. As a module it is a :class:`~undiscard._testtime.TestTimeModule` (copies, dtype/device, train
mode, per-thread cost); :mod:`undiscard._inputs` checks inputs; ``torch.compile`` skips setup and search.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ._eager import eager
from ._inputs import (
    check_chunk_size,
    check_example,
    check_input,
    check_net,
    check_search_input,
    empty_output,
    finite_example,
    image_batch,
    run_network,
)
from ._setup import (
    SplitArgs,
    Units,
    build_engine,
    check_budget,
    choose_units,
    discover_units,
)
from ._testtime import TestTimeModule
from .analysis._unshare import unshare_layers
from .analysis.discovery import Unit
from .analysis.geometry import UnitSelector, num_states
from .analysis.outputs import OutputSelector, check_selector, in_form, select_output
from .errors import UndiscardError
from .layers.extension import ExtendMode, attach_extensions, check_extend
from .search._candidates import Candidates, engine_of, find_candidates, stack_candidates
from .search._engine import Engine
from .search.criteria import (
    SearchContext,
    StateScorer,
    custom_criterion,
    get_criterion,
    resolve_order,
)
from .search.orders import StateOrder
from .settings import (
    DEFAULT_BUDGET,
    DEFAULTS,
    AggregateName,
    AggregatorSource,
    Align,
    CriterionName,
    FeatureFn,
    HeadFn,
    Layout,
    OrderSource,
    Settings,
    TaskName,
)
from .tasks.aggregation import get_aggregate
from .tasks.attention import (
    AttentionScorer,
    fit_aggregator,
    resolve_aggregator,
)
from .tasks.base import Task, get_task

__all__ = ["Undiscard", "Candidates", "wrap"]


class Undiscard(TestTimeModule):
    """A model that searches discarded phases at test time (see :func:`wrap`, which builds it from its
    keyword arguments as one :class:`~undiscard.settings.Settings`, kept as ``model.settings``)."""

    def __init__(self, net: nn.Module, budget: int = DEFAULT_BUDGET, settings: Settings = DEFAULTS, *,
                 example_input: Tensor | None = None):
        check_net(net)
        check_budget(budget, None)
        check_chunk_size(settings.chunk_size)
        order = resolve_order(get_criterion(settings.criterion), settings.order)  # unknown names: one line each
        get_aggregate(settings.aggregate)
        super().__init__(net)
        self.settings = settings  # as given; the attributes below are what the model runs with
        self._units: Units | None = None
        self.budget = budget
        self.task = get_task(settings.task)
        self.aggregator, self._aggregator_units = resolve_aggregator(settings.aggregator, settings.align)
        self.criterion = settings.criterion
        self.aggregate = settings.aggregate
        self.align = settings.align
        self.unit_selector = search_units_of(settings.criterion, order, settings.units)
        self.strict = settings.strict
        self.chunk_size = settings.chunk_size
        self.seed = settings.seed
        self.order = order
        self.output = check_selector(settings.output)  # the logits: undiscard.analysis.outputs
        self.extend = check_extend(settings.extend)  # undiscard.layers.extension
        self._split_args = SplitArgs(settings.features, settings.head, settings.layout, self.output,
                                     self.task.at_output)
        self.train(False)  # inference: the aggregator's dropout is off unless train() is called
        if example_input is not None:
            self.prepare(example_input)

    # --- settings and setup ----------------------------------------------------------------------
    @property
    def budget(self) -> int:
        """States searched per image; may be changed between calls (the setup is reused)."""
        return self._budget

    @budget.setter
    def budget(self, value: int) -> None:
        self._budget = check_budget(value, self._units)

    def check_budget(self, budget: int | None) -> int | None:
        """``budget`` if positive and within the searched units' states (after setup), or None (a call's
        "the model's own"); else a one-line PhaseError."""
        return None if budget is None else check_budget(budget, self._units)

    def _known(self, what: str, ready: bool = True) -> Units:
        if self._units is None or not ready:
            raise UndiscardError(f"{what} is known once the model is set up: after the first call at a budget "
                                 "above 1, model.prepare(x), or wrap(..., example_input=x)")
        return self._units

    @property
    def all_units(self) -> list[Unit]:
        """All units of the model, searched or not (after setup)."""
        return self._known("units").all

    units = property(all_units.fget, doc="Alias of :attr:`all_units` (``wrap(units=...)`` picks :attr:`search_units`).")

    @property
    def search_units(self) -> list[Unit]:
        """The units searched, in execution order (after setup)."""
        return self._known("search_units").search_units

    @property
    def num_states(self) -> int:
        """Number of states of the searched units (Π R_l²; after setup)."""
        return num_states(self._known("num_states").search_units)

    @property
    def split_method(self) -> str:
        """How the model was split into features and head (see :mod:`undiscard.analysis.split`; after setup)."""
        self._known("split_method", ready=bool(self._engines))
        return next(iter(self._engines.values())).split.method

    @eager  # setup (tracing, deep copies, FLOP counting) always runs eagerly
    def prepare(self, x: Tensor) -> Engine:
        """Set the model up for inputs shaped like ``x`` (done on the first call above budget 1 otherwise)."""
        check_example(x)
        return self._engine((tuple(x.shape[1:]), x.dtype, x.device), lambda: self._build(finite_example(x)))

    def _build(self, x: Tensor) -> Engine:
        if self._units is None and self._split_args.features is None:  # features=/head= see the net as given
            self.net, self.unshared = unshare_layers(self.net)  # each call of a shared layer: its own module
        found = discover_units(self.net, x, self.strict)
        self._units = choose_units(self.net, found, self._units, self.unit_selector, self.budget)
        attach_extensions(self.net, [n for u in self._units.search_units for n in u.layers], x, self.extend)
        engine = build_engine(self.net, x, self._units, self._split_args)
        if self.order is not None:  # an order ranked on another model: a warning saying what differs
            self.order.check_model(self.net, self._units.search_units)
        needs = get_aggregate(self.aggregate).needs_aggregator or get_criterion(self.criterion).needs_aggregator
        if needs or self.aggregator is not None:  # check the aggregator against this setup, or make one
            self.aggregator = fit_aggregator(self.aggregator, self._aggregator_units, engine, x, self.seed)
        return engine

    # --- running ---------------------------------------------------------------------------------
    def _empty(self, x: Tensor) -> Tensor:
        self._set_cost(0.0, 0.0)
        return empty_output(self.net, x, self.output)

    def forward(self, x: Tensor | None = None, budget: int | None = None, *, pixel_values: Tensor | None = None):
        """Logits (N, K) of ``x`` (or ``pixel_values=``) over ``budget`` states (default: the model's; a call's own leaves
        it alone), in the network's output type where it has one (:mod:`undiscard.analysis.outputs`); budget 1 is net(x) exactly
        (differentiable; above 1 the search runs without autograd, and an x that requires grad is refused)."""
        x, budget = image_batch(x, pixel_values), self.budget if budget is None else self.check_budget(budget)
        if x.shape[0] == 0:
            return self._empty(x)
        if budget > 1:
            cands = self.candidates(x, budget)
            return in_form(engine_of(cands, self._engines).split.form, self.aggregate_candidates(cands))
        out = run_network(self.net, x, self.output)  # budget 1: before any setup (discovery, split) that could fail
        self._set_cost(1.0, 1.0)
        return out

    def candidates(self, x: Tensor, budget: int | None = None, scorer: StateScorer | None = None) -> Candidates:
        """Per image, the searched candidates (state, native features, logits) in selection order.

        One search serves every smaller budget (it is incremental: :meth:`aggregate_candidates`,
        :meth:`candidates_cost`). ``scorer(images, attention_scores, logits, states, depth)`` replaces the
        criterion for this search (lower first; it gets the attention aggregator's per-state scores)."""
        check_input(x)
        budget = self.budget if budget is None else self.check_budget(budget)
        if x.shape[0] == 0:
            return Candidates.of_empty(self._empty(x))
        if budget > 1:
            check_search_input(x)  # meta tensors and inputs requiring grad refused, NaN/inf warned about
        engine = self.prepare(x)
        criterion = get_criterion(self.criterion) if scorer is None else custom_criterion(scorer)
        cands = find_candidates(engine, x, budget, criterion, SearchContext.of(engine, self.task, self.seed, self.order),
                                AttentionScorer.factory(self.aggregator, self.align), self.chunk_size)
        self._set_cost(*engine.cost_since_reset(x.shape[0]))
        return cands

    def aggregate_candidates(self, cands: Candidates, budget: int | None = None, aggregate: str | None = None,
                             align: bool | None = None) -> Tensor:
        """Logits (N, K) from the first ``budget`` candidates of each image (default: all of them), with
        ``aggregate``/``align`` overriding the model's own settings for this call. Gradients flow to the
        aggregator (training it uses this)."""
        if len(cands) == 0 and getattr(cands, "empty", None) is not None:
            return cands.empty
        engine = engine_of(cands, self._engines)
        how = get_aggregate(self.aggregate if aggregate is None else aggregate)
        self.check_budget(budget)
        lengths = {len(per) for per in cands}
        if budget is not None and len(lengths) > 1:  # ragged: images found different numbers of states
            cands, budget = [per[:budget] for per in cands], None
        if (budget or max(lengths)) == 1:  # budget 1: the original model's logits (its own head output)
            return torch.stack([per[0].logits for per in cands])
        feats, logits, offsets = (t[:, :budget] for t in stack_candidates(cands, engine))
        return self.task.combine(engine, how, feats, logits, offsets, self.align if align is None else align,
                                 self.aggregator)

    def candidates_cost(self, cands: Candidates, budget: int | None = None) -> tuple[float, float]:
        """Mean cost per image (measured, ideal) in baseline forwards of finding the first ``budget``
        candidates: what ``last_cost``/``last_cost_ideal`` would be after a search at that budget."""
        if len(cands) == 0:
            return 0.0, 0.0
        engine = engine_of(cands, self._engines)
        self.check_budget(budget)
        return engine.search_cost([per[:budget] for per in cands])

    def search(self, x: Tensor) -> list[list[tuple[int, ...]]]:
        """Per image, the chosen states in selection order (the first is the original model)."""
        return [[c.state for c in per_image] for per_image in self.candidates(x)]

    def run_state(self, x: Tensor, state: Sequence[int]) -> Tensor:
        """Logits of the network with one fixed state (one phase per searched unit) for every image."""
        check_input(x)
        if x.shape[0] == 0:
            return self._empty(x)
        engine = self.prepare(x)
        return select_output(engine.run_state(x, engine.state_phases(tuple(state), x.shape[0], x.device)), self.output)

    def extra_repr(self) -> str:
        return (f"budget={self.budget}, criterion={self.criterion!r}, aggregate={self.aggregate!r}, "
                f"align={self.align}")


def search_units_of(criterion: str, order: StateOrder | None, units: UnitSelector) -> UnitSelector:
    """``wrap(units=...)``: as given; when not given, with ``criterion="calibrated"`` the units ``order``
    names, else the criterion's own :attr:`~undiscard.search.criteria.Criterion.default_units` (``aps``: the
    first unit), else None (the model's default)."""
    if units is not None:
        return units
    if criterion == "calibrated" and order is not None and order.units is not None:
        return list(order.units)
    own = get_criterion(criterion).default_units
    return None if own is None else list(own)


def wrap(net: nn.Module, budget: int = DEFAULT_BUDGET, *,
         criterion: CriterionName = DEFAULTS.criterion,
         aggregate: AggregateName = DEFAULTS.aggregate,
         align: Align = DEFAULTS.align,
         units: UnitSelector = DEFAULTS.units,
         task: TaskName | Task | None = DEFAULTS.task,
         extend: ExtendMode = DEFAULTS.extend,
         order: OrderSource = DEFAULTS.order,
         aggregator: AggregatorSource = DEFAULTS.aggregator,
         features: FeatureFn | None = DEFAULTS.features,
         head: HeadFn | None = DEFAULTS.head,
         layout: Layout = DEFAULTS.layout,
         output: OutputSelector = DEFAULTS.output,
         strict: bool = DEFAULTS.strict,
         chunk_size: int = DEFAULTS.chunk_size,
         seed: int = DEFAULTS.seed,
         example_input: Tensor | None = None) -> Undiscard:
    """Wrap a network so that it searches ``budget`` states of its subsampling units per image.

    Every argument after ``budget`` is keyword-only; the defaults are those of
    :class:`undiscard.settings.Settings`.

    Args:
        net: a classifier mapping (N, C, H, W) images to (N, K) logits, or a segmenter to (N, K, H, W).
            Not modified.
        budget: states evaluated per image, the original included, so at most that many plain forwards
            for every criterion, split and task (setup excluded; ``aps`` adds one dense pass of the layer it
            selects at): a criterion that scores states by their output evaluates only states inside the
            budget, ranking the rest by the ``grid`` prior; 1: ``net(x)`` exactly (default 8).
        criterion: search order (:mod:`undiscard.search.criteria`; default ``entropy``): ``entropy``,
            ``learned`` (most attention first), ``offset``, ``grid`` (coarse to fine), ``random`` (seeded),
            ``calibrated`` (``order=``'s first B), ``aps`` (the phase of largest norm at the model's first
            unit, per image, then ``grid``: :mod:`undiscard.search.aps`), or a name registered with
            ``register_criterion``.
        aggregate: how states combine (:mod:`undiscard.tasks.aggregation`; default ``entropy``): ``mean`` or
            ``entropy`` weighting of their feature maps, ``attention`` (the learned aggregator; untrained it
            equals ``mean``), or a name registered with ``register_aggregate``.
        align: shift each state's map by its offset before aggregating (default True; dense outputs also
            take ``"lineage"`` (= True) or ``"offset"``: :mod:`undiscard.tasks.segmentation`).
        units: indices or names of the units to search (default None: all spatial units but the first and
            the last; all when there are fewer than three; ``criterion="calibrated"``: its order's;
            ``criterion="aps"``: the first unit).
        task: ``classification``, ``segmentation``, a registered name or a :class:`~undiscard.tasks.base.Task`
            (default None: detected from the output's shape).
        extend: what phases read past the bottom/right edge (:mod:`undiscard.layers.extension`; default
            ``replicate``): ``replicate`` (the edge repeated), ``zero`` (the pad value) or ``background``.
        order: the ranked states of ``criterion="calibrated"``: an ``undiscard calibrate`` file, a
            :class:`~undiscard.search.orders.StateOrder` or a list of states (default None).
        aggregator: the attention aggregator of ``aggregate="attention"``/``criterion="learned"``: an
            ``AttentionAggregator`` or an ``undiscard train-aggregator`` file (default None: a fresh one where
            needed).
        features: ``features(model, x)``, with ``head``, to split a model no rule splits (default None).
        head: ``head(model, features)``: the logits from ``features`` (default None).
        layout: how ``features`` lie (:mod:`undiscard.analysis.split`; default ``nchw``): ``nchw``, ``nhwc``,
            ``vector`` or ``tokens``.
        output: the logits in a dict or tuple output: a key, an index or a callable
            (:mod:`undiscard.analysis.outputs`; default None: ``"logits"`` or element 0).
        strict: raise on unsupported strided layers instead of warning (default False).
        chunk_size: most images x states rows per pass after the root: the memory knob (default 256).
        seed: seed of ``criterion="random"`` and of an untrained aggregator (default 0).
        example_input: an input to set the model up on now, so that its units are known before the first
            call (default None: on the first call above budget 1).
    """
    settings = Settings(criterion=criterion, aggregate=aggregate, align=align, units=units, task=task, extend=extend,
                        order=order, aggregator=aggregator, features=features, head=head, layout=layout,
                        output=output, strict=strict, chunk_size=chunk_size, seed=seed)
    return Undiscard(net, budget, settings, example_input=example_input)
