"""Search criteria: which states a search evaluates, and in which order (docs/semantics.md, "Search"). Lower scores first.

A criterion is a small :class:`Criterion` class registered by name (:func:`register_criterion`, refusing a
taken name unless ``replace=True``; ``wrap(..., criterion=NAME)``; :func:`list_criteria`). Whatever the criterion, a budget of B evaluates at most B states per image
(the root included), so a search costs at most B plain forwards (:mod:`undiscard.search._best_first`). There are two
kinds:

*Static criteria* (``static = True``) score states without their outputs, so the order is known before
anything runs, and it is the same for every image: :meth:`Criterion.static_order` lists the states the
search evaluates (by default the states in order of score, each after its parent:
:func:`undiscard.search._best_first.static_order`), and the list is evaluated (:mod:`undiscard.search._candidates`):

- ``offset``: small offsets first (``dy² + dx²`` in pixels of the first searched unit's input);
- ``grid``: coarse to fine (:func:`~undiscard.analysis.geometry.grid_rank`): a rate-16 patch embedding's half-patch
  offsets (0, 8), (8, 0), (8, 8) first, then its quarter-patch ones, ...; small offsets first within a
  level. On units of rate 2 it is ``offset``;
- ``random``: a seeded hash of (seed, depth, state), so order never depends on batch composition;
- ``calibrated``: a fixed list of states ranked once per model on a labelled split
  (:mod:`undiscard.fitting.calibration`, ``undiscard calibrate``; ``wrap(..., criterion="calibrated", order=FILE)``):
  budget B evaluates its first B states.

*Output-scored criteria* score a state by what it computes, so they only ever score evaluated states:
the lazy best-first search (:func:`undiscard.search._best_first.lazy_best_first`) pops the best-scored evaluated
state and evaluates its next successor in the order of the criterion's free :meth:`Criterion.prior`
(``grid`` by default; ties by unit, then phase):

- ``entropy``: the task's uncertainty of the state's prediction (normalised entropy of its logits);
- ``learned``: most attention first (the attention aggregator's location-averaged attention logit,
  negated); it ``needs_aggregator``.

``CRITERIA`` is the tuple of registered names. :func:`custom_criterion` turns a plain function into an
output-scored criterion for one search (``model.candidates(x, scorer=...)``; training the aggregator uses it).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Protocol, Sequence

from torch import Tensor

from .._registry import NamedRegistry
from ..analysis.geometry import grid_rank, state_offset
from ..errors import UndiscardError
from ._best_first import static_order
from .aps import APSRule
from .orders import StateOrder, as_order

if TYPE_CHECKING:  # type hints only
    from ._engine import Engine

__all__ = ["Criterion", "SearchContext", "resolve_order", "StateScorer", "register_criterion", "get_criterion",
           "custom_criterion", "random_score", "grid_score", "list_criteria", "CRITERIA"]

States = list[tuple[int, ...]]


class UncertaintyTask(Protocol):
    """What a criterion may ask of the task (:class:`undiscard.tasks.base.Task` is one): each state's
    uncertainty from its logits (M, *output) -> (M,), lower is more certain."""

    def state_uncertainty(self, logits: Tensor) -> Tensor: ...

# attention(images, features, states) -> (M,) per-state attention scores (higher = more attention)
AttentionScores = Callable[[list[int], Tensor, States], Tensor]
# scorer(images, attention_scores, logits, states, depth) -> one score per row (lower = expanded first)
StateScorer = Callable[[list[int], Tensor, Tensor, States, int], list[float]]


@dataclass
class SearchContext:
    """What a criterion may use besides the nodes themselves."""

    task: UncertaintyTask
    rates: Sequence[int]  # of the searched units
    spatial: Sequence[bool]  # of the searched units (side units add no offset)
    seed: int = 0
    attention: AttentionScores | None = None  # set when the criterion needs_aggregator
    order: StateOrder | None = None  # criterion="calibrated": the ranked states, checked against the units

    @classmethod
    def of(cls, engine: "Engine", task: UncertaintyTask, seed: int = 0, order: StateOrder | None = None) -> "SearchContext":
        """The context of a search on ``engine`` (its searched units' rates and spatial flags); ``order`` is
        checked against the searched units (one :class:`~undiscard.errors.UndiscardError` if it does not fit)."""
        if order is not None:
            order.check(engine.search_units)
        return cls(task, engine.rates(), [u.spatial for u in engine.search_units], seed, order=order)

    def attention_scores(self, images: list[int], features: Tensor, states: States) -> Tensor:
        """(M,) attention scores of M nodes of ``images`` (see :class:`~undiscard.tasks.attention.AttentionScorer`)."""
        if self.attention is None:
            raise UndiscardError("this search criterion ranks states by attention: it needs an attention aggregator "
                                 "(wrap(..., aggregator=FILE) or aggregate='attention')")
        return self.attention(images, features, states)


class Criterion:
    """One search order; ``needs_aggregator``: it reads the attention aggregator's scores; ``static``: its
    scores read only ``states`` and ``depth`` (``features`` and ``logits`` are None), so its order is known
    before anything runs (:meth:`static_order`)."""

    name: ClassVar[str] = ""
    needs_aggregator: ClassVar[bool] = False
    static: ClassVar[bool] = False
    needs_order: ClassVar[bool] = False  # reads SearchContext.order (wrap(order=...))
    adaptive: ClassVar[bool] = False  # its second state is selected per image in one pass (``aps``)
    default_units: ClassVar[list[int] | None] = None  # the units it searches when wrap(units=...) is not given

    def static_order(self, ctx: SearchContext, budget: int) -> Sequence[tuple[int, ...]]:
        """A static criterion's first ``budget`` states (the first is the all-zero state; fewer when the
        states run out): in order of score, each after its parent (:func:`undiscard.search._best_first.static_order`)."""
        return static_order(lambda states, depth: self.score(ctx, [], None, None, states, depth),  # type: ignore[arg-type]
                            ctx.rates, budget)

    def prior(self, ctx: SearchContext, states: States) -> list[float]:
        """Free scores (lower first) by which an output-scored search tries a state's successors before it
        has evaluated them: coarse to fine (:func:`grid_score`)."""
        return grid_score(ctx, states)

    def score(self, ctx: SearchContext, images: list[int], features: Tensor, logits: Tensor, states: States,
              depth: int) -> list[float]:
        """One score per row (row r belongs to image ``images[r]``); lower is expanded first."""
        raise NotImplementedError


_CRITERIA: NamedRegistry[Criterion] = NamedRegistry("criterion")
register_criterion = _CRITERIA.register  # @register_criterion(name): wrap(criterion=name)
get_criterion = _CRITERIA.create  # unknown names: one UndiscardError
__getattr__ = _CRITERIA.module_getattr("CRITERIA", __name__)  # CRITERIA: names


def list_criteria() -> list[str]:
    """The registered criterion names, in registration order (``wrap(criterion=...)``)."""
    return list(_CRITERIA.names())


NO_ORDER = ("criterion='calibrated' needs a ranked list of states: wrap(..., order=FILE) with a file from "
            "'undiscard calibrate' (zoo models ship one: undiscard.search.orders.zoo_order_path(name)), or "
            "order=[state, ...]")


def resolve_order(criterion: Criterion, order: object) -> StateOrder | None:
    """``wrap(order=...)`` as a :class:`~undiscard.search.orders.StateOrder` (:func:`~undiscard.search.orders.as_order`);
    one :class:`~undiscard.errors.UndiscardError` when ``criterion`` ``needs_order`` and there is none."""
    resolved = as_order(order)  # type: ignore[arg-type]
    if resolved is None and criterion.needs_order:
        raise UndiscardError(NO_ORDER)
    return resolved


def grid_score(ctx: SearchContext, states: States) -> list[float]:
    """The coarse-to-fine rank of each state (:func:`~undiscard.analysis.geometry.grid_rank`)."""
    return [float(grid_rank(s, ctx.rates, ctx.spatial)) for s in states]


def random_score(seed: int, state: tuple[int, ...], depth: int) -> float:
    """A uniform number in [0, 1) from (seed, depth, state) alone."""
    digest = hashlib.blake2b(f"{seed}|{depth}|{state}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0 ** 64


@register_criterion("entropy")
class Entropy(Criterion):
    """The task's uncertainty of each state's prediction (classification: normalised entropy)."""

    def score(self, ctx, images, features, logits, states, depth):
        return ctx.task.state_uncertainty(logits).tolist()


@register_criterion("random")
class Random(Criterion):
    """Seeded random order (:func:`random_score`)."""

    static = True

    def score(self, ctx, images, features, logits, states, depth):
        return [random_score(ctx.seed, s, depth) for s in states]


@register_criterion("offset")
class Offset(Criterion):
    """Small offsets first: ``dy² + dx²``."""

    static = True

    def score(self, ctx, images, features, logits, states, depth):
        return [float(dy * dy + dx * dx) for dy, dx in (state_offset(s, ctx.rates, ctx.spatial) for s in states)]


@register_criterion("grid")
class Grid(Criterion):
    """Coarse to fine: lower sub-grid levels first, small offsets first within a level (:func:`grid_score`)."""

    static = True

    def score(self, ctx, images, features, logits, states, depth):
        return grid_score(ctx, states)


@register_criterion("learned")
class Learned(Criterion):
    """Most attention first: the attention aggregator's per-state score, negated."""

    needs_aggregator = True

    def score(self, ctx, images, features, logits, states, depth):
        return (-ctx.attention_scores(images, features, states).double()).tolist()


