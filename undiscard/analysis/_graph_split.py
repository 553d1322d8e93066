"""Splitting any traceable model into features and head by graph capture (``torch.fx``).

The model is traced with ``torch.fx.symbolic_trace`` semantics by a tracer that keeps undiscard's
phase-aware layers (and every ``torch.nn`` built-in) as leaf calls: tracing *into* a phased layer would
bake its phase-0 forward into the graph. The graph is run once on the example input to learn every
value's shape, and then cut in two:

- **features** end at the *last spatial activation* whose value flows to the logits: the last 4-D
  (N, C, h, w) tensor with h*w > 1 before the model pools or flattens it (global pooling, ``mean`` over
  (2, 3), ``flatten``, ``view``/``reshape`` to 2-D, adaptive pooling to 1x1, a conv with a full-size
  kernel, ...). A map reached through ``permute(0, 2, 3, 1)`` is used as NHWC; any other permutation or
  reshape of the map is not a cut.
- **head** is *the rest of the graph*, exactly as the model wrote it — views, flattens, functional
  calls, dropout, Linear layers, a 1x1-conv classifier after the cut, and the selection of the logits
  from a dict or tuple output (:mod:`undiscard.analysis.outputs`) — so ``head(features(x))`` is ``model(x)``.
  The head may read only the feature map (and parameters, buffers and constants): a head that also
  reads the input or an earlier activation (a skip, an auxiliary branch that feeds the logits) is not a
  cut, and the previous spatial activation is tried instead. The one exception is the batch size: a
  ``x.size(0)``/``x.shape[0]`` taken from an earlier tensor (``x.view(b, -1)`` with ``b`` read at the
  top of ``forward``) is read from the feature map instead; every row of every tensor is one image.

The features are further cut into stages (``torch.fx.GraphModule`` pieces) at the latest point before
each phased layer where one tensor is all that flows on, so the search can cache activations there
and recompute only the network after a unit (:mod:`undiscard.analysis._chain` refines the stages further).

What fx cannot trace (Python control flow on tensor values or shapes, ``len(x)``, iteration over a
tensor, ``*args`` forwards) raises :class:`GraphSplitError`, and :mod:`undiscard.analysis.split` falls back to
:mod:`undiscard.analysis._hook_split`. ``torch.export`` is not used: it inlines every module, phased layers
included, so its graph cannot follow a phase plan.

Aligned aggregation with flatten + fully-connected heads: such a head is not translation-invariant —
each input of its Linear belongs to one (channel, row, column) of the feature map. Alignment (docs/semantics.md,
"Alignment") shifts each state's map back by its offset before averaging, so the aggregated map has every
state's features at the positions the original model computes them at: the FC sees the grid it was
trained on, and the all-zero state alone gives the original logits. Without alignment a state's map is
used as computed, i.e. translated, which a pooled head forgives but a flatten + FC head does not.

fx patches ``torch.nn.Module.__call__`` and ``__getattr__`` process-wide while it traces; the tracer
lets calls from other threads pass through unchanged, and undiscard runs one trace at a time.
"""
from __future__ import annotations

import inspect
import operator
import threading
from typing import Any, Iterable

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..errors import UndiscardError
from ..layers import get_adapter
from ..layers.plans import is_phased
from ._split import Split
from .outputs import OutputSelector, select_output

__all__ = ["GraphSplitError", "graph_split", "trace"]

_TRACE_LOCK = threading.Lock()
_PARALLEL = (nn.DataParallel, nn.parallel.DistributedDataParallel)
_PERMUTES = {"permute", "transpose", "swapaxes", "swapdims", "movedim"}
_RESHAPES = {"view", "reshape", "flatten", "contiguous", "unflatten", "view_as", "reshape_as"}
_NCHW_MODULES = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveMaxPool2d, nn.ConvTranspose2d, nn.InstanceNorm2d, nn.GroupNorm, nn.Upsample)


