"""What differs between tasks: a :class:`Task` object, one per kind of output (docs/semantics.md, "Aggregation").

The search (:mod:`undiscard.search._best_first`), the engine (:mod:`undiscard.search._engine`) and the layers never look at
what the network predicts. Everything that does lives here:

- **scoring a state** — :meth:`Task.entropy` (normalised entropy of each prediction the output holds,
  from ``log_softmax``) and :meth:`Task.state_uncertainty` (one number per state, what the ``entropy``
  criterion ranks by);
- **weighting states** — :meth:`Task.entropy_weights`: per-state weights for the ``entropy``
  aggregation, shaped like one entropy per prediction (classification: (N, B); a dense task: (N, B, H, W));
- **combining and aligning** — :meth:`Task.combine`: :meth:`Task.state_maps` says *what* is combined
  (the features' maps, then the head: :meth:`Task.finish`; a dense task may instead combine its output
  logits) and at which stride its maps are aligned by the states' offsets;
- **counting results** — :meth:`Task.tally`: the counter of one result row (:mod:`undiscard.metrics`)
  that an evaluation (:func:`undiscard.evaluation.runner.run_batches`) feeds;
- **where the model is split** — :attr:`Task.at_output`: a dense task combines the output logits
  themselves, so the features are the model's output and the head is the identity
  (:func:`undiscard.analysis.split.output_split`).

:class:`ClassificationTask` (``task="classification"``) is the first implementation;
:class:`~undiscard.tasks.segmentation.SegmentationTask` (``task="segmentation"``, (N, K, H, W) outputs) the second. The
default of :func:`~undiscard.wrap` (``task=None``) is :class:`AutoTask`: classification, unless the
network's output is (N, K, H, W), which is then treated as segmentation, with a warning saying so once.
A new task is one subclass registered with :func:`register_task` (a taken name is refused unless
``replace=True``; :func:`list_tasks`).
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import TYPE_CHECKING, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._registry import NamedRegistry
from ..metrics.classification import ClassificationTally
from ..metrics.tally import Tally
from .aggregation import Aggregation, align_maps, entropy_weights, normalized_entropy

if TYPE_CHECKING:  # type hints only: the engine is built by the wrapper and handed in
    from ..search._engine import Engine

__all__ = ["Task", "StateMaps", "ClassificationTask", "AutoTask", "register_task", "get_task", "list_tasks", "TASKS"]


@dataclass
class StateMaps:
    """What the states of N images combine, B states each.

    maps: (N, B, C, h, w) — aligned by offset when ``stride`` is not None.
    extra: (N, B, P, C) parts that are combined with the same weights but never shifted (a ViT's
        prefix tokens), or None.
    stride: total stride from the first searched unit's input grid to the maps (a Fraction for maps finer
        than that grid: a dense output); None when the maps are not a spatial grid (a class token, a
        sequence without a known grid).
    entropy: the normalised entropies (N, B, *predictions) the ``entropy`` aggregation weighs the states
        by, when computed ahead (:meth:`Task.with_entropy`; calibration combines many subsets of the same
        states); None: computed from the logits at each combination.
    """

    maps: Tensor
    extra: Tensor | None
    stride: int | Fraction | None
    entropy: Tensor | None = None

    def select(self, index: Sequence[int]) -> "StateMaps":
        """The maps of the states at positions ``index`` of every image (dim 1), in that order."""
        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[:, index]

        return StateMaps(self.maps[:, index], pick(self.extra), self.stride, pick(self.entropy))


class Task:
    """What one kind of prediction means for search and aggregation (see the module docstring)."""

    name: ClassVar[str] = ""
    # split the model at its output (features = logits, head = identity): True for a dense task, None to
    # decide from the model's output ((N, K, H, W) outputs are), False to split at the last feature map
    at_output: ClassVar[bool | None] = False

    @property
    def resolved_name(self) -> str:
        """The registered name of the task that really applies (``auto`` resolves to what it detected)."""
        return self.name

    def entropy(self, logits: Tensor) -> Tensor:
        """Normalised entropy in [0, 1] of every prediction in ``logits`` (…, *output) -> (…, *predictions)."""
        raise NotImplementedError

    def state_uncertainty(self, logits: Tensor) -> Tensor:
        """One uncertainty per state, (M, *output) -> (M,): lower is more confident (the ``entropy``
        criterion pops the lowest first)."""
        raise NotImplementedError

    def entropy_weights(self, logits: Tensor) -> Tensor:
        """Weights of the ``entropy`` aggregation from per-state logits (N, B, *output): ``1 - entropy``,
        normalised over B (uniform where all are 0); shaped (N, B, *predictions)."""
        return entropy_weights(self.entropy(logits))

    def with_entropy(self, states: StateMaps, logits: Tensor) -> StateMaps:
        """``states`` with the entropies the ``entropy`` aggregation weighs them by (:attr:`StateMaps.entropy`),
        computed once from the states' ``logits`` (N, B, *output)."""
        return replace(states, entropy=self.entropy(logits))

    def combine(self, engine: "Engine", aggregation: "Aggregation", features: Tensor, logits: Tensor,
                offsets: Tensor, align: bool, aggregator: nn.Module | None) -> Tensor:
        """The output (N, *output) of N images from their B states: native ``features`` (N, B, ...),
        ``logits`` (N, B, *output) and ``offsets`` (N, B, 2). The states' maps (:meth:`state_maps`) are
        aligned by offset when ``align`` and they are a grid, combined by ``aggregation``, and turned
        into the output (:meth:`finish`)."""
        return self.combine_aligned(engine, aggregation, self.aligned_states(engine, features, logits, offsets, align),
                                    logits, offsets, aggregator)

    def combine_aligned(self, engine: "Engine", aggregation: "Aggregation", states: StateMaps, logits: Tensor,
                        offsets: Tensor, aggregator: nn.Module | None) -> Tensor:
        """:meth:`combine` of states already aligned (:meth:`aligned_states`; a :meth:`StateMaps.select` of
        them combines a subset, each state aligned on its own, without aligning again)."""
        maps, extra = aggregation.combine(states.maps, states.extra, offsets, self.states_entropy(aggregation, states, logits),
                                          aggregator)
        return self.finish(engine, maps, extra)

    def states_entropy(self, aggregation: "Aggregation", states: StateMaps, logits: Tensor) -> Tensor | None:
        """What ``aggregation`` weighs the states by, when it ``needs_entropy``: their normalised entropy
        (N, B, *predictions), computed ahead (:meth:`with_entropy`) or now from ``logits``; else None."""
        if not aggregation.needs_entropy:
            return None
        return states.entropy if states.entropy is not None else self.entropy(logits)

    def aligned_states(self, engine: "Engine", features: Tensor, logits: Tensor, offsets: Tensor,
                       align: object) -> StateMaps:
        """The maps :meth:`combine` combines: :meth:`state_maps`, aligned by offset when ``align`` and they
        are a grid (what the attention aggregator's per-state scores are computed on, too)."""
        states = self.state_maps(engine, features, logits)
        if align and states.stride is not None:
            states = replace(states, maps=align_maps(states.maps, offsets, states.stride))
        return states

    def calibration_score(self, logits: Tensor, labels: Tensor) -> tuple[float, float]:
        """How good predictions ``logits`` (N, *output) are against ``labels``: (quality in [0, 1], higher is
        better; mean negative log-likelihood, the tie-break) — what :func:`undiscard.fitting.calibration.calibrate`
        ranks states by."""
        raise NotImplementedError

    def state_maps(self, engine: "Engine", features: Tensor, logits: Tensor) -> StateMaps:
        """The maps to combine from N images' B states: native ``features`` (N, B, ...) and ``logits``
        (N, B, *output)."""
        raise NotImplementedError

    def finish(self, engine: "Engine", maps: Tensor, extra: Tensor | None) -> Tensor:
        """The output from combined maps (N, C, h, w) and extra parts (N, P, C) or None."""
        raise NotImplementedError

    def tally(self, num_classes: int, ignore_index: int | None = None) -> Tally:
        """A fresh counter of one result row of this task (:class:`~undiscard.metrics.tally.Tally`), for a
        model with ``num_classes`` classes; targets equal to ``ignore_index`` are not counted (where a task
        has such targets: a segmentation mask's unlabelled pixels)."""
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

    def calibration_score(self, logits: Tensor, labels: Tensor) -> tuple[float, float]:
        """(top-1 accuracy, mean NLL in float64) of (N, K) logits against (N,) labels."""
        return (int((logits.argmax(-1) == labels).sum()) / labels.shape[0],
                float(F.cross_entropy(logits.double(), labels)))

    def state_maps(self, engine: "Engine", features: Tensor, logits: Tensor) -> StateMaps:
        n, b = features.shape[:2]
        maps, extra = engine.split.to_maps(features.flatten(0, 1))
        stride = engine.feature_stride if engine.split.alignable else None
        return StateMaps(maps.unflatten(0, (n, b)), extra.unflatten(0, (n, b)) if extra is not None else None, stride)

    def finish(self, engine: "Engine", maps: Tensor, extra: Tensor | None) -> Tensor:
        return engine.split.head(engine.split.from_maps(maps, extra))

    def tally(self, num_classes: int, ignore_index: int | None = None) -> Tally:
        """Top-k hits of (N, K) logits against (N,) labels (every label counts: ``ignore_index`` is unused)."""
        return ClassificationTally()


