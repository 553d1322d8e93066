"""A registry of classes by name: what ``register_aggregate``, ``register_criterion`` and ``register_task`` share.

Entries are classes; :meth:`NamedRegistry.register` is the class decorator that adds one under a name
(and sets the class's ``name``), :meth:`NamedRegistry.create` makes an instance of the entry a user
named, or raises one :class:`~undiscard.errors.UndiscardError` that lists the registered names.
(Layer adapters are keyed by module class instead: :mod:`undiscard.layers.registry`.)
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .errors import UndiscardError

__all__ = ["NamedRegistry"]

T = TypeVar("T")


class NamedRegistry(Generic[T]):
    """Classes registered by name; ``kind`` names them in errors (``unknown {kind} 'x': expected one of ...``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self.entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: add the class under ``name`` (a later registration of the name replaces it)."""

        def deco(cls: type[T]) -> type[T]:
            cls.name = name  # type: ignore[attr-defined]
            self.entries[name] = cls
            return cls

        return deco

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self.entries)

    def module_getattr(self, attribute: str, module: str) -> Callable[[str], tuple[str, ...]]:
        """A module-level ``__getattr__`` (PEP 562) that answers ``attribute`` with the registered names,
        current at the time of asking (``from module import attribute`` included)."""

        def __getattr__(name: str) -> tuple[str, ...]:
            if name == attribute:
                return self.names()
            raise AttributeError(f"module {module!r} has no attribute {name!r}")

        return __getattr__

    def create(self, name: object) -> T:
        """An instance of the class registered as ``name``."""
        cls = self.entries.get(name) if isinstance(name, str) else None
        if cls is None:
            raise UndiscardError(f"unknown {self.kind} {name!r}: expected one of {', '.join(self.entries)}")
        return cls()
