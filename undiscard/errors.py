"""Exceptions raised by undiscard. Each message names the offending layer, unit, shape or value."""
from __future__ import annotations


class UndiscardError(Exception):
    """Base class of every error undiscard raises on purpose."""


class UnsupportedLayerError(UndiscardError, TypeError):
    """A subsampling layer (or a configuration of one) that no phase adapter handles."""


class PhaseError(UndiscardError, ValueError):
    """An invalid phase, state, budget or input size."""