_TASKS: NamedRegistry[Task] = NamedRegistry("task")
register_task = _TASKS.register  # @register_task(name): wrap(task=name)
__getattr__ = _TASKS.module_getattr("TASKS", __name__)  # TASKS: names
register_task("classification")(ClassificationTask)


def list_tasks() -> list[str]:
    """The registered task names, in registration order (``wrap(task=...)``)."""
    return list(_TASKS.names())


class AutoTask(ClassificationTask):
    """``wrap(task=None)``, the default: classification, unless the network's logits are (N, K, H, W) —
    then every call goes to the registered ``"segmentation"`` task (:class:`~undiscard.tasks.segmentation.SegmentationTask`),
    and a ``UserWarning`` says so once per model (pass ``task=`` to choose and silence it). Which one
    applies is read from the logits each call gets ((M, K) or (M, K, H, W) per state; :meth:`resolve`);
    the model is split at its output when that is (N, K, H, W) (:attr:`Task.at_output` None). The methods
    that read logits are dispatched by :data:`_BY_OUTPUT`, not forwarded one by one."""

    name = "auto"
    at_output = None

    def __init__(self) -> None:
        self.dense: Task | None = None  # the segmentation task, once a dense output was seen

    @property
    def resolved_name(self) -> str:
        return ClassificationTask.name if self.dense is None else self.dense.resolved_name

    def resolve(self, logits: Tensor | None, lead: int) -> Task | None:
        """The dense task for ``logits`` whose predictions are (K, H, W) after ``lead`` leading dims (created,
        and the warning given, the first time); None for classification. ``logits`` None: the task already
        resolved (the dense one once a dense output was seen)."""
        if logits is None or logits.dim() - lead != 3:
            return self.dense if logits is None else None
        if self.dense is None:
            self.dense = _TASKS.create("segmentation")
            warnings.warn("the network's output is (N, K, H, W): its states are searched and aggregated per pixel "
                          "as task='segmentation' (pass task= to choose)", UserWarning, stacklevel=3)
        return self.dense

    def __repr__(self) -> str:
        return f"AutoTask({self.dense!r})" if self.dense is not None else "AutoTask()"


