"""``eager``: ``torch.compiler.disable`` without importing ``torch._dynamo`` when undiscard is imported.

Applying ``torch.compiler.disable`` as a decorator imports the whole compiler stack (about a second, half
of ``import undiscard`` on this CPU), even for a command that never compiles. ``eager(fn)`` applies it at
the first call instead: outside ``torch.compile`` the function then runs as it is; inside, dynamo traces the
thin wrapper and breaks the graph at the disabled function, so it runs eagerly as a decorated one would.
"""
from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)


def eager(fn: F) -> F:
    """``fn`` that always runs eagerly, also under ``torch.compile`` (see the module docstring)."""
    disabled: list[Callable] = []

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if not disabled:
            disabled.append(torch.compiler.disable(fn))
        return disabled[0](*args, **kwargs)

    return run  # type: ignore[return-value]


__all__ = ["eager"]
