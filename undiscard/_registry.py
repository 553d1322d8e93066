"""One registry mechanism for every kind of plug-in: :class:`Registry` (and :class:`NamedRegistry`, for classes).

Each plug-in kind keeps one module-level registry where it is defined: layer adapters
(:mod:`undiscard.layers.registry`, keyed by module class), aggregations (:mod:`undiscard.tasks.aggregation`),
criteria (:mod:`undiscard.search.criteria`), tasks (:mod:`undiscard.tasks.base`), model sources
(:mod:`undiscard.models.loading`), splits (:mod:`undiscard.analysis.split`, keyed by model class), calibration
objectives (:mod:`undiscard.fitting.objectives`), TTA aggregators and view operations (:mod:`undiscard.tta`).
Every one behaves the same way:

- ``@registry.register(key, ..., replace=False)`` adds the decorated object under one or more keys (a
  name, or a class, stored by its fully qualified name: registering a class of an optional package by
  its name imports nothing). A key that is already taken is refused with one
  :class:`~undiscard.errors.UndiscardError`, unless ``replace=True``: a plug-in never silently replaces
  a built-in. :meth:`Registry.add` does the same without a decorator.
- :meth:`Registry.get` returns the entry or raises one line that lists the registered keys;
  :meth:`Registry.find` returns None instead.
- :meth:`Registry.names` lists the keys in registration order; ``undiscard.list_criteria()`` and the other
  ``list_*`` functions of the package are these.

:class:`NamedRegistry` holds classes by name, sets each class's ``name`` when it is registered and
:meth:`NamedRegistry.create` makes an instance of the one a user named.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from ._compat import class_path
from .errors import UndiscardError

__all__ = ["Registry", "NamedRegistry"]

T = TypeVar("T")
E = TypeVar("E")


class Registry(Generic[T]):
    """Plug-ins of one kind by key; ``kind`` names them in errors (``unknown {kind} 'x': expected one of ...``).

    Keys are strings; a class given as a key is stored by its fully qualified name (``torch.nn.modules.conv.Conv2d``).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self.entries: dict[str, T] = {}

    @staticmethod
    def key_of(key: "str | type") -> str:
        """The string a key is stored under: a string as it is, a class by its fully qualified name."""
        return key if isinstance(key, str) else class_path(key)

    def add(self, keys: "str | type | tuple[str | type, ...]", entry: T, replace: bool = False) -> T:
        """Add ``entry`` under ``keys`` (one or several); a key already registered is one
        :class:`~undiscard.errors.UndiscardError` unless ``replace``. Nothing is added when one is refused."""
        names = [self.key_of(k) for k in (keys if isinstance(keys, tuple) else (keys,))]
        taken = [n for n in names if n in self.entries]
        if taken and not replace:
            raise UndiscardError(f"{self.kind} {taken[0]!r} is already registered (pass replace=True to replace it)")
        for name in names:
            self.entries[name] = entry
        return entry

    def register(self, *keys: "str | type", replace: bool = False) -> Callable[[E], E]:
        """Decorator: add the decorated object under ``keys`` (see :meth:`add`) and return it unchanged."""

        def deco(entry: E) -> E:
            self.add(keys, entry, replace)  # type: ignore[arg-type]
            return entry

        return deco

    def get(self, key: object) -> T:
        """The entry registered under ``key``; an unknown key is one line listing the registered ones."""
        entry = self.find(key)
        if entry is None:
            raise UndiscardError(f"unknown {self.kind} {key!r}: expected one of {', '.join(self.entries)}")
        return entry

    def find(self, key: object) -> T | None:
        """The entry registered under ``key``, or None."""
        if not isinstance(key, (str, type)):
            return None
        return self.entries.get(self.key_of(key))

    def names(self) -> tuple[str, ...]:
        """The registered keys, in registration order."""
        return tuple(self.entries)

    def __contains__(self, key: object) -> bool:
        return self.find(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self.entries))

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.entries)})"

    def module_getattr(self, attribute: str, module: str) -> Callable[[str], tuple[str, ...]]:
        """A module-level ``__getattr__`` (PEP 562) that answers ``attribute`` with :meth:`names`, current at
        the time of asking (``from module import attribute`` included)."""

        def __getattr__(name: str) -> tuple[str, ...]:
            if name == attribute:
                return self.names()
            raise AttributeError(f"module {module!r} has no attribute {name!r}")

        return __getattr__


class NamedRegistry(Registry[type[T]]):
    """Classes registered by name (:meth:`register` sets the class's ``name``); :meth:`create` makes one."""

    def register(self, *keys: "str | type", replace: bool = False) -> Callable[[type[T]], type[T]]:
        """Class decorator: add the class under its name ``keys[0]`` (and any further keys) and set its ``name``."""

        def deco(cls: type[T]) -> type[T]:
            self.add(keys, cls, replace)
            cls.name = self.key_of(keys[0])  # type: ignore[attr-defined]
            return cls

        return deco

    def create(self, name: object) -> T:
        """An instance of the class registered as ``name`` (an unknown name: :meth:`get`'s one line)."""
        return self.get(name)()