class GraphSplitError(UndiscardError):
    """The model's graph cannot be captured or cut (the reason is the message)."""


class _LeafTracer(fx.Tracer):
    """fx tracer whose leaves are undiscard's phase-aware layers, layers with a phase adapter, and the
    ``torch.nn`` built-ins (as fx's default), but never a container (Sequential, DataParallel)."""

    # fx patches torch.nn.Module.__call__ and __getattr__ process-wide while it traces: a module run (or a
    # parameter read) by another thread meanwhile would reach this tracer and get proxies. Calls from
    # other threads pass through untouched, so tracing one model never disturbs a forward elsewhere.
    def trace(self, root, concrete_args=None):
        self._thread = threading.get_ident()
        return super().trace(root, concrete_args)

    def call_module(self, m, forward, args, kwargs):
        if threading.get_ident() != getattr(self, "_thread", None):
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if threading.get_ident() != getattr(self, "_thread", None):
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if is_phased(m) or get_adapter(m) is not None:
            return True
        if isinstance(m, (nn.Sequential, *_PARALLEL)):
            return False
        return super().is_leaf_module(m, module_qualified_name)


def _unwrap(model: nn.Module) -> nn.Module:
    """The module that does the work: ``nn.DataParallel(net)`` and DDP forward to ``net`` on CPU."""
    while isinstance(model, _PARALLEL):
        model = model.module
    return model


def trace(model: nn.Module) -> fx.GraphModule:
    """The fx graph of ``model`` (phased layers as leaves). Arguments of ``forward`` after the input
    that have defaults are fixed to them. Raises GraphSplitError when fx cannot trace the model."""
    root = _unwrap(model)
    try:
        params = list(inspect.signature(type(root).forward).parameters.values())[2:]
    except (TypeError, ValueError):
        params = []
    concrete = {p.name: p.default for p in params
                if p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    tracer = _LeafTracer()
    try:
        with _TRACE_LOCK:
            graph = tracer.trace(root, concrete_args=concrete or None)
    except Exception as err:  # fx raises TraceError, TypeError, NotImplementedError, ... from user code
        raise GraphSplitError(f"torch.fx cannot trace it ({_first_line(err)})") from None
    return fx.GraphModule(tracer.root, graph, type(root).__name__)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


class _Shapes(fx.Interpreter):
    """Runs the graph once, recording each tensor node's shape, and the small tensors themselves (the
    logits are one of them: finding which node computed them resolves dict/tuple outputs)."""

    SMALL = 1 << 16  # elements

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.shapes: dict[fx.Node, tuple[int, ...]] = {}
        self.is_tensor: set[fx.Node] = set()
        self.small: dict[fx.Node, Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        if isinstance(value, Tensor):
            self.shapes[n] = tuple(value.shape)
            self.is_tensor.add(n)
            if value.numel() <= self.SMALL:
                self.small[n] = value
        return value


def _ancestors(nodes: Iterable[fx.Node]) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = list(nodes)
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return seen


def _name(n: fx.Node) -> str:
    return n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))


def _layouts(gm: fx.GraphModule, order: list[fx.Node], shapes: dict[fx.Node, tuple[int, ...]]
             ) -> dict[fx.Node, tuple[int, ...] | None]:
    """For each 4-D node, the permutation of (N, C, H, W) its dims hold (None: unknown)."""
    modules = dict(gm.named_modules())
    perm: dict[fx.Node, tuple[int, ...] | None] = {}
    for n in order:
        if len(shapes.get(n, ())) != 4:
            continue
        if n.op == "placeholder":
            perm[n] = (0, 1, 2, 3)
            continue
        if n.op == "call_module" and isinstance(modules.get(n.target), _NCHW_MODULES):
            perm[n] = (0, 1, 2, 3)
            continue
        inputs = [a for a in n.all_input_nodes if len(shapes.get(a, ())) == 4]
        if not inputs:
            perm[n] = None
            continue
        src = perm.get(inputs[0])
        name = _name(n)
        if src is None:
            perm[n] = None
        elif name in _PERMUTES:
            perm[n] = _apply_permute(n, src)
        elif name in _RESHAPES or n.op == "call_module":
            perm[n] = src if shapes[n] == shapes[inputs[0]] else None
        else:
            perm[n] = src
    return perm


