"""The settings of a wrapped model and their defaults, written once: :class:`Settings`.

``wrap(net, budget, *, criterion=..., ...)`` takes every setting as a keyword argument whose default is
read from :data:`DEFAULTS` (``criterion: CriterionName = DEFAULTS.criterion``), and the command line builds
a :class:`Settings` from its options (:func:`undiscard.cli.common.add_wrap_args` takes each option's
default and help from the field here; :meth:`Settings.from_args`). A default changed here changes the
library, its docstrings' promises (checked by a test) and every ``--help`` at once.

The types say which values are accepted: a ``Literal`` where they are a closed set (``extend``, ``layout``,
the named ``align`` modes), the built-in names plus ``str`` where they are a registry that plug-ins extend
(``criterion``: :func:`undiscard.search.criteria.register_criterion`, ``aggregate``:
:func:`undiscard.tasks.aggregation.register_aggregate`, ``task``: :func:`undiscard.tasks.base.register_task`).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence, Union

from torch import Tensor, nn

from .analysis.geometry import UnitSelector
from .analysis.outputs import OutputSelector
from .layers.extension import ExtendMode

if TYPE_CHECKING:  # type hints only
    from .search.orders import StateOrder
    from .tasks.attention import AttentionAggregator
    from .tasks.base import Task

__all__ = ["Settings", "DEFAULTS", "DEFAULT_BUDGET", "CriterionName", "AggregateName", "TaskName", "Align",
           "Layout", "OrderSource", "AggregatorSource", "FeatureFn", "HeadFn"]

DEFAULT_BUDGET = 8  # wrap(net)'s states per image (budget is not a Settings field: a model's budget may change)

CriterionName = Union[Literal["entropy", "learned", "offset", "grid", "random", "calibrated", "aps"], str]
AggregateName = Union[Literal["entropy", "mean", "attention"], str]
TaskName = Union[Literal["classification", "segmentation"], str]
Align = Union[bool, Literal["lineage", "offset"]]  # dense outputs: True is "lineage"
Layout = Literal["nchw", "nhwc", "vector", "tokens"]  # undiscard.analysis.split
OrderSource = Union["StateOrder", str, Path, Sequence[Sequence[int]], None]
AggregatorSource = Union["AttentionAggregator", str, Path, None]
FeatureFn = Callable[[nn.Module, Tensor], Tensor]
HeadFn = Callable[[nn.Module, Tensor], Tensor]


def _setting(default: Any, text: str) -> Any:
    """A field with its default and the one-line description ``--help`` shows."""
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class Settings:
    """How a wrapped model searches and aggregates (every ``wrap()`` keyword argument but ``example_input``).

    Each field's ``metadata["help"]`` is its command-line help; :meth:`help` adds the default.
    """

    criterion: CriterionName = _setting("entropy", "search order (undiscard.search.criteria)")
    aggregate: AggregateName = _setting("entropy", "how the states combine (undiscard.tasks.aggregation)")
    align: Align = _setting(True, "align each state's map by its offset before aggregating")
    units: UnitSelector = _setting(None, "comma-separated unit names or indices to search; none given: the model's")
    task: "TaskName | Task | None" = _setting(None, "what is predicted; None detects it from the output")
    extend: ExtendMode = _setting("replicate", "what phases read past the bottom/right edge "
                                               "(undiscard.layers.extension)")
    order: OrderSource = _setting(None, "state order file from `undiscard calibrate`, for --criterion calibrated")
    aggregator: AggregatorSource = _setting(None, "attention aggregator file (undiscard train-aggregator)")
    features: FeatureFn | None = _setting(None, "features(model, x): the features of an unknown model")
    head: HeadFn | None = _setting(None, "head(model, features): the logits from features()")
    layout: Layout = _setting("nchw", "how features() maps lie (undiscard.analysis.split)")
    output: OutputSelector = _setting(None, "the logits in a dict or tuple output (undiscard.analysis.outputs)")
    strict: bool = _setting(False, "refuse unsupported strided layers instead of warning")
    chunk_size: int = _setting(256, "most images x states rows per pass after the root: the memory knob")
    seed: int = _setting(0, "seed of the random criterion and of an untrained aggregator")

    @classmethod
    def help(cls, name: str) -> str:
        """Field ``name``'s description with its default (none said for None), as ``--help`` shows it."""
        f = next(f for f in fields(cls) if f.name == name)
        text = f.metadata["help"]
        return text if "(default:" in text or f.default is None else f"{text} (default: {f.default})"

    @classmethod
    def from_args(cls, args: argparse.Namespace, **values: Any) -> "Settings":
        """The settings a command's options give: the options :func:`undiscard.cli.common.add_wrap_args`
        added (named like the fields; listed in ``args.settings_options``), then ``values`` over them (what
        a command computed itself: a model's default units, its shipped aggregator)."""
        given = {name: getattr(args, name) for name in getattr(args, "settings_options", ())}
        return cls(**{**given, **values})

    def as_kwargs(self) -> dict[str, Any]:
        """The settings as ``wrap()`` keyword arguments (values as they are: nothing is copied)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


DEFAULTS = Settings()