@register_criterion("calibrated")
class Calibrated(Criterion):
    """The first B states of a ranked list (:class:`~undiscard.search.orders.StateOrder`, ``wrap(order=...)``),
    at most its ``stop`` (fewer when the list is shorter than B, as a tree search stops when states run out);
    as scores (unused by the library's own search), a state's rank, unranked states after all others."""

    static = True
    needs_order = True

    def static_order(self, ctx, budget):
        if ctx.order is None:
            raise UndiscardError(NO_ORDER)
        return ctx.order.searched[:budget]

    def score(self, ctx, images, features, logits, states, depth):
        rank = {s: r for r, s in enumerate(self.static_order(ctx, len(ctx.order.searched) if ctx.order else 0))}
        return [float(rank.get(tuple(s), len(rank))) for s in states]


@register_criterion("aps")
class AdaptiveSelection(Criterion):
    """Adaptive polyphase selection as a search: budget 1 is the original model; the second state is, per
    image, the phase of largest L2 norm at every searched unit (interior cells scored, in one pass:
    :mod:`undiscard.search.aps`); further states follow the coarse-to-fine ``grid`` order, skipping the
    selected one. By default it searches the model's first unit, where it was measured to help (deeper
    units cost accuracy on every model measured)."""

    adaptive = True
    default_units = [0]
    rule = APSRule()

    def static_order(self, ctx, budget):
        return static_order(lambda states, depth: grid_score(ctx, states), ctx.rates, budget)

    def score(self, ctx, images, features, logits, states, depth):
        return grid_score(ctx, states)


class _Custom(Criterion):
    needs_aggregator = True

    def __init__(self, scorer: StateScorer):
        self.scorer = scorer

    def score(self, ctx, images, features, logits, states, depth):
        return self.scorer(images, ctx.attention_scores(images, features, states), logits, states, depth)


def custom_criterion(scorer: StateScorer) -> Criterion:
    """A criterion for one search from ``scorer(images, attention_scores, logits, states, depth)``: it
    gets the attention aggregator's (M,) per-state scores instead of the features (so it needs one)."""
    return _Custom(scorer)
