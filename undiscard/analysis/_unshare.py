"""Giving each call of a shared subsampling layer its own module, so each call can be searched.

The most common CNN in PyTorch tutorials defines one ``self.pool = nn.MaxPool2d(2, 2)`` and calls it
after every conv block. A phase plan is keyed by module, so one module called twice cannot take two
phases, and discovery refuses it ("called more than once per forward"): such a model would have
nothing to search. :func:`unshare_layers` rewrites the model's ``torch.fx`` graph so that the k-th call
(k >= 1) of such a layer goes to a clone of it registered beside the original as ``NAME__k``
(``pool``, ``pool__1``, ...). A clone shares the original's parameters and buffers (the same tensor
objects: nothing is copied or re-initialised), so the rewritten model computes exactly the same ops in
the same order as the original forward: same outputs, bit for bit.

Only layers that have a phase adapter (:mod:`undiscard.layers`) and are called more than once are
cloned. A model that has none, or that fx cannot trace, is returned unchanged (discovery then reports a
shared layer as before). Shared layers with weights (weight tying) are cloned too: each call is then
its own unit, searched independently, still with the same weights.
"""
from __future__ import annotations

import copy
from collections import Counter

import torch.fx as fx
from torch import nn

from ..layers import get_adapter
from ._graph_split import GraphSplitError, trace

__all__ = ["unshare_layers", "shared_layers"]


def _clone(module: nn.Module) -> nn.Module:
    """A new module object of the same class that holds the *same* parameter and buffer tensors."""
    clone = copy.copy(module)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._modules = dict(module._modules)
    clone._forward_hooks = type(module._forward_hooks)()
    clone._forward_pre_hooks = type(module._forward_pre_hooks)()
    return clone


def shared_layers(gm: fx.GraphModule) -> dict[str, int]:
    """Names of the layers with a phase adapter that ``gm``'s graph calls more than once, with counts."""
    counts = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    return {str(name): k for name, k in counts.items()
            if k > 1 and get_adapter(gm.get_submodule(str(name))) is not None}


def unshare_layers(net: nn.Module) -> tuple[nn.Module, dict[str, list[str]]]:
    """``(model, clones)``: ``net`` with every repeated call of a shared subsampling layer sent to its own
    clone, and ``{original name: [names of the calls in order]}``; ``(net, {})`` when nothing is shared or
    the model cannot be traced. ``net`` itself is never modified."""
    try:
        gm = trace(net)
    except GraphSplitError:
        return net, {}
    shared = shared_layers(gm)
    if not shared:
        return net, {}
    seen: Counter[str] = Counter()
    clones: dict[str, list[str]] = {name: [] for name in shared}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in shared:
            continue
        name = str(node.target)
        k = seen[name]
        seen[name] += 1
        if k:
            new = f"{name}__{k}"
            gm.add_submodule(new, _clone(gm.get_submodule(name)))
            node.target = new
            clones[name].append(new)
        else:
            clones[name].append(name)
    gm.recompile()
    gm.train(net.training)
    return gm, clones
