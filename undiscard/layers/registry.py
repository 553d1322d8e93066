"""The registry of phase adapters: one adapter per subsampling layer class.

A *phase adapter* knows how to evaluate one layer type at any of its R² phases (docs/semantics.md, "Phases"):

    out[..., i, j] = dense[..., R*i + dy, R*j + dx],   phase s = dy*R + dx,

where ``dense`` is the layer at stride 1 with its own padding, applied to the input extended past its
bottom/right edge with the layer's pad value. Adapters are looked up by the *exact* class of a module
(never ``isinstance``): a subclass with its own ``forward`` may compute something else, so it needs its
own adapter. Classes from optional packages (timm, torchvision, efficientnet-lite) are keyed by their
fully qualified name, so registering them imports nothing. The registry is a :class:`undiscard._registry.Registry`:
a class registered twice is refused unless ``register_adapter(..., replace=True)``;
:func:`registered_classes` (``undiscard.list_adapters()``) lists them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, TypeVar

from torch import Tensor, nn

from .._compat import class_path
from .._registry import Registry
from ..errors import PhaseError, UnsupportedLayerError

__all__ = ["PhaseAdapter", "register_adapter", "get_adapter", "registered_classes", "list_adapters", "polyphase"]


class PhaseAdapter(ABC):
    """Evaluates one layer type at its phases. Stateless; one instance serves every layer of the type.

    Attributes:
        channels_last: True when the layer's input and output keep the spatial dims at (-3, -2)
            (NHWC, as Swin's patch merging); False for NCHW layers (spatial dims at (-2, -1)).
        takes_args: True when the layer's forward takes positional arguments after its input (Hugging
            Face Swin's patch merging takes ``(tokens, input_dimensions)``): they are handed to
            :meth:`all_phases`, :meth:`one_phase` and :meth:`grids` as ``args``. Otherwise a call with
            more arguments than the input runs the layer's own forward, at phase 0.
    """

    channels_last: bool = False
    takes_args: bool = False

    def map_of(self, layer: nn.Module, x: Tensor, args: tuple = ()) -> Tensor:
        """The layer's input ``x`` as a map in its layout: (N, C, H, W), or (N, H, W, C) when
        ``channels_last``; ``args``: the forward's further arguments (see ``takes_args``)."""
        return x

    def grids(self, layer: nn.Module, x: Tensor, output: Tensor, args: tuple = ()) -> tuple[tuple[int, int], tuple[int, int]]:
        """Spatial sizes (H, W) of the layer's input ``x`` and of its ``output`` in one call."""
        h_dim, w_dim = (-3, -2) if self.channels_last else (-2, -1)
        x = self.map_of(layer, x, args)
        return (int(x.shape[h_dim]), int(x.shape[w_dim])), (int(output.shape[h_dim]), int(output.shape[w_dim]))

    @abstractmethod
    def rate(self, layer: nn.Module) -> int:
        """The subsampling rate R of ``layer`` (1 when it does not subsample).

        Raises UnsupportedLayerError for configurations without a phase semantics (e.g. non-square
        strides).
        """

    @abstractmethod
    def all_phases(self, layer: nn.Module, x: Tensor) -> Tensor:
        """All R² phases from one dense pass: shape (N, R², *default_output_shape[1:]), phase s = dy*R+dx."""

    def one_phase(self, layer: nn.Module, x: Tensor, phase: int) -> Tensor:
        """One phase, with the default output's shape. Adapters override this with a pass that costs
        no more than the default forward; this fallback slices ``all_phases``."""
        return self.all_phases(layer, x)[:, phase]


_ADAPTERS: Registry[PhaseAdapter] = Registry("phase adapter")
A = TypeVar("A", bound=PhaseAdapter)


def register_adapter(*classes: type | str, replace: bool = False) -> Callable[[type[A]], type[A]]:
    """Class decorator: register an adapter for one or more module classes (classes or dotted names);
    a class that has one already is refused unless ``replace``.

    >>> @register_adapter("mypkg.layers.MyDownsample")
    ... class MyDownsampleAdapter(PhaseAdapter): ...
    """

    def deco(adapter_cls: type[A]) -> type[A]:
        _ADAPTERS.add(classes, adapter_cls(), replace)
        return adapter_cls

    return deco


def get_adapter(layer: nn.Module) -> PhaseAdapter | None:
    """The adapter registered for ``type(layer)`` exactly, or None."""
    return _ADAPTERS.find(type(layer))


def registered_classes() -> list[str]:
    """Fully qualified names of every supported layer class, sorted."""
    return sorted(_ADAPTERS.names())


list_adapters = registered_classes  # undiscard.list_adapters()


def _require_adapter(layer: nn.Module) -> PhaseAdapter:
    adapter = get_adapter(layer)
    if adapter is None:
        raise UnsupportedLayerError(
            f"no phase adapter for {class_path(layer)}; supported classes: "
            f"{', '.join(c.rsplit('.', 1)[-1] for c in registered_classes())}. "
            "Register one with undiscard.layers.register_adapter."
        )
    return adapter




def polyphase(layer: nn.Module, x: Tensor, phase: int | None = None, args: tuple = ()) -> Tensor:
    """Evaluate a subsampling layer at its discarded phases.

    Args:
        layer: a module whose class has a registered adapter (Conv2d, MaxPool2d, AvgPool2d, patch
            merging, timm same-padding layers, ...).
        x: the layer's input, in the layer's own layout (NCHW, or NHWC for patch merging).
        phase: None for all phases; otherwise s = dy*R + dx in [0, R²).
        args: the further arguments of the layer's forward, for layers that take them (Hugging Face
            Swin's patch merging: ``(input_dimensions,)``; see ``PhaseAdapter.takes_args``).

    Returns:
        phase None: (N, R², *out) where ``out`` is the default output shape without the batch dim;
        phase s: the default output shape. ``phase=0`` is exactly ``layer(x)``.
    """
    adapter = _require_adapter(layer)
    rate = adapter.rate(layer)
    if args and not adapter.takes_args:
        raise PhaseError(f"{class_path(layer)} takes no arguments after its input")
    if phase is None:
        return adapter.all_phases(layer, x, *args)
    if isinstance(phase, bool) or not isinstance(phase, int):
        raise PhaseError(f"phase must be an int or None, got {type(phase).__name__}")
    if not 0 <= phase < rate * rate:
        raise PhaseError(f"phase {phase} out of range for {class_path(layer)} with rate {rate}: "
                         f"expected 0 <= phase < {rate * rate}")
    if phase == 0:
        return layer(x, *args)
    return adapter.one_phase(layer, x, phase, *args)
