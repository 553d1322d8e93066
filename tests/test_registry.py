"""One registry mechanism (:mod:`undiscard._registry`) for every plug-in kind: a taken key is refused unless
``replace=True``, an unknown one is one line listing the registered keys, and ``undiscard.list_*`` lists the
built-ins. Parametrized over every registry of the package."""
from __future__ import annotations

from typing import Any, Callable

import pytest
from torch import nn

import undiscard
from undiscard._registry import NamedRegistry, Registry
from undiscard.analysis import split as split_module
from undiscard.errors import UndiscardError
from undiscard.fitting import objectives
from undiscard.layers import registry as adapters
from undiscard.models import loading
from undiscard.search import criteria
from undiscard.tasks import aggregation, base as tasks
from undiscard.tta import aggregators as tta_aggregators, views

SEGFORMER = "transformers.models.segformer.modeling_segformer.SegformerForSemanticSegmentation"
# name -> (the registry, a built-in key, its public register decorator for a new entry under a key, list_*)
REGISTRIES: dict[str, tuple[Registry, str, Callable[..., Callable[[Any], Any]], Callable[[], list[str]]]] = {
    "criteria": (criteria._CRITERIA, "entropy", criteria.register_criterion, undiscard.list_criteria),
    "aggregates": (aggregation._AGGREGATES, "mean", aggregation.register_aggregate, undiscard.list_aggregates),
    "tasks": (tasks._TASKS, "classification", tasks.register_task, undiscard.list_tasks),
    "objectives": (objectives._OBJECTIVES, "accuracy", objectives.register_objective, undiscard.list_objectives),
    "adapters": (adapters._ADAPTERS, "torch.nn.modules.conv.Conv2d", adapters.register_adapter,
                 undiscard.list_adapters),
    "sources": (loading._SOURCES, "timm", loading.register_source, undiscard.list_sources),
    "splits": (split_module._SPLITS, "torchvision.models.resnet.ResNet", split_module.register_split,
               undiscard.list_splits),
    "output splits": (split_module._OUTPUT_SPLITS, SEGFORMER,
                      lambda key, replace=False: split_module.register_split(key, at_output=True, replace=replace),
                      undiscard.list_splits),
    "tta aggregates": (tta_aggregators._CLASSES, "gps", tta_aggregators.register_tta_aggregate,
                       undiscard.list_tta_aggregates),
    "view ops": (views.OPS, "hflip", lambda key, replace=False: views.register_view_op(key, 0, replace=replace),
                 undiscard.list_view_ops),
}
BUILT_IN = {
    "criteria": ["entropy", "random", "offset", "grid", "learned", "calibrated"],
    "aggregates": ["mean", "entropy", "attention"],
    "tasks": ["classification", "segmentation"],
    "objectives": ["accuracy", "consistency", "agreement", "kl"],
    "adapters": ["torch.nn.modules.conv.Conv2d", "torch.nn.modules.pooling.MaxPool2d",
                 "torch.nn.modules.pooling.AvgPool2d", "timm.layers.blur_pool.BlurPool2d"],
    "sources": ["zoo", "timm", "torchvision", "hf", "efficientnet-lite0"],
    "splits": ["torchvision.models.resnet.ResNet", "efficientnet_lite_pytorch.model.EfficientNet"],
    "output splits": [SEGFORMER],
    "tta aggregates": ["mean", "max", "gps", "classtta", "augtta"],
    "view ops": ["identity", "hflip", "vflip", "shift", "crop", "scale", "rotate", "brightness", "contrast"],
}


def _entry(kind: str) -> Any:
    """A new entry of the kind the registry's decorator takes."""
    if kind == "criteria":
        return type("Fresh", (criteria.Criterion,), {})
    if kind == "aggregates":
        return type("Fresh", (aggregation.Aggregation,), {})
    if kind == "tasks":
        return type("Fresh", (tasks.ClassificationTask,), {})
    if kind == "objectives":
        return type("Fresh", (objectives.Objective,), {})
    if kind == "adapters":
        return type("Fresh", (adapters.PhaseAdapter,), {"rate": lambda self, layer: 1,
                                                        "all_phases": lambda self, layer, x: x[:, None]})
    if kind == "tta aggregates":
        return type("Fresh", (tta_aggregators.TTAAggregator,), {})
    return lambda *args: None  # a source, a split factory, a view op


