"""The core's seams: the task object, the aggregation and criterion registries, the layout a
split settles once, geometry, and the public search/aggregate calls attention training uses."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

import undiscard
from undiscard import UndiscardError
from undiscard.analysis.discovery import Unit
from undiscard.analysis.geometry import (
    default_search_units,
    feature_stride,
    num_states,
    offsets_per_axis,
    select_units,
    state_offset,
    state_offsets,
)
from undiscard.search import criteria as criteria_module
from undiscard.search.criteria import Criterion
from undiscard.tasks import aggregation as aggregate_module, base as task_module
from undiscard.tasks.aggregation import Aggregation, entropy_weights, normalized_entropy
from undiscard.tasks.base import ClassificationTask

from .test_aggregate import images, tiny_cnn

X = images(3, 16, dtype=torch.float32)


@pytest.fixture
def registries(monkeypatch):
    """Registrations made in a test are undone after it."""
    for registry in (aggregate_module._AGGREGATES, criteria_module._CRITERIA, task_module._TASKS):
        monkeypatch.setattr(registry, "entries", dict(registry.entries))


# --------------------------------------------------------------------------------------- task
def test_default_task_is_classification_and_unknown_tasks_are_one_error():
    assert isinstance(undiscard.wrap(tiny_cnn()).task, ClassificationTask)
    with pytest.raises(UndiscardError, match="unknown task 'segmentationz': expected one of classification"):
        undiscard.wrap(tiny_cnn(), task="segmentationz")


def test_a_registered_task_is_used(registries):
    calls = []

    @undiscard.register_task("counting")
    class Counting(ClassificationTask):
        def finish(self, engine, maps, extra):
            calls.append(tuple(maps.shape))
            return super().finish(engine, maps, extra)

    assert "counting" in task_module.TASKS
    model = undiscard.wrap(tiny_cnn(), budget=4, task="counting")
    plain = undiscard.wrap(tiny_cnn(), budget=4)
    with torch.no_grad():
        assert torch.equal(model(X), plain(X))
    assert calls == [(3, 16, 2, 2)]


def test_classification_weights_and_uncertainty():
    logits = torch.randn(2, 5, 7, dtype=torch.float64) * 10
    task = ClassificationTask()
    assert torch.equal(task.entropy_weights(logits), entropy_weights(normalized_entropy(logits)))
    half = logits.half()
    assert task.state_uncertainty(half).dtype == torch.float32  # scored in at least float32
    assert torch.isfinite(task.entropy(torch.tensor([[0.0, -float("inf")]]))).all()  # from log_softmax


# --------------------------------------------------------------------------------------- registries
def test_builtin_names_are_registry_entries():
    assert aggregate_module.AGGREGATES == ("mean", "entropy", "attention")
    assert criteria_module.CRITERIA == ("entropy", "random", "offset", "grid", "learned", "calibrated", "aps")
    from undiscard.cli import eval as eval_command

    assert eval_command.CRITERIA == criteria_module.CRITERIA  # what the CLI offers is the registry's
    assert list(criteria_module.CRITERIA) == undiscard.list_criteria()
    needs = {n: aggregate_module.get_aggregate(n).needs_aggregator for n in aggregate_module.AGGREGATES}
    assert needs == {"mean": False, "entropy": False, "attention": True}
    assert [n for n in criteria_module.CRITERIA if criteria_module.get_criterion(n).needs_aggregator] == ["learned"]


def test_a_registered_aggregation_is_one_class(registries):
    @undiscard.register_aggregate("first")
    class First(Aggregation):
        """All weight on the original state."""

        def weights(self, logits: Tensor, task) -> Tensor:
            w = torch.zeros(logits.shape[:2], dtype=logits.dtype)
            w[:, 0] = 1.0
            return w

    assert "first" in aggregate_module.AGGREGATES
    model = undiscard.wrap(tiny_cnn(), budget=4, aggregate="first", units=[0, 1, 2])
    with torch.no_grad():
        cands = model.candidates(X)
        assert torch.equal(model(X), torch.stack([per[0].logits for per in cands]))
        assert torch.equal(model.aggregate_candidates(cands, aggregate="first"), model(X))


def test_an_aggregation_that_needs_an_aggregator_gets_one(registries):
    @undiscard.register_aggregate("attentive")
    class Attentive(Aggregation):
        needs_aggregator = True

        def weights(self, logits: Tensor, task) -> Tensor:
            return torch.full(logits.shape[:2], 1.0 / logits.shape[1], dtype=logits.dtype)

    with pytest.warns(UserWarning, match="untrained attention aggregator"):
        model = undiscard.wrap(tiny_cnn(), budget=2, aggregate="attentive", example_input=X[:1])
    assert model.aggregator is not None


def test_a_registered_criterion_orders_the_search(registries):
    @undiscard.register_criterion("far")
    class Far(Criterion):
        """Large offsets first."""

        def score(self, ctx, images, features, logits, states, depth):
            return [-float(dy * dy + dx * dx) for dy, dx in (state_offset(s, ctx.rates, ctx.spatial) for s in states)]

    @undiscard.register_criterion("far-static")
    class FarStatic(Far):
        """The same scores, declared static: known without outputs."""

        static = True

    assert "far" in criteria_module.CRITERIA and "far-static" in criteria_module.CRITERIA
    near = undiscard.wrap(tiny_cnn(), budget=4, criterion="offset", units=[0, 1, 2]).search(X[:1])[0]
    static = undiscard.wrap(tiny_cnn(), budget=4, criterion="far-static", units=[0, 1, 2]).search(X[:1])[0]
    far = undiscard.wrap(tiny_cnn(), budget=4, criterion="far", units=[0, 1, 2]).search(X[:1])[0]
    # static: states in score order, each after its parent, ties by unit then phase: the root's (0,1) (1,0) (1,1)
    assert near == [(0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0, 0)]
    # the last unit's (4,4) (-32), then its (0,4) and (4,0) (-16)
    assert static == [(0, 0, 0), (0, 0, 3), (0, 0, 1), (0, 0, 2)]
    # scored by outputs: the root tries (1,0,0) first (prior: offsets); it scores -1, ahead of the root (0),
    # so its successors follow in prior order: (1,2,0) (offset (2,1), 5) first, scoring -5; then (1,2,0)'s
    # first, (1,2,1) (offset (2,5))
    assert far == [(0, 0, 0), (1, 0, 0), (1, 2, 0), (1, 2, 1)]


@pytest.mark.parametrize("kind, name", [("criterion", "nope"), ("aggregate", "nope")])
def test_unknown_names_are_one_error(kind, name):
    with pytest.raises(UndiscardError, match=f"unknown {kind} 'nope': expected one of"):
        undiscard.wrap(tiny_cnn(), **{kind: name})


# --------------------------------------------------------------------------------------- seams
def test_all_units_and_the_units_alias():
    model = undiscard.wrap(tiny_cnn(), budget=2, example_input=X[:1])
    assert model.units == model.all_units and [u.name for u in model.all_units] == ["0", "2", "4"]
    assert [u.name for u in model.search_units] == ["2"]
    with pytest.raises(UndiscardError, match="all_units|units is known once"):
        undiscard.wrap(tiny_cnn()).all_units


def test_scorer_search_and_aggregation_with_gradients_to_the_aggregator():
    """What attention training does: a scorer on attention scores, then an aggregation with gradients."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = undiscard.wrap(tiny_cnn(), budget=4, aggregate="attention", units=[0, 1, 2], example_input=X[:1])
        learned = undiscard.wrap(tiny_cnn(), budget=4, criterion="learned", aggregate="attention", units=[0, 1, 2],
                                 aggregator=model.aggregator)
    with torch.no_grad():
        model.aggregator.scale.fill_(0.5)
    cands = model.candidates(X, scorer=lambda images, attn, logits, states, depth: (-attn.double()).tolist())
    assert [[c.state for c in per] for per in cands] == learned.search(X)
    out = model.aggregate_candidates(cands, aggregate="attention")
    out.sum().backward()
    assert model.aggregator.scale.grad is not None and bool(model.aggregator.scale.grad.abs().sum() > 0)
    # the search ran without gradients: none reach the backbone's features (the head applied after aggregation
    # gets some; training freezes it)
    assert all(model.net[i].weight.grad is None for i in (0, 2, 4))


