"""``wrap(net, budget=...)``: the model users call.

``Undiscard`` holds a private deep copy of ``net`` (``net`` itself is never modified) whose unit layers
follow phase plans (:mod:`undiscard.execution`). On the first call at a budget above 1 for an input
shape it discovers the units, splits the model into features and head (:mod:`undiscard.split`), cuts
the features into a chain and counts FLOPs (:class:`undiscard.engine.Engine`); pass ``example_input=``
(or call ``prepare(x)``) to do that eagerly. ``units``, ``search_units``, ``num_states`` and
``split_method`` are known from then on, and an error before.

A forward call searches ``budget`` states per image (:mod:`undiscard.search`), aligns and aggregates
their feature maps (:mod:`undiscard.aggregate`) and applies the head. ``budget=1`` runs the copied
network itself, before any setup, and returns its output (the logits selected from a dict or tuple by
:mod:`undiscard.outputs`, or ``output=``), bit for bit. A budget larger than the number of states of
the searched units is an error (it would silently cost more than it can use otherwise).

What a wrapped model does with what users try on it:

- **Train mode.** The backbone always runs in eval mode: ``wrap`` warns when ``net`` is in train mode and
  puts its private copy in eval; ``wrapped.train()`` switches only the aggregator (its dropout).
- **Copies.** ``copy.deepcopy``, ``pickle`` and ``torch.save``/``torch.load(weights_only=False)`` work;
  the copy rebuilds its per-shape engines on its first call (same results).
- **dtype and device.** Engines are kept per input shape, dtype and device; ``.half()``, ``.to(dtype)``,
  ``.to(device)`` move the network and the aggregator and drop the engines. float16/bfloat16 models run.
  An input the network cannot take is one :class:`PhaseError` naming the cause: a dtype or device
  other than the model's, a channel count other than its first convolution's, or a size below the
  smallest it runs on.
- **A batch of 0** returns the model's own (0, K) output at cost 0; ``search`` returns ``[]``.
- **NaN/inf inputs.** Budget 1 returns ``net(x)`` as it is; above 1 a ``UserWarning`` says how many images
  are not finite; their outputs are not finite either, the other images are unaffected.
- **Threads.** Phase plans live in a ``ContextVar`` and engines are built under a lock, so threads may
  call one model at once (results equal serial calls); ``last_cost`` is per thread: the cost of the
  calling thread's last call.
- **torch.compile** works (``backend="eager"`` and inductor): setup and search are excluded from
  compilation (``torch.compiler.disable``: a data-dependent search recompiles on every step), so it
  buys what compiling the network buys at budget 1 and at most the aggregation and head above it.
"""
from __future__ import annotations

import copy
import itertools
import threading
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .aggregate import AGGREGATES, align_maps, state_weights, weighted_sum
from .attention import AggregatorFileError, AttentionAggregator, load_aggregator
from .chain import build_chain
from .discovery import Unit, discover
from .engine import Engine
from .errors import PhaseError, UndiscardError, UnsupportedLayerError
from .execution import install_phased_layers, phase_plan
from .search import CRITERIA, Candidate, best_first, score_states, state_offset
from .outputs import OutputSelector, check_selector, select_output
from .split import from_map, get_split, to_map

__all__ = ["Undiscard", "Candidates", "wrap"]

UnitSelector = Sequence[int | str] | None


class Candidates(list):
    """Per image, the list of :class:`~undiscard.search.Candidate` chosen in selection order; knows the
    engine (input shape) it was searched with, and caches the stacked tensors of its candidates."""

    engine: Engine | None = None
    stacked: tuple[Tensor, Tensor, Tensor] | None = None
    empty: Tensor | None = None  # for a batch of 0 images: the model's (0, K) output