@pytest.fixture
def restored(monkeypatch):
    """Registrations made in a test are undone after it."""
    for registry, *_ in REGISTRIES.values():
        monkeypatch.setattr(registry, "entries", dict(registry.entries))


@pytest.mark.parametrize("kind", REGISTRIES)
def test_list_gives_the_built_ins(kind):
    registry, _, _, listing = REGISTRIES[kind]
    names = listing()
    assert isinstance(names, list) and set(BUILT_IN[kind]) <= set(names)
    assert set(registry.names()) <= set(names)


@pytest.mark.parametrize("kind", REGISTRIES)
def test_a_taken_key_is_refused_in_one_line(kind, restored):
    registry, taken, register, _ = REGISTRIES[kind]
    before = registry.find(taken)
    with pytest.raises(UndiscardError, match="is already registered") as err:
        register(taken)(_entry(kind))
    assert "\n" not in str(err.value) and taken in str(err.value) and "replace=True" in str(err.value)
    assert registry.find(taken) is before  # nothing replaced


@pytest.mark.parametrize("kind", REGISTRIES)
def test_replace_true_replaces(kind, restored):
    registry, taken, register, listing = REGISTRIES[kind]
    before, entry = registry.find(taken), _entry(kind)
    register(taken, replace=True)(entry)
    assert registry.find(taken) is not before and taken in listing()
    assert registry.find(taken) is entry or type(registry.find(taken)) is entry or \
        (isinstance(registry.find(taken), tuple) and entry in registry.find(taken))


@pytest.mark.parametrize("kind", REGISTRIES)
def test_a_new_key_is_listed(kind, restored):
    registry, _, register, listing = REGISTRIES[kind]
    key = "tests.fresh.Kind" if kind in ("adapters", "splits", "output splits") else "fresh"
    assert key not in listing()
    register(key)(_entry(kind))
    assert key in listing() and key in registry


@pytest.mark.parametrize("kind", REGISTRIES)
def test_an_unknown_key_lists_the_choices(kind):
    registry, taken, _, _ = REGISTRIES[kind]
    with pytest.raises(UndiscardError) as err:
        registry.get("no-such-thing")
    message = str(err.value)
    assert "\n" not in message and "unknown" in message and "'no-such-thing'" in message
    assert all(name in message for name in BUILT_IN[kind])


def test_a_class_key_is_its_class_path():
    registry: Registry[str] = Registry("thing")
    registry.add(nn.Conv2d, "conv")
    assert registry.names() == ("torch.nn.modules.conv.Conv2d",)
    assert registry.get(nn.Conv2d) == "conv" and nn.Conv2d in registry and registry.find(nn.ReLU) is None
    with pytest.raises(UndiscardError, match="'torch.nn.modules.conv.Conv2d' is already registered"):
        registry.add("torch.nn.modules.conv.Conv2d", "other")


def test_a_refused_registration_adds_none_of_its_keys():
    registry: Registry[int] = Registry("thing")
    registry.add("a", 1)
    with pytest.raises(UndiscardError):
        registry.add(("b", "a"), 2)
    assert registry.names() == ("a",)


def test_a_named_registry_sets_the_name_and_creates():
    registry: NamedRegistry[object] = NamedRegistry("thing")

    @registry.register("x")
    class X:
        pass

    assert X.name == "x" and isinstance(registry.create("x"), X)
    with pytest.raises(UndiscardError, match="unknown thing 'y': expected one of x"):
        registry.create("y")


@pytest.mark.parametrize("user_facing, message", [
    (lambda: undiscard.wrap(nn.Conv2d(1, 1, 3).eval(), criterion="nope"), "unknown criterion 'nope': expected one of entropy"),
    (lambda: undiscard.wrap(nn.Conv2d(1, 1, 3).eval(), aggregate="nope"), "unknown aggregate 'nope': expected one of mean"),
    (lambda: undiscard.wrap(nn.Conv2d(1, 1, 3).eval(), task="nope"), "unknown task 'nope': expected one of classification"),
    (lambda: tta_aggregators.make_aggregator("nope", 2), "unknown TTA aggregate 'nope': expected one of mean"),
    (lambda: objectives.get_objective("nope"), "unknown objective 'nope': expected one of accuracy"),
])
def test_user_facing_lookups_list_the_choices(user_facing, message):
    with pytest.raises(UndiscardError, match=message):
        user_facing()
