"""Setting a wrapped model up for one input shape: units, searched units, split, chain, engine, FLOPs.

What ``model.prepare(x)`` (and the first call above budget 1) runs, once per input shape, dtype and
device:

1. :func:`discover_units` on the example input (:mod:`undiscard.analysis.discovery`); strided layers no adapter
   supports are reported by name (a warning, or :class:`~undiscard.errors.UnsupportedLayerError` when
   ``strict``);
2. :func:`choose_units`, on the first shape only (the :class:`Units` are then fixed for the model): the
   searched units (:func:`~undiscard.analysis.geometry.select_units`), the budget checked against their states,
   and the units' layers made to follow phase plans (:func:`~undiscard.layers.plans.install_phased_layers`,
   on the wrapper's private copy of the network);
3. :func:`build_engine`: the split into features and head (:mod:`undiscard.analysis.split`, verified bit for bit;
   the feature layout is settled there), its chain (:mod:`undiscard.analysis._chain`), and the FLOPs of every
   part (:meth:`undiscard.search._engine.Engine.measure`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor, nn

from ._inputs import input_error
from .analysis._chain import build_chain
from .analysis.discovery import Unit, find_units
from .analysis.geometry import UnitSelector, feature_grid, num_states, select_units
from .analysis.outputs import OutputSelector
from .analysis.split import get_split
from .errors import PhaseError, UndiscardError
from .layers.plans import install_phased_layers
from .search._engine import Engine

__all__ = ["Units", "SplitArgs", "discover_units", "choose_units", "build_engine", "check_budget"]


@dataclass(frozen=True)
class Units:
    """A model's units and the indices of those it searches (fixed after its first setup)."""

    all: list[Unit]
    searched: list[int]

    @property
    def search_units(self) -> list[Unit]:
        return [self.all[i] for i in self.searched]


@dataclass(frozen=True)
class SplitArgs:
    """What ``wrap()`` was told about splitting the model (see :func:`undiscard.analysis.split.get_split`)."""

    features: Callable[[nn.Module, Tensor], Tensor] | None = None
    head: Callable[[nn.Module, Tensor], Tensor] | None = None
    layout: str = "nchw"
    output: OutputSelector = None
    at_output: bool | None = False  # the task's (Task.at_output): split at the output (a dense task)


def check_budget(budget: object, units: Units | None) -> int:
    """``budget`` if it is a positive integer within the states of the searched ``units`` (when known);
    otherwise one :class:`~undiscard.errors.PhaseError`."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise PhaseError(f"budget must be a positive integer, got {budget!r}")
    if units is not None and budget > num_states(units.search_units):
        raise PhaseError(f"budget {budget} exceeds the {num_states(units.search_units)} states of the searched units "
                         f"({', '.join(u.name for u in units.search_units) or 'none'})")
    return budget


def discover_units(net: nn.Module, x: Tensor, strict: bool) -> list[Unit]:
    """The units of ``net`` on the example input ``x``; strided layers no adapter supports are a warning
    naming them (an :class:`~undiscard.errors.UnsupportedLayerError` when ``strict``). A network that cannot
    run on ``x`` is one :class:`~undiscard.errors.PhaseError` saying why (:func:`~undiscard._inputs.input_error`)."""
    try:
        return find_units(net, x, strict)
    except UndiscardError:
        raise
    except Exception as err:  # the network itself cannot run on this input
        raise input_error(net, x, err) from None


def choose_units(net: nn.Module, found: list[Unit], known: Units | None, selector: UnitSelector,
                 budget: int) -> Units:
    """The model's :class:`Units`: ``known`` when they are (an input size whose units differ is an error);
    otherwise those ``selector`` chooses from ``found``, with ``budget`` checked against their states and
    the units' layers made to follow phase plans (in ``net``, the wrapper's private copy)."""
    if known is not None:
        if [u.layers for u in found] != [u.layers for u in known.all]:
            raise UndiscardError("this input size changes the model's subsampling units; wrap the model per size")
        return known
    units = Units(found, select_units(found, selector))
    check_budget(budget, units)
    install_phased_layers(net, [u.layers for u in found], copy_net=False)
    return units


def build_engine(net: nn.Module, x: Tensor, units: Units, split: SplitArgs) -> Engine:
    """The engine for inputs shaped like ``x`` (one example image): the verified split (its layout settled),
    its chain, and the FLOPs of every part."""
    chosen = get_split(net, x, split.features, split.head, split.layout, output=split.output,
                       grid=feature_grid(units.all), at_output=split.at_output)
    engine = Engine(net, chosen, build_chain(chosen, x, net), units.all, list(units.searched))
    engine.measure(x)
    return engine