class TokenNet(nn.Module):
    """Strided convs whose features are (N, h*w, C) tokens (or (N, C) vectors) for a linear head."""

    def __init__(self, vector: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1))
        self.fc = nn.Linear(8, 4)
        self.vector = vector

    def tokens(self, x: Tensor) -> Tensor:
        t = self.body(x).flatten(2).transpose(1, 2)
        return t.mean(1) if self.vector else t

    def forward(self, x: Tensor) -> Tensor:
        t = self.tokens(x)
        return self.fc(t if self.vector else t.mean(1))


@pytest.mark.parametrize("vector, layout, alignable", [(False, "tokens", True), (True, "vector", False)])
def test_the_split_settles_its_layout_once(vector, layout, alignable):
    net = TokenNet(vector).eval()
    head = (lambda m, f: m.fc(f)) if vector else (lambda m, f: m.fc(f.mean(1)))
    model = undiscard.wrap(net, budget=4, units=[0, 1], features=lambda m, x: m.tokens(x), head=head,
                           example_input=X[:1])
    split = model.prepare(X[:1]).split
    assert (split.layout, split.alignable) == (layout, alignable)
    assert split.grid == (4, 4)
    with torch.no_grad():
        f = net.tokens(X)
        assert torch.equal(split.from_maps(*split.to_maps(f)), f)
        assert torch.equal(model(X, budget=1), net(X))
        assert torch.isfinite(model(X)).all()


# --------------------------------------------------------------------------------------- geometry
UNITS = [Unit("a", 2, ("a",)), Unit("b", 2, ("b",), spatial=False), Unit("c", 3, ("c",)), Unit("d", 2, ("d",))]


def test_geometry_by_hand():
    assert default_search_units(UNITS) == [2]  # spatial a, c, d: all but the first and last
    assert select_units(UNITS, ["d", 0]) == [0, 3]
    assert num_states([UNITS[i] for i in (0, 1, 2)]) == 4 * 4 * 9
    assert offsets_per_axis([UNITS[i] for i in (0, 1, 2)]) == 6  # side unit b adds no offset
    assert feature_stride(UNITS, [1, 2]) == 6 and feature_stride(UNITS, []) == 1
    # state (a: phase 3 = (1, 1), b: 2, c: phase 5 = (1, 2)): (1 + 1*2, 1 + 2*2)
    offsets = state_offsets([[(3, 2, 5), (0, 0, 0)]], [UNITS[i] for i in (0, 1, 2)])
    assert offsets.tolist() == [[[3, 5], [0, 0]]]