def _apply_permute(n: fx.Node, src: tuple[int, ...]) -> tuple[int, ...] | None:
    """``src`` permuted by the permute/transpose call ``n`` (None when its arguments are not constants)."""
    args = list(n.args[1:])
    kw = dict(n.kwargs)
    name = _name(n)
    try:
        if name == "permute":
            dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args or kw.get("dims")
            dims = [int(d) % 4 for d in dims]
            return tuple(src[d] for d in dims)
        if name == "movedim":
            a, b = int(args[0]) % 4, int(args[1]) % 4
            order = [d for d in range(4) if d != a]
            order.insert(b, a)
            return tuple(src[d] for d in order)
        a, b = (int(args[0]) % 4, int(args[1]) % 4) if len(args) >= 2 else (int(kw["dim0"]) % 4, int(kw["dim1"]) % 4)
        out = list(src)
        out[a], out[b] = out[b], out[a]
        return tuple(out)
    except (TypeError, ValueError, KeyError, IndexError):
        return None


_LAYOUT_OF = {(0, 1, 2, 3): "nchw", (0, 2, 3, 1): "nhwc"}


def _feature_maps(gm: fx.GraphModule, order: list[fx.Node], shapes: dict[fx.Node, tuple[int, ...]],
                  perm: dict[fx.Node, tuple[int, ...] | None]) -> set[fx.Node]:
    """The 4-D NCHW/NHWC nodes that are feature maps: h*w > 1; or a 1x1 output of a phased layer (a
    strided layer on a tiny input), or computed from such a 1x1 map. A 1x1 map pooled from a larger one
    (global pooling) and what is computed from it are not feature maps."""
    modules = dict(gm.named_modules())
    maps: set[fx.Node] = set()
    for n in order:
        layout = _LAYOUT_OF.get(perm.get(n))  # type: ignore[arg-type]
        if layout is None or len(shapes.get(n, ())) != 4:
            continue
        if _spatial(shapes[n], layout):
            maps.add(n)
            continue
        phased = n.op == "call_module" and is_phased(modules.get(n.target))
        inputs = [a for a in n.all_input_nodes if len(shapes.get(a, ())) == 4]
        if phased or (inputs and inputs[0] in maps and not _spatial(shapes[inputs[0]], layout)):
            maps.add(n)
    return maps


def _spatial(shape: tuple[int, ...], layout: str) -> bool:
    h, w = (shape[2], shape[3]) if layout == "nchw" else (shape[1], shape[2])
    return h * w > 1


def _batch_read(n: fx.Node) -> str | None:
    """'size0' for ``t.size(0)``, 'shape' for ``t.shape`` / ``t.size()`` (only its [0] may be used)."""
    if n.op == "call_method" and n.target == "size":
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        if dim is None:
            return "shape"
        return "size0" if dim == 0 else None
    if n.op == "call_function" and n.target is getattr and len(n.args) == 2 and n.args[1] == "shape":
        return "shape"
    return None


def _is_effect(n: fx.Node, is_tensor: set[fx.Node]) -> bool:
    """A call whose result is unused but may mutate a tensor in place (``x.relu_()`` on its own line)."""
    return (n.op in ("call_function", "call_method", "call_module") and not n.users
            and n.target is not torch._assert and any(a in is_tensor for a in n.all_input_nodes))


