"""How a wrapped model behaves as an ``nn.Module``: a frozen private copy, per-shape engines, per-thread cost.

:class:`TestTimeModule` is the base of :class:`~undiscard.wrapper.Undiscard`. What it does with what
users try on a module:

- **Train mode.** The backbone always runs in eval mode (a test-time method: BatchNorm statistics and
  dropout as in eval, no running-statistics updates): a ``UserWarning`` when ``net`` is in train mode, and
  its private copy is put in eval; ``train()`` switches only the other children (an aggregator's dropout).
- **Copies.** ``copy.deepcopy``, ``pickle`` and ``torch.save``/``torch.load(weights_only=False)`` keep
  everything but the per-shape engines (closures over this network), the lock and the per-thread costs;
  the copy rebuilds its engines on its first call per shape (same results).
- **dtype and device.** ``.to()``, ``.half()``, ``.double()``, ``.cuda()`` move the network and the
  aggregator and drop the engines (built for the old dtype and device).
- **TorchScript.** ``torch.jit.script`` is refused with one :class:`~undiscard.errors.UndiscardError` (the
  search is data-dependent Python: heaps, per-image loops), before TorchScript reads any code
  (``__prepare_scriptable__``); ``torch.jit.trace`` likewise (:func:`undiscard._inputs.check_input`).
- **Threads.** Engines are built under a lock; ``last_cost``/``last_cost_ideal`` are kept per thread (the
  cost of the calling thread's last call).
"""
from __future__ import annotations

import copy
import threading
import warnings
from typing import Any, Callable

import torch
from torch import nn

from .errors import UndiscardError

__all__ = ["TestTimeModule"]


class TestTimeModule(nn.Module):
    """A module around a private eval-mode copy ``self.net`` of ``net`` (``net`` itself is not changed)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = copy.deepcopy(net)
        if any(m.training for m in net.modules()):
            warnings.warn(f"net is in train mode; undiscard runs a copy of it in eval mode ({type(net).__name__} "
                          f"itself is not changed)", UserWarning, stacklevel=4)
        self.net.eval()
        self._engines: dict[tuple, object] = {}  # per (input shape, dtype, device)
        self._lock, self._cost = threading.Lock(), threading.local()

    def __prepare_scriptable__(self) -> nn.Module:
        """Called by ``torch.jit.script`` first: refused in one line instead of a deep TorchScript error."""
        raise UndiscardError("torch.jit.script cannot compile a wrapped model: the per-image search is "
                             "data-dependent Python; script the network itself (budget 1 is net(x)), or use the "
                             "wrapped model eagerly or with torch.compile")

    def _engine(self, key: tuple, build: Callable[[], Any]) -> Any:
        """The engine cached under ``key``, built by ``build()`` under the lock (once, whichever thread asks
        first), outside inference mode (setup traces tensor versions, which inference tensors lack)."""
        engine = self._engines.get(key)
        if engine is None:
            with self._lock:
                engine = self._engines.get(key)
                if engine is None:
                    with torch.inference_mode(False):
                        engine = self._engines[key] = build()
        return engine

    @property
    def last_cost(self) -> float:
        """Mean cost per image of this thread's last call, in baseline forwards (FLOPs counted; 0 for a
        batch of 0). Kept per thread: threads sharing one model each read the cost of their own call."""
        return getattr(self._cost, "cost", 0.0)

    @property
    def last_cost_ideal(self) -> float:
        """Like ``last_cost``, had every state been recomputed only from its last non-zero unit on."""
        return getattr(self._cost, "ideal", 0.0)

    def _set_cost(self, cost: float, ideal: float) -> None:
        self._cost.cost, self._cost.ideal = cost, ideal

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_engines"] = {}
        state.pop("_lock", None)
        state.pop("_cost", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._lock, self._cost = threading.Lock(), threading.local()

    def _apply(self, fn, recurse: bool = True):
        out = super()._apply(fn, recurse)
        with self._lock:
            self._engines.clear()
        return out

    def train(self, mode: bool = True) -> "TestTimeModule":
        """Set the mode of every child but the backbone ``self.net``, which stays in eval mode."""
        if not isinstance(mode, bool):
            raise UndiscardError(f"train(mode) needs a bool, got {mode!r}")
        self.training = mode
        for child in self.children():
            if child is not self.net:
                child.train(mode)
        return self