# AutoTask's methods that depend on the output: method -> the leading dims of its ``logits`` argument before
# each prediction ((M, *output): 1; (N, B, *output): 2); None: a method without logits, for the task resolved so far
_BY_OUTPUT: dict[str, int | None] = {"state_uncertainty": 1, "calibration_score": 1, "entropy_weights": 2,
                                     "with_entropy": 2, "combine": 2, "combine_aligned": 2, "aligned_states": 2,
                                     "tally": None}


def _dispatched(name: str, lead: int | None):
    """``AutoTask.name``: the dense task's method when :meth:`AutoTask.resolve` finds one for the call's
    ``logits``, classification's otherwise."""
    signature = inspect.signature(getattr(Task, name))
    own = getattr(ClassificationTask, name)

    def method(self: AutoTask, *args, **kwargs):
        logits = signature.bind(self, *args, **kwargs).arguments["logits"] if lead is not None else None
        task = self.resolve(logits, lead or 0)
        return own(self, *args, **kwargs) if task is None else getattr(task, name)(*args, **kwargs)

    method.__name__, method.__qualname__, method.__doc__ = name, f"AutoTask.{name}", own.__doc__
    return method


for _name, _lead in _BY_OUTPUT.items():
    setattr(AutoTask, _name, _dispatched(_name, _lead))


def get_task(task: str | Task | None) -> Task:
    """The task named ``task`` (or ``task`` itself when it is one; None: a fresh :class:`AutoTask`); an
    unknown name is one :class:`~undiscard.errors.UndiscardError` listing the registered tasks."""
    if task is None:
        return AutoTask()
    return task if isinstance(task, Task) else _TASKS.create(task)