class _Head(nn.Module):
    """The head: the graph after the cut, then the logits selected from its output."""

    def __init__(self, gm: fx.GraphModule, output: OutputSelector, select: bool):
        super().__init__()
        self.gm = gm
        self.output = output
        self.select = select

    def forward(self, f: Tensor) -> Tensor:
        out = self.gm(f)
        return select_output(out, self.output) if self.select else out


def graph_split(model: nn.Module, x: Tensor, output: OutputSelector = None):
    """The split of ``model`` by graph capture (see module docstring); ``x``: an example input batch.

    Returns a :class:`undiscard.analysis.split.Split` whose stages are GraphModules over ``model``'s own
    submodules. Raises GraphSplitError when the model cannot be traced or has no valid cut.
    """

    gm = trace(model)
    interp = _Shapes(gm)
    try:
        with torch.no_grad():
            out = interp.run(x)
    except Exception as err:
        raise GraphSplitError(f"its traced graph does not run ({_first_line(err)})") from None
    graph = gm.graph
    order = list(graph.nodes)
    pos = {n: i for i, n in enumerate(order)}
    out_node = order[-1]
    shapes, is_tensor = interp.shapes, interp.is_tensor

    # the node the logits come from: the last one whose value is the selected tensor itself (a dict,
    # tuple or object around it is then left out of the head, with any auxiliary outputs)
    logits = select_output(out, output)  # an OutputError here is the user's to see
    found = [n for n in order if interp.small.get(n) is logits]
    if found:
        targets, select = found[-1:], False
    else:  # the logits are built from the output structure at run time
        targets, select = list(out_node.all_input_nodes), True
    needed = _ancestors(targets)
    effects = [n for n in order if _is_effect(n, is_tensor)]
    live = [n for n in order if n in needed or n in effects]

    perm = _layouts(gm, live, shapes)
    reasons: list[str] = []
    maps = _feature_maps(gm, live, shapes, perm)
    candidates = [n for n in reversed(live) if n in maps and n.op != "placeholder"]
    if not candidates:
        raise GraphSplitError("its graph has no 4-D feature map (N, C, h, w) with h*w > 1 before the logits")
    for cut in candidates:
        try:
            head = _head_module(gm, order, pos, cut, targets, effects, select, output, is_tensor)
        except GraphSplitError as err:
            reasons.append(str(err))
            continue
        stages = _feature_stages(gm, order, pos, cut, effects, is_tensor)
        return Split(stages, head, layout=_LAYOUT_OF[perm[cut]])
    raise GraphSplitError(f"no activation is a cut: {reasons[0]}")


def _is_constant(n: fx.Node) -> bool:
    """A placeholder of a ``forward`` argument fixed to its default (``concrete_args``)."""
    return n.op == "placeholder" and bool(n.args)


def _copier(graph: fx.Graph, env: dict[fx.Node, Any]):
    """arg_transform for node_copy: mapped nodes from ``env``, parameters/buffers copied on first use."""

    def lookup(old: fx.Node) -> Any:
        if old in env:
            return env[old]
        if old.op == "get_attr":
            env[old] = graph.node_copy(old)
            return env[old]
        if _is_constant(old):
            return old.args[0]
        raise KeyError(old.name)

    return lookup


