"""What differs between tasks: a :class:`Task` object, one per kind of output (DESIGN §3).

The search (:mod:`undiscard.search`), the engine (:mod:`undiscard.engine`) and the layers never look at
what the network predicts. Everything that does lives here:

- **scoring a state** — :meth:`Task.entropy` (normalised entropy of each prediction the output holds,
  from ``log_softmax``) and :meth:`Task.state_uncertainty` (one number per state, what the ``entropy``
  criterion ranks by);
- **weighting states** — :meth:`Task.entropy_weights`: per-state weights for the ``entropy``
  aggregation, shaped like one entropy per prediction (classification: (N, B); a dense task: (N, B, H, W));
- **combining and aligning** — :meth:`Task.combine`: :meth:`Task.state_maps` says *what* is combined
  (the features' maps, then the head: :meth:`Task.finish`; a dense task may instead combine its output
  logits) and at which stride its maps are aligned by the states' offsets;
- **counting results** — :meth:`Task.tally`, from :mod:`undiscard.metrics`.

:class:`ClassificationTask` (``task="classification"``, the default of :func:`~undiscard.wrap`) is the
first implementation. A new task is one subclass registered with :func:`register_task`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from .aggregate import Aggregation, align_maps, entropy_weights, normalized_entropy
from .named import NamedRegistry
from .metrics.classification import Tally

if TYPE_CHECKING:  # type hints only: the engine is built by the wrapper and handed in
    from .engine import Engine

__all__ = ["Task", "StateMaps", "ClassificationTask", "register_task", "get_task", "TASKS"]


@dataclass
class StateMaps:
    """What the states of N images combine, B states each.

    maps: (N, B, C, h, w) — aligned by offset when ``stride`` is not None.
    extra: (N, B, P, C) parts that are combined with the same weights but never shifted (a ViT's
        prefix tokens), or None.
    stride: total stride from the first searched unit's input grid to the maps; None when the maps
        are not a spatial grid (a class token, a sequence without a known grid).
    """

    maps: Tensor
    extra: Tensor | None
    stride: int | None


class Task:
    """What one kind of prediction means for search and aggregation (see the module docstring)."""

    name: ClassVar[str] = ""

    def entropy(self, logits: Tensor) -> Tensor:
        """Normalised entropy in [0, 1] of every prediction in ``logits`` (…, *output) -> (…, *predictions)."""
        raise NotImplementedError

    def state_uncertainty(self, logits: Tensor) -> Tensor:
        """One uncertainty per state, (M, *output) -> (M,): lower is more confident (the ``entropy``
        criterion expands the lowest first)."""
        raise NotImplementedError

    def entropy_weights(self, logits: Tensor) -> Tensor:
        """Weights of the ``entropy`` aggregation from per-state logits (N, B, *output): ``1 - entropy``,
        normalised over B (uniform where all are 0); shaped (N, B, *predictions)."""
        return entropy_weights(self.entropy(logits))

    def combine(self, engine: "Engine", aggregation: "Aggregation", features: Tensor, logits: Tensor,
                offsets: Tensor, align: bool, aggregator: nn.Module | None) -> Tensor:
        """The output (N, *output) of N images from their B states: native ``features`` (N, B, ...),
        ``logits`` (N, B, *output) and ``offsets`` (N, B, 2). The states' maps (:meth:`state_maps`) are
        aligned by offset when ``align`` and they are a grid, combined by ``aggregation``, and turned
        into the output (:meth:`finish`)."""
        states = self.state_maps(engine, features, logits)
        if align and states.stride is not None:
            states = replace(states, maps=align_maps(states.maps, offsets, states.stride))
        maps, extra = aggregation.combine(states, logits, offsets, self, aggregator)
        return self.finish(engine, maps, extra)

    def state_maps(self, engine: "Engine", features: Tensor, logits: Tensor) -> StateMaps:
        """The maps to combine from N images' B states: native ``features`` (N, B, ...) and ``logits``
        (N, B, *output)."""
        raise NotImplementedError

    def finish(self, engine: "Engine", maps: Tensor, extra: Tensor | None) -> Tensor:
        """The output from combined maps (N, C, h, w) and extra parts (N, P, C) or None."""
        raise NotImplementedError

    def tally(self):
        """A fresh counter of this task's results (:mod:`undiscard.metrics`)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ClassificationTask(Task):
    """(N, K) logits. A state's uncertainty is the normalised entropy of its K logits; its weight is one
    scalar per image and state, (N, B); feature maps are combined, then the model's head is applied;
    results are top-k hits (:mod:`undiscard.metrics.classification`)."""

    name = "classification"

    def entropy(self, logits: Tensor) -> Tensor:
        return normalized_entropy(logits)

    def state_uncertainty(self, logits: Tensor) -> Tensor:
        # at least float32 (half logits), but float64 logits keep their precision
        return normalized_entropy(logits if logits.dtype == torch.float64 else logits.float())

    def state_maps(self, engine: "Engine", features: Tensor, logits: Tensor) -> StateMaps:
        n, b = features.shape[:2]
        maps, extra = engine.split.to_maps(features.flatten(0, 1))
        stride = engine.feature_stride if engine.split.alignable else None
        return StateMaps(maps.unflatten(0, (n, b)), extra.unflatten(0, (n, b)) if extra is not None else None, stride)

    def finish(self, engine: "Engine", maps: Tensor, extra: Tensor | None) -> Tensor:
        return engine.split.head(engine.split.from_maps(maps, extra))

    def tally(self) -> Tally:
        return Tally()


_TASKS: NamedRegistry[Task] = NamedRegistry("task")
register_task = _TASKS.register  # @register_task(name): wrap(task=name)
__getattr__ = _TASKS.module_getattr("TASKS", __name__)  # TASKS: names
register_task("classification")(ClassificationTask)


def get_task(task: str | Task) -> Task:
    """The task named ``task`` (or ``task`` itself when it is one); an unknown name is one
    :class:`~undiscard.errors.UndiscardError` listing the registered tasks."""
    return task if isinstance(task, Task) else _TASKS.create(task)