def _check_net(net: object) -> None:
    """``wrap`` takes a module: say so in one line for anything else (None, a model name, a class)."""
    if isinstance(net, nn.Module):
        if isinstance(net, Undiscard):
            raise UndiscardError("net is already wrapped: wrap the original network (wrapped.net is a copy of it)")
        return
    if isinstance(net, str):
        raise UndiscardError(f"wrap() needs a torch.nn.Module, got the string {net!r}: load it first, e.g. "
                             f"undiscard.models.load_model({net!r}).model")
    if isinstance(net, type) and issubclass(net, nn.Module):
        raise UndiscardError(f"wrap() needs a torch.nn.Module instance, got the class {net.__name__}: "
                             f"pass {net.__name__}(...)")
    raise UndiscardError(f"wrap() needs a torch.nn.Module, got {type(net).__name__}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _default_search(units: list[Unit]) -> list[int]:
    spatial = [i for i, u in enumerate(units) if u.spatial]
    return spatial if len(spatial) < 3 else spatial[1:-1]


def _select(units: list[Unit], selector: UnitSelector) -> list[int]:
    if selector is None:
        return _default_search(units)
    if isinstance(selector, (str, int)):
        selector = [selector]
    chosen: list[int] = []
    names = [u.name for u in units]
    for s in selector:
        if isinstance(s, bool):
            raise PhaseError(f"unit selector must be an index or a name, got {s!r}")
        if isinstance(s, int):
            if not -len(units) <= s < len(units):
                raise PhaseError(f"unit index {s} out of range: the model has {len(units)} units ({', '.join(names)})")
            idx = s % len(units)
        elif s in names:
            idx = names.index(s)
        else:
            raise PhaseError(f"unknown unit {s!r}: the model's units are {', '.join(names) or '(none)'}")
        if idx in chosen:
            raise PhaseError(f"unit {names[idx]!r} selected twice")
        chosen.append(idx)
    return sorted(chosen)


class Undiscard(nn.Module):
    """A classifier that searches discarded phases at test time (see :func:`wrap`)."""

    def __init__(self, net: nn.Module, budget: int = 8, criterion: str = "entropy", aggregate: str = "entropy",
                 align: bool = True, units: UnitSelector = None, *,
                 features: Callable[[nn.Module, Tensor], Tensor] | None = None,
                 head: Callable[[nn.Module, Tensor], Tensor] | None = None,
                 layout: str = "nchw", strict: bool = False, chunk_size: int = 256, seed: int = 0,
                 aggregator: AttentionAggregator | str | Path | None = None,
                 example_input: Tensor | None = None, output: OutputSelector = None):
        super().__init__()
        _check_net(net)
        self._units: list[Unit] | None = None
        self._searched: list[int] | None = None
        self.budget = budget
        if criterion not in CRITERIA:
            raise UndiscardError(f"unknown criterion {criterion!r}: expected one of {', '.join(CRITERIA)}")
        if aggregate not in AGGREGATES:
            raise UndiscardError(f"unknown aggregate {aggregate!r}: expected one of {', '.join(AGGREGATES)}")
        if chunk_size < 1:
            raise UndiscardError(f"chunk_size must be >= 1, got {chunk_size}")
        self.net = copy.deepcopy(net)
        if any(m.training for m in net.modules()):
            # a backbone in train mode would use each batch's statistics (BatchNorm) and dropout, and update
            # running statistics on every call: a test-time method runs it in eval mode, always
            warnings.warn(f"net is in train mode; undiscard runs a copy of it in eval mode ({type(net).__name__} "
                          f"itself is not changed)", UserWarning, stacklevel=3)
        self.net.eval()
        self.aggregator: AttentionAggregator | None = None
        self._aggregator_units: list[str] | None = None  # the units a loaded aggregator was trained for
        if isinstance(aggregator, (str, Path)):
            self.aggregator, info = load_aggregator(aggregator)
            self._aggregator_units = info.units
            if info.align != align:
                warnings.warn(f"the aggregator in {aggregator} was trained with align={info.align}, used with "
                              f"align={align}", UserWarning, stacklevel=3)
        elif aggregator is not None:
            if not isinstance(aggregator, AttentionAggregator):
                raise UndiscardError(f"aggregator must be an AttentionAggregator or a file path, got "
                                     f"{type(aggregator).__name__}")
            self.aggregator = aggregator
        self.criterion = criterion
        self.aggregate = aggregate
        self.align = align
        self.unit_selector = units
        self.strict = strict
        self.chunk_size = chunk_size
        self.seed = seed
        self._split_override = (features, head, layout)
        self.output = check_selector(output)  # which part of the net's output are the logits
        self._engines: dict[tuple, Engine] = {}
        self._lock = threading.Lock()
        self._cost = threading.local()  # last_cost/last_cost_ideal, per thread
        self.train(False)  # inference: the aggregator's dropout is off unless train() is called
        if example_input is not None:
            self.prepare(example_input)

    # --- state: cost, copies, dtype/device, mode ----------------------------------------------
    @property
    def last_cost(self) -> float:
        """Mean cost per image of this thread's last call, in baseline forwards (FLOPs counted; 0 for a
        batch of 0). Kept per thread: threads sharing one model each read the cost of their own call."""
        return getattr(self._cost, "cost", 0.0)

    @last_cost.setter
    def last_cost(self, value: float) -> None:
        self._cost.cost = value

    @property
    def last_cost_ideal(self) -> float:
        """Like ``last_cost``, had every expansion been recomputed only from its unit on."""
        return getattr(self._cost, "ideal", 0.0)

    @last_cost_ideal.setter
    def last_cost_ideal(self, value: float) -> None:
        self._cost.ideal = value

    def __getstate__(self) -> dict:
        """``copy.deepcopy``, ``pickle`` and ``torch.save``: everything but the engines, the lock and the
        per-thread costs. Engines hold closures over this network (per input shape); a copy rebuilds
        them on its first call per shape (units, split and FLOP counts are found again, same results)."""
        state = super().__getstate__()
        state["_engines"] = {}
        state.pop("_lock", None)
        state.pop("_cost", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._lock = threading.Lock()
        self._cost = threading.local()

    def _apply(self, fn, recurse: bool = True):
        """``.to()``, ``.half()``, ``.double()``, ``.cuda()`` move the network and the aggregator; the engines,
        built for the old dtype and device, are dropped and rebuilt on the next call."""
        out = super()._apply(fn, recurse)
        with self._lock:
            self._engines.clear()
        return out

    def train(self, mode: bool = True) -> "Undiscard":
        """Set the mode of the aggregator (its attention dropout) and of the wrapper. The backbone
        ``self.net`` stays in eval mode: undiscard is a test-time method, and a backbone in train mode would
        normalise with batch statistics, update its running statistics and drop activations."""
        if not isinstance(mode, bool):
            raise UndiscardError(f"train(mode) needs a bool, got {mode!r}")
        self.training = mode
        for child in self.children():
            if child is not self.net:
                child.train(mode)
        return self

    # --- setup ---------------------------------------------------------------------------------
    @property
    def budget(self) -> int:
        """States searched per image; may be changed between calls (the setup is reused)."""
        return self._budget

    @budget.setter
    def budget(self, value: int) -> None:
        self._budget = self._check_budget(value)

    def _not_set_up(self, what: str) -> UndiscardError:
        return UndiscardError(f"{what} is known once the model is set up: after the first call at a budget above 1, "
                              "model.prepare(x), or wrap(..., example_input=x)")

    @property
    def units(self) -> list[Unit]:
        """All units of the model (after setup: ``prepare``, ``example_input=`` or a call at budget > 1)."""
        if self._units is None:
            raise self._not_set_up("units")
        return self._units

    @property
    def search_units(self) -> list[Unit]:
        """The units searched, in execution order (after setup, like :attr:`units`)."""
        if self._units is None:
            raise self._not_set_up("search_units")
        return [self._units[i] for i in self._searched or []]

    @property
    def split_method(self) -> str:
        """How the model was split into features and head: ``"features=/head="``, ``"registry"``,
        ``"timm"``, ``"graph capture"`` or ``"hook fallback"`` (see :mod:`undiscard.split`; after setup)."""
        if not self._engines:
            raise self._not_set_up("split_method")
        return next(iter(self._engines.values())).split.method

    @property
    def num_states(self) -> int:
        """Number of states of the searched units (Π R_l²; after setup, like :attr:`units`)."""
        if self._units is None:
            raise self._not_set_up("num_states")
        total = 1
        for u in self.search_units:
            total *= u.num_phases
        return total

    @torch.compiler.disable  # setup (tracing, deep copies, FLOP counting) always runs eagerly
    def prepare(self, x: Tensor) -> Engine:
        """Discover units and build the engine for inputs shaped like ``x`` (done on first call otherwise)."""
        if not isinstance(x, Tensor) or x.dim() < 3:
            raise PhaseError(f"expected a batched image tensor (N, C, H, W), got "
                             f"{type(x).__name__ if not isinstance(x, Tensor) else tuple(x.shape)}")
        if x.shape[0] == 0:
            raise PhaseError("prepare() needs at least one example image, got a batch of 0")
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        engine = self._engines.get(key)
        if engine is not None:
            return engine
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                # setup traces tensor versions, which inference tensors lack: build outside inference mode
                with torch.inference_mode(False):
                    engine = self._build(x[:1].clone())
                self._engines[key] = engine
        return engine

    def _build(self, x: Tensor) -> Engine:
        try:
            report = discover(self.net, x)
        except UndiscardError:
            raise
        except Exception as err:  # the network itself cannot run on this input
            raise self._input_error(x, err) from None
        if report.unsupported:
            msg = f"strided layers left at phase 0: {report.describe_unsupported()}"
            if self.strict:
                raise UnsupportedLayerError(msg)
            warnings.warn(msg, UserWarning, stacklevel=3)
        if self._units is None:
            searched = _select(report.units, self.unit_selector)
            states = 1
            for i in searched:
                states *= report.units[i].num_phases
            if self.budget > states:
                raise PhaseError(f"budget {self.budget} exceeds the {states} states of the searched units "
                                 f"({', '.join(report.units[i].name for i in searched) or 'none'})")
            install_phased_layers(self.net, [u.layers for u in report.units], copy_net=False)
            self._units, self._searched = report.units, searched
        elif [u.layers for u in report.units] != [u.layers for u in self._units]:
            raise UndiscardError("this input size changes the model's subsampling units; wrap the model per size")
        features, head, layout = self._split_override
        split = get_split(self.net, x, features, head, layout, output=self.output)
        chain = build_chain(split, x, self.net)
        engine = Engine(self.net, split, chain, self._units, list(self._searched or []))
        engine.measure(x)
        if self._needs_aggregator():
            self._setup_aggregator(engine, x)
        return engine

    def _needs_aggregator(self) -> bool:
        return self.aggregate == "attention" or self.criterion == "learned" or self.aggregator is not None

    def _setup_aggregator(self, engine: Engine, x: Tensor) -> None:
        """Check a given aggregator against the searched units; make an untrained one if none was given."""
        names = [u.name for u in self.search_units]
        if self._aggregator_units is not None and self._aggregator_units != names:
            raise AggregatorFileError(f"the aggregator was trained for units {', '.join(self._aggregator_units)} "
                                      f"but {', '.join(names) or 'none'} are searched: pass the same units=")
        offsets = 1
        for u in self.search_units:
            if u.spatial:
                offsets *= u.rate
        with torch.no_grad(), phase_plan(None):
            maps, _, _ = self._to_maps(engine, engine.split.features(x))
        channels = maps.shape[1]
        if self.aggregator is None:
            warnings.warn("aggregate='attention'/criterion='learned' with an untrained attention aggregator: it "
                          "aggregates like 'mean' and ranks states by its random initial weights (seeded) until "
                          "trained (undiscard train-aggregator)", UserWarning, stacklevel=4)
            with torch.random.fork_rng(devices=[]):  # seeded, and the caller's RNG stream is left alone
                torch.manual_seed(self.seed)
                self.aggregator = AttentionAggregator(channels, offsets).eval()
        elif (self.aggregator.channels, self.aggregator.offsets) != (channels, offsets):
            raise AggregatorFileError(
                f"the aggregator expects {self.aggregator.channels} channels and {self.aggregator.offsets} offsets "
                f"per axis but this model gives {channels} and {offsets}: it was trained for another model or units")
        self.aggregator.to(device=x.device)

    def _model_tensor(self) -> Tensor | None:
        """The network's first floating-point parameter or buffer (its dtype and device), if any."""
        return next((t for t in itertools.chain(self.net.parameters(), self.net.buffers()) if t.is_floating_point()),
                    None)

    def _input_error(self, x: Tensor, err: BaseException) -> PhaseError:
        """One clear error for an input (N, C, H, W) the network's own forward fails on, checked in order: a
        dtype or device other than the model's, a channel count other than its first convolution's, an
        input smaller than the model needs (found by running it on blank square inputs of 1, 2, 4, ...
        512 px, then bisecting: error path only), or else the model's own error (its first line)."""
        first, what = _first_line(err), f"the model cannot run on input of shape {tuple(x.shape[1:])}"
        ref = self._model_tensor()
        if ref is not None and x.dtype != ref.dtype:
            return PhaseError(f"{what}: input dtype {x.dtype} does not match the model's {ref.dtype}; convert the "
                              f"input (x.to({ref.dtype})) or the model (model.to({x.dtype})) ({first})")
        if ref is not None and x.device != ref.device:
            return PhaseError(f"{what}: input is on {x.device} but the model is on {ref.device}; move one of them "
                              f"({first})")
        conv = next(((n, m) for n, m in self.net.named_modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
        if conv is not None and x.shape[1] != conv[1].in_channels:
            c = x.shape[1]
            return PhaseError(f"{what}: it has {c} channel{'s' if c != 1 else ''} but the model's first "
                              f"convolution ({conv[0]}) expects {conv[1].in_channels} ({first})")
        sizes = self._smallest_size(x)
        h, w = x.shape[-2:]
        if sizes is not None and sizes[1] > min(h, w):
            return PhaseError(f"{what}: {h}x{w} pixels is too small; the smallest square input the model runs on "
                              f"is {sizes[1]}x{sizes[1]} ({first})")
        if sizes is not None:
            return PhaseError(f"{what}: the model runs on {sizes[0]}x{sizes[0]} inputs but not on {h}x{w}; does it "
                              f"need a fixed input size? ({first})")
        return PhaseError(f"{what}: {first}")

    def _smallest_size(self, x: Tensor, largest: int = 512) -> tuple[int, int] | None:
        """Square sizes (pixels) the network runs on, with x's channels, dtype and device: the first power of
        two it runs on, and that bisected down (the smallest size it runs on if that is monotone; each
        answer is a size it did run on); None if it runs on none up to ``largest``."""

        def runs(size: int) -> bool:
            try:
                with torch.no_grad(), phase_plan(None):
                    self.net(x.new_zeros((1, x.shape[1], size, size)))
                return True
            except Exception:
                return False

        size = 1
        while size <= largest and not runs(size):
            size *= 2
        if size > largest:
            return None
        power, low = size, size // 2  # the previous power of two failed (or is 0)
        while size - low > 1:
            mid = (low + size) // 2
            low, size = (low, mid) if runs(mid) else (mid, size)
        return power, size

    # --- running -------------------------------------------------------------------------------
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise PhaseError(f"expected an image batch of shape (N, C, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")

    def _empty_output(self, x: Tensor) -> Tensor:
        """The output for a batch of 0 images, at no cost: ``net(x)`` itself, or, for a network whose
        forward cannot take 0 images (``x.view(x.size(0), -1)``), its output on one blank image, sliced
        to 0 rows (same shape per image, dtype and device)."""
        self.last_cost = self.last_cost_ideal = 0.0
        with phase_plan(None):
            try:
                return select_output(self.net(x), self.output)
            except UndiscardError:
                raise
            except Exception:
                pass
            try:
                out = self.net(x.new_zeros((1, *x.shape[1:])))
            except Exception as err:
                raise self._input_error(x, err) from None
        return select_output(out, self.output)[:0]

    def _warn_not_finite(self, x: Tensor) -> None:
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
            warnings.warn(f"{bad} of {x.shape[0]} input images have NaN or infinite values: the search runs, but "
                          "their outputs will not be finite either", UserWarning, stacklevel=3)

    def forward(self, x: Tensor, budget: int | None = None) -> Tensor:
        """Logits (N, K): aggregated over ``budget`` searched states (default: the model's own; a per-call
        budget leaves the model's setting alone); ``budget=1`` is ``net(x)`` exactly."""
        self._check_input(x)
        budget = self.budget if budget is None else self._check_budget(budget)
        if x.shape[0] == 0:
            return self._empty_output(x)
        if budget == 1:  # the network itself, before any setup (discovery, split) that could fail
            try:
                with phase_plan(None):
                    out = self.net(x)  # in the caller's grad mode
            except Exception as err:
                raise self._input_error(x, err) from None
            self.last_cost = self.last_cost_ideal = 1.0
            return select_output(out, self.output)
        engine = self.prepare(x)
        return self._aggregate(engine, self.candidates(x, budget))

    def candidates(self, x: Tensor, budget: int | None = None) -> "Candidates":
        """Per image, the searched candidates (state, native features, logits) in selection order.

        The search is incremental: the first b candidates of a budget-B search are exactly those of a
        budget-b search, so one search serves every smaller budget (:meth:`aggregate_candidates`,
        :meth:`candidates_cost`).
        """
        self._check_input(x)
        budget = self.budget if budget is None else self._check_budget(budget)
        if x.shape[0] == 0:
            cands = Candidates()
            cands.empty = self._empty_output(x)
            return cands
        if budget > 1:
            self._warn_not_finite(x)
        engine = self.prepare(x)
        engine.reset_cost()
        cands = Candidates(self._search(engine, x, budget))
        cands.engine = engine
        self._record_cost(engine, x.shape[0])
        return cands

    def check_budget(self, budget: int) -> int:
        """``budget`` if it is a positive integer within the searched units' states (known after the first
        call or ``prepare``); otherwise a one-line :class:`~undiscard.errors.PhaseError`."""
        return self._check_budget(budget)

    def _check_budget(self, budget: int) -> int:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise PhaseError(f"budget must be a positive integer, got {budget!r}")
        if self._units is not None and budget > self.num_states:
            raise PhaseError(f"budget {budget} exceeds the {self.num_states} states of the searched units "
                             f"({', '.join(u.name for u in self.search_units) or 'none'})")
        return budget

    def aggregate_candidates(self, cands: "Candidates", budget: int | None = None,
                             aggregate: str | None = None, align: bool | None = None) -> Tensor:
        """Logits (N, K) from the first ``budget`` candidates of each image (default: all of them), with
        ``aggregate``/``align`` overriding the model's own settings for this call."""
        if len(cands) == 0 and getattr(cands, "empty", None) is not None:
            return cands.empty
        engine = self._engine_for(cands)
        if aggregate is not None and aggregate not in AGGREGATES:
            raise UndiscardError(f"unknown aggregate {aggregate!r}: expected one of {', '.join(AGGREGATES)}")
        if budget is not None:
            self._check_budget(budget)
        lengths = {len(per) for per in cands}
        if budget is not None and len(lengths) > 1:  # ragged: images found different numbers of states
            cands, budget = [per[:budget] for per in cands], None
        if (budget or max(lengths)) == 1:  # budget 1: the original model's logits (its own head output)
            return torch.stack([per[0].logits for per in cands])
        return self._aggregate(engine, cands, aggregate, align, budget)

    def candidates_cost(self, cands: "Candidates", budget: int | None = None) -> tuple[float, float]:
        """Mean cost per image (measured, ideal) in baseline forwards of finding the first ``budget``
        candidates: what ``last_cost``/``last_cost_ideal`` would be after a search at that budget."""
        if len(cands) == 0:
            return 0.0, 0.0
        engine = self._engine_for(cands)
        assert engine.flops is not None
        if budget is not None:
            self._check_budget(budget)
        base = engine.flops.baseline
        rates = engine.rates()
        spent = ideal = 0.0
        for per in cands:
            depths = per[:budget][-1].expansions if budget is not None else per[-1].expansions
            spent += engine.flops.root + sum(engine.expansion_flops(d) for d in depths)
            ideal += base + sum((rates[d] ** 2 - 1) * engine.flops.tail[d] for d in depths)
        n = len(cands) * base
        return (spent / n, ideal / n) if n else (0.0, 0.0)

    def _engine_for(self, cands: "Candidates") -> Engine:
        if not cands or not cands[0]:
            raise PhaseError("no candidates given")
        engine = getattr(cands, "engine", None)
        if engine is None:
            if len(self._engines) != 1:
                raise PhaseError("pass the candidates as returned by model.candidates(x)")
            engine = next(iter(self._engines.values()))
        return engine

    def search(self, x: Tensor) -> list[list[tuple[int, ...]]]:
        """Per image, the chosen states in selection order (the first is the original model)."""
        return [[c.state for c in per_image] for per_image in self.candidates(x)]

    def run_state(self, x: Tensor, state: Sequence[int]) -> Tensor:
        """Logits of the network with one fixed state (one phase per searched unit) for every image."""
        self._check_input(x)
        if x.shape[0] == 0:
            return self._empty_output(x)
        engine = self.prepare(x)
        state = tuple(state)
        units = self.search_units
        if len(state) != len(units):
            raise PhaseError(f"state has {len(state)} phases but {len(units)} units are searched "
                             f"({', '.join(u.name for u in units) or 'none'})")
        phases: dict[int, Tensor] = {}
        for s, u, idx in zip(state, units, self._searched or []):
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < u.num_phases:
                raise PhaseError(f"phase {s!r} out of range for unit {u.name} (rate {u.rate}): "
                                 f"expected 0 <= phase < {u.num_phases}")
            if s:
                phases[idx] = torch.full((x.shape[0],), s, dtype=torch.long, device=x.device)
        return select_output(engine.run_state(x, phases), self.output)

    @torch.compiler.disable  # a data-dependent heap search: batch sizes change every step, nothing to compile
    def _search(self, engine: Engine, x: Tensor, budget: int | None = None,
                scorer: Callable[..., list[float]] | None = None) -> list[list[Candidate]]:
        """Best-first search. ``scorer(images, attention_scores, logits, states, depth)`` overrides the
        criterion (training uses it); it gets the aggregator's per-state scores, not the features."""
        rates = engine.rates()
        spatial = [self.units[u].spatial for u in engine.searched]
        learned = self.criterion == "learned"

        def score(images: list[int], feats: Tensor, logits: Tensor, states: list[tuple[int, ...]],
                  depth: int) -> list[float]:
            if scorer is not None or learned:
                attn = self._attention_scores(engine, anchors[images], feats, states)
                if scorer is not None:
                    return scorer(images, attn, logits, states, depth)
                return (-attn.double()).tolist()
            return score_states(self.criterion, logits, states, depth, rates, spatial, self.seed)

        def expand(depth: int, caches: Tensor, prefix: Tensor):
            e = engine.expand(depth, caches, prefix)
            return e.features, e.logits, e.caches

        with torch.no_grad():
            feats, logits, cache = engine.root(x)
            anchors = self._to_maps(engine, feats)[0] if (learned or scorer is not None) else feats
            return best_first(feats, logits, cache, rates, self.budget if budget is None else budget, expand, score,
                              self.chunk_size)

    def _attention_scores(self, engine: Engine, anchors: Tensor, feats: Tensor,
                          states: list[tuple[int, ...]]) -> Tensor:
        """The aggregator's per-state score (higher = more attention) for M rows of native
        features with their states, against their images' original maps ``anchors`` (M, C, h, w)."""
        assert self.aggregator is not None
        maps, _, gridded = self._to_maps(engine, feats)
        offsets = self._offsets(engine, [states], feats.device).transpose(0, 1)  # (M, 1, 2)
        maps = maps[:, None]
        if self.align and gridded:
            maps = align_maps(maps, offsets, self._feature_stride(engine))
        return self.aggregator.state_scores(maps, offsets, anchors)[:, 0]

    def _to_maps(self, engine: Engine, feats: Tensor) -> tuple[Tensor, Tensor | None, bool]:
        """(M, C, h, w) maps of M native feature tensors, their prefix tokens, and whether the grid is real."""
        layout = self._layout(engine, feats.dim() + 1)
        grid = self._feature_grid()
        maps, extra = to_map(feats, layout, grid)
        # only real grids are aligned: NCHW/NHWC maps, and token sequences whose grid is known
        gridded = layout in ("nchw", "nhwc") or (layout == "tokens" and grid is not None
                                                 and tuple(maps.shape[-2:]) == tuple(grid))
        return maps, extra, gridded and maps.shape[-1] * maps.shape[-2] > 1

    @staticmethod
    def _layout(engine: Engine, dims: int) -> str:
        """The split's layout, refined by the (N, B, ...) stacked features' number of dims."""
        layout = engine.split.layout
        if layout == "nchw" and dims == 4:  # (N, B, L, C): a token sequence
            return "tokens"
        if layout == "nchw" and dims == 3:  # (N, B, C): a vector
            return "vector"
        return layout

    def _offsets(self, engine: Engine, cands_states: list[list[tuple[int, ...]]], device: torch.device) -> Tensor:
        """(N, B, 2) offsets (dy, dx) of the states, in pixels of the first searched unit's input."""
        rates = engine.rates()
        spatial = [self.units[u].spatial for u in engine.searched]
        return torch.tensor([[state_offset(s, rates, spatial) for s in per] for per in cands_states],
                            dtype=torch.long, device=device)

    def _stack(self, engine: Engine, cands: list[list[Candidate]]) -> tuple[Tensor, Tensor, Tensor]:
        """Features (N, B, ...), logits (N, B, K) and offsets (N, B, 2) of the candidates; cached on a
        :class:`Candidates` so that every budget prefix and aggregation of one search stacks once."""
        cached = getattr(cands, "stacked", None)
        if cached is not None:
            return cached
        feats = torch.stack([torch.stack([c.features for c in per]) for per in cands])  # (N, B, ...)
        logits = torch.stack([torch.stack([c.logits for c in per]) for per in cands])  # (N, B, K)
        offsets = self._offsets(engine, [[c.state for c in per] for per in cands], feats.device)
        if isinstance(cands, Candidates):
            cands.stacked = (feats, logits, offsets)
        return feats, logits, offsets

    def _aggregate(self, engine: Engine, cands: list[list[Candidate]], aggregate: str | None = None,
                   align: bool | None = None, budget: int | None = None) -> Tensor:
        aggregate = self.aggregate if aggregate is None else aggregate
        align = self.align if align is None else align
        feats, logits, offsets = self._stack(engine, cands)
        if budget is not None:
            feats, logits, offsets = feats[:, :budget], logits[:, :budget], offsets[:, :budget]
        n, b = feats.shape[:2]
        layout = self._layout(engine, feats.dim())
        maps, extra, gridded = self._to_maps(engine, feats.flatten(0, 1))
        maps = maps.unflatten(0, (n, b))
        if align and gridded:
            maps = align_maps(maps, offsets, self._feature_stride(engine))
        if aggregate == "attention":
            if self.aggregator is None:
                raise UndiscardError("aggregate='attention' needs an aggregator: wrap(..., aggregator=FILE) "
                                     "(undiscard train-aggregator) or wrap(..., aggregate='attention')")
            agg, attn = self.aggregator(maps, offsets)
            weights = attn.flatten(2).mean(-1)  # prefix tokens: the location-averaged attention
            if extra is not None:
                extra_b = extra.unflatten(0, (n, b))
                mean_x = weighted_sum(extra_b, state_weights(logits, "mean"))
                scale = self.aggregator.scale.to(extra_b.dtype)
                agg_extra = mean_x + scale * (weighted_sum(extra_b, weights) - mean_x)
            else:
                agg_extra = None
        else:
            weights = state_weights(logits, aggregate)
            agg = weighted_sum(maps, weights)
            agg_extra = weighted_sum(extra.unflatten(0, (n, b)), weights) if extra is not None else None
        return engine.split.head(from_map(agg, agg_extra, layout))

    def _feature_grid(self) -> tuple[int, int] | None:
        spatial = [u for u in self.units if u.spatial]
        return spatial[-1].out_size if spatial else None

    def _feature_stride(self, engine: Engine) -> int:
        """Total stride from the first searched unit's input grid to the feature map."""
        if not engine.searched:
            return 1
        first = engine.searched[0]
        stride = 1
        for u in self.units[first:]:
            if u.spatial:
                stride *= u.rate
        return stride

    def _record_cost(self, engine: Engine, n: int) -> None:
        assert engine.flops is not None
        base = engine.flops.baseline * n
        self.last_cost = engine.spent / base if base else 0.0
        self.last_cost_ideal = engine.spent_ideal / base if base else 0.0

    def extra_repr(self) -> str:
        return (f"budget={self.budget}, criterion={self.criterion!r}, aggregate={self.aggregate!r}, "
                f"align={self.align}")


def wrap(net: nn.Module, budget: int = 8, criterion: str = "entropy", aggregate: str = "entropy",
         align: bool = True, units: UnitSelector = None, **kwargs) -> Undiscard:
    """Wrap a classifier so that it searches ``budget`` states of its subsampling units per image.

    Args:
        net: any classifier mapping (N, C, H, W) images to (N, K) logits. Not modified.
        budget: states per image (1 = the original model, bit for bit).
        criterion: search order, one of ``entropy``, ``random`` (seeded), ``offset``, ``learned``
            (states with the largest attention logit of the attention aggregator first).
        aggregate: ``mean`` or ``entropy`` weighting of the states' feature maps, or ``attention`` (the
            learned aggregator; untrained it equals ``mean``).
        align: shift each state's feature map by its offset before aggregating.
        units: indices or names of the units to search (default: all spatial units but the first and
            the last; all of them when there are fewer than three).
        **kwargs: ``aggregator`` (an AttentionAggregator or a file from ``undiscard train-aggregator``),
            ``features``/``head`` (callables ``(model, x)``) to split an unknown model, ``layout``,
            ``strict`` (raise on unsupported strided layers), ``chunk_size`` (max samples per expansion
            pass), ``seed`` (random criterion), ``example_input`` (set up eagerly), ``output`` (which
            part of a dict/tuple output are the logits: a key, an index or a callable; see
            :mod:`undiscard.outputs`).
    """
    return Undiscard(net, budget, criterion, aggregate, align, units, **kwargs)