def _head_module(gm: fx.GraphModule, order: list[fx.Node], pos: dict[fx.Node, int], cut: fx.Node,
                 targets: list[fx.Node], effects: list[fx.Node], select: bool, output: OutputSelector,
                 is_tensor: set[fx.Node]) -> _Head:
    """The graph after ``cut`` as a module of the feature map; GraphSplitError if it reads more."""
    before = _ancestors([cut])
    head_effects = [e for e in effects if pos[e] > pos[cut]]
    body = (_ancestors(targets) | _ancestors(head_effects)) - before
    body |= set(head_effects)
    graph = fx.Graph()
    f = graph.placeholder("features")
    if head_effects:  # an in-place op in the head must not change the caller's feature map
        f = graph.call_method("clone", (f,))
    env: dict[fx.Node, fx.Node] = {cut: f}
    lookup = _copier(graph, env)
    shape_of_f: set[fx.Node] = set()
    for n in order:
        if n not in body or n.op == "get_attr" or _is_constant(n):
            continue
        if n.op == "placeholder":
            raise GraphSplitError(f"the head after {cut.name} reads the model's input {n.name}")
        outside = [a for a in n.all_input_nodes
                   if a in before and a is not cut and a.op != "get_attr" and not _is_constant(a)]
        if outside:
            kind = _batch_read(n)
            if kind == "size0":
                env[n] = graph.call_method("size", (f, 0))
                continue
            if kind == "shape" and all(u.op == "call_function" and u.target is operator.getitem
                                       and u.args[1:] == (0,) for u in n.users):
                env[n] = graph.call_method("size", (f,))
                shape_of_f.add(n)
                continue
            what = (f"the model's input {outside[0].name}" if outside[0].op == "placeholder"
                    else f"{outside[0].name}, computed before it")
            raise GraphSplitError(f"the head after {cut.name} also reads {what}")
        try:
            env[n] = graph.node_copy(n, lookup)
        except KeyError as err:
            raise GraphSplitError(f"the head after {cut.name} reads {err.args[0]}") from None
    try:
        graph.output(fx.node.map_arg(order[-1].args[0], lookup) if select else lookup(targets[0]))
    except KeyError as err:
        raise GraphSplitError(f"the model's output after {cut.name} also reads {err.args[0]}") from None
    return _Head(fx.GraphModule(gm, graph, "Head"), output, select)


def _feature_stages(gm: fx.GraphModule, order: list[fx.Node], pos: dict[fx.Node, int], cut: fx.Node,
                    effects: list[fx.Node], is_tensor: set[fx.Node]) -> list[nn.Module]:
    """The graph up to ``cut``, as GraphModules cut where a single tensor flows on before phased layers."""
    feats = _ancestors([cut])
    body = [n for n in order if (n in feats or (n in effects and pos[n] < pos[cut]
                                                and set(n.all_input_nodes) <= feats))
            and n.op != "get_attr" and not _is_constant(n)]
    inputs = [n for n in body if n.op == "placeholder"]
    if len(inputs) != 1 or body[0] is not inputs[0]:
        raise GraphSplitError(f"its features read {len(inputs)} inputs of forward; one (the image batch) is expected")
    modules = dict(gm.named_modules())
    index = {n: i for i, n in enumerate(body)}
    last_use = {n: max((index[u] for u in n.users if u in index), default=-1) for n in body}
    last_use[cut] = len(body)
    # boundaries: positions k where exactly one value (a tensor) computed before k is still needed
    open_values: set[fx.Node] = set()
    single: dict[int, fx.Node] = {}
    for k, n in enumerate(body):
        if k > 0 and len(open_values) == 1:
            (v,) = open_values
            if v in is_tensor:
                single[k] = v
        open_values = {v for v in open_values if last_use[v] > k}
        if last_use[n] > k:
            open_values.add(n)
    starts = {0}
    for k, n in enumerate(body):
        if n.op == "call_module" and is_phased(modules.get(n.target)):
            best = max((b for b in single if b <= k), default=None)
            if best is not None:
                starts.add(best)
    bounds = sorted(starts) + [len(body)]
    stages: list[nn.Module] = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        graph = fx.Graph()
        inp = body[0] if a == 0 else single[a]
        ph = graph.placeholder("x")
        env: dict[fx.Node, fx.Node] = {inp: ph}
        lookup = _copier(graph, env)
        for n in body[a:b]:
            if n is not inp:
                env[n] = graph.node_copy(n, lookup)
        end = cut if b == len(body) else single[b]
        graph.output(env[end])
        stages.append(fx.GraphModule(gm, graph, f"Features{len(stages)}"))
    return stages
