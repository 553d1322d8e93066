"""Which searched units move a dense output: traced once per set-up model from the output's lineage.

A state's phase at a unit shifts everything computed *after* that unit by the unit's offset (docs/semantics.md, "Alignment").
A classifier's feature map is computed after every unit, so it moves by the state's whole offset. A
segmentation decoder often is not: SegFormer's decoder and DeepLabV3+'s read an encoder stage from
*before* a searched unit through a skip (SegFormer's 1/4 stage; DeepLabV3+'s layer1 beside its layer2
unit), and their output then keeps that stage's geometry — a state at that unit does not move the
output (the label map that best matches the plain model's is the unshifted one, measured by
``scripts/seg_alignment.py``). Shifting such a state's output by its offset misaligns it.

The rule (``align=True``, also named ``"lineage"``; :class:`~undiscard.tasks.segmentation.SegmentationTask`):

    a searched unit *moves the output* when every path from the network's input to its output runs
    through the unit's layers (the unit dominates the output); a unit that some path bypasses (a skip
    read from before it) does not move it.

It is decided structurally, not numerically: for each searched unit, one forward pass of the set-up
network on a probe input that requires grad, with the inputs of the unit's layers detached (forward
pre-hooks); the output still reaches the probe in the autograd graph exactly when some path bypasses
the unit (the graph is walked; nothing is back-propagated). Values play no part, so the answer is the
same for any probe, weights or data. A state's offset is the mixed-radix sum of its units' phase
offsets (:func:`undiscard.analysis.geometry.state_offset`); only the units that move the output keep their
term (:func:`undiscard.analysis.geometry.moved_offsets`). So for a plain stride network (every unit dominates)
the rule is the offset alignment (offset x stride at output resolution), and for DeepLabV3+ its
max-pool states still move while its layer2 states do not.

The probe is ``(1, C, H, W)``: ``(H, W)`` the first spatial unit's input size (what
:func:`undiscard.analysis.geometry.output_stride` takes as the network's input size), ``C`` the input channels
of the model's first registered ``Conv2d`` (as :mod:`undiscard._inputs` reads them). When that probe
does not give an output of the logits' spatial size, or the output is not in the autograd graph at all
(a model run under ``no_grad`` inside), the lineage cannot be traced: every unit is taken to move the
output (the offset alignment), with a ``UserWarning``.

:data:`ALIGNS` names the choices of ``wrap(..., align=...)`` for a dense task: ``True``/``"lineage"``
(this rule, the default), ``"offset"`` (every unit moves the output: the offset alignment used before),
``False`` (no alignment).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import Tensor, nn

from ..analysis.discovery import Unit
from ..errors import UndiscardError
from ..layers.plans import phase_plan

__all__ = ["ALIGNS", "align_mode", "reaches", "units_moving_output", "probe_for"]

ALIGNS = ("lineage", "offset")  # the named modes; True is "lineage", False no alignment


def align_mode(align: object) -> str | None:
    """The alignment mode of ``align``: ``"lineage"`` (True), ``"offset"``, or None (False); anything else is
    one :class:`~undiscard.errors.UndiscardError`."""
    if align is True:
        return "lineage"
    if align is False:
        return None
    if isinstance(align, str) and align in ALIGNS:
        return align
    raise UndiscardError(f"align={align!r} is not an alignment of a dense output: expected True (= 'lineage'), "
                         "'offset' or False")


def reaches(output: Tensor, leaf: Tensor) -> bool:
    """Whether ``leaf`` (a tensor that requires grad) is in the autograd graph of ``output``: a walk over
    ``grad_fn.next_functions``, no gradient computed."""
    if output.grad_fn is None:
        return output is leaf
    seen: set[int] = set()
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if getattr(node, "variable", None) is leaf:
            return True
        stack.extend(fn for fn, _ in node.next_functions)
    return False


def _detach_input(module: nn.Module, args: tuple) -> tuple:
    return (args[0].detach(), *args[1:]) if args and isinstance(args[0], Tensor) else args


def probe_for(net: nn.Module, units: Sequence[Unit], dtype: torch.dtype, device: torch.device) -> Tensor | None:
    """The probe input (see the module docstring), or None when its shape cannot be read from the model."""
    spatial = [u for u in units if u.spatial]
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    if not spatial or conv is None or min(spatial[0].in_size) < 1:
        return None
    gen = torch.Generator().manual_seed(0)
    return torch.randn(1, conv.in_channels, *spatial[0].in_size, generator=gen).to(dtype=dtype, device=device)


def units_moving_output(output_of, net: nn.Module, units: Sequence[Unit], searched: Sequence[int],
                        probe: Tensor | None, size: tuple[int, int]) -> tuple[bool, ...]:
    """For each searched unit, whether it moves the dense output (the rule of the module docstring).

    Args:
        output_of: ``output_of(x)`` -> the selected logits (N, K, h, w) of the set-up network ``net``.
        net: the network whose modules ``units`` name (the wrapper's private copy).
        units, searched: all units and the indices of the searched ones.
        probe: the probe input (:func:`probe_for`); None: cannot be traced (all move, with a warning).
        size: the logits' (h, w), which the probe's output must have.
    """
    fallback = (True,) * len(searched)
    why = "no probe input could be made (no Conv2d, or no spatial unit)" if probe is None else None
    if probe is None:
        return _warned(fallback, why)
    leaf = probe.detach().requires_grad_(True)

    def bypassed(detached: Sequence[str]) -> bool | str:
        handles = [net.get_submodule(name).register_forward_pre_hook(_detach_input) for name in detached]
        try:
            with torch.enable_grad(), phase_plan(None):
                out = output_of(leaf.clone())  # a clone: in-place ops of the model must not hit the leaf
        except Exception as err:  # noqa: BLE001 - the probe's shape may be wrong for this model: say so
            return f"the probe {tuple(leaf.shape)} does not run ({type(err).__name__})"
        finally:
            for h in handles:
                h.remove()
        if not isinstance(out, Tensor) or tuple(out.shape[-2:]) != tuple(size):
            return f"the probe {tuple(leaf.shape)} gives no {size[0]}x{size[1]} output"
        return reaches(out, leaf)

    whole = bypassed(())
    if whole is not True:
        return _warned(fallback, whole if isinstance(whole, str) else "the output is not in the autograd graph "
                       "of the input")
    moves = []
    for i in searched:
        unit = units[i]
        if not unit.spatial:
            moves.append(False)  # a side unit moves nothing (it adds no offset either)
            continue
        res = bypassed(unit.layers)
        if isinstance(res, str):
            return _warned(fallback, res)
        moves.append(not res)
    return tuple(moves)


def _warned(moves: tuple[bool, ...], why: str) -> tuple[bool, ...]:
    warnings.warn(f"cannot trace which units move the dense output ({why}): every state is aligned by its offset "
                  "(align='offset'); pass align='offset' or align=False to choose", UserWarning, stacklevel=4)
    return moves
