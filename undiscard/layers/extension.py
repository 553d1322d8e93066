"""What a phase reads past the bottom/right edge: the ``extend=`` modes (docs/semantics.md, "Past the edge").

A phase (dy, dx) > 0 of a subsampling layer reads rows and columns that the default forward (phase 0)
never reads: the layer's own bottom/right padding that phase 0 stops short of, and the extension of
its input to ``R*out + d*(k-1)`` rows/columns. This module decides what those *unread* positions hold:

- ``"zero"``: the layer's pad value (0 for convolutions and patch merging, -inf for max pooling) —
  the first definition of a phase, the default until the measurement below;
- ``"replicate"`` (``wrap()``'s default): the last row (column) of the layer's input as its op sees it,
  repeated — the input extended by its edge, as a translated image would be by an edge-replicating crop;
- ``"background"``: per channel, what the layer sees in the middle of a *background* input: the whole
  network run once on a constant image whose channels hold the median of the example input's border
  pixels (:func:`attach_extensions`) — the features a translated input brings in where it has been
  filled with background (for the zoo, whose images lie on black, exactly black's features). The
  value is measured once, at setup, from the example input (the first batch, or ``example_input=``).

The default (``wrap()``'s, :class:`undiscard.settings.Settings`) ``"replicate"`` was chosen by measurement (results/extend): over
the seven zoo models, single states are 2.39 points below the translations they stand for with
``replicate``, 1.95 with ``background`` and 5.42 with ``zero``. ``background`` measures a little better
but is fixed by the first batch a model is set up on, so a model's outputs would depend on which images
it saw first (and on which thread set it up first); a default must be a function of its own input, and
``replicate`` is the best mode that is.

Positions phase 0 reads are never changed, so phase 0 is the default forward bit for bit in every
mode, and rows and columns of the real input are never overwritten. Average pooling keeps its own
rule (padding is not counted unless ``count_include_pad``) and ignores the mode.

A mode is attached to a layer of a private copy (:func:`set_extension`) and read by its adapter
(:func:`extension_of`, :func:`fill_unread`); it survives ``copy.deepcopy``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence, get_args

import torch
from torch import Tensor, nn

from ..errors import UndiscardError

__all__ = ["ExtendMode", "EXTEND_MODES", "Extension", "check_extend", "set_extension", "extension_of", "fill_unread",
           "attach_extensions", "border_background"]

ExtendMode = Literal["zero", "replicate", "background"]
EXTEND_MODES: tuple[str, ...] = get_args(ExtendMode)
_ATTR = "undiscard_extension"  # the attribute a layer of the private copy carries


@dataclass(frozen=True)
class Extension:
    """One layer's extension: ``mode`` (one of :data:`EXTEND_MODES`) and, for ``"background"``, the
    per-channel ``value`` (C,)."""

    mode: str = "zero"
    value: Tensor | None = None


def check_extend(mode: str) -> str:
    """``mode`` if it is one of :data:`EXTEND_MODES`; otherwise one line naming them."""
    if mode not in EXTEND_MODES:
        raise UndiscardError(f"unknown extend mode {mode!r}: expected one of {', '.join(EXTEND_MODES)}")
    return mode


def set_extension(layer: nn.Module, extension: Extension | None) -> None:
    """Attach ``extension`` to ``layer`` (None or mode ``"zero"``: back to the pad value)."""
    if extension is None or extension.mode == "zero":
        layer.__dict__.pop(_ATTR, None)
    else:
        check_extend(extension.mode)
        if extension.mode == "background" and extension.value is None:
            raise UndiscardError("extend='background' needs the per-channel background value")
        layer.__dict__[_ATTR] = extension


def extension_of(layer: nn.Module) -> Extension | None:
    """The extension attached to ``layer`` (None: the pad value)."""
    return layer.__dict__.get(_ATTR)


def fill_unread(x: Tensor, start: tuple[int, int], edge: tuple[int, int], extension: Extension,
                channels_last: bool = False) -> Tensor:
    """``x`` (N, C, H, W), or (..., H, W, C) when ``channels_last``, with rows >= ``start[0]`` and columns
    >= ``start[1]`` (the positions phase 0 never reads, none of them real input) filled by ``extension``:
    row (column) ``edge`` repeated for ``"replicate"``, the per-channel value for ``"background"``.
    Returns a new tensor; ``x`` is untouched."""
    h_dim, w_dim = (-3, -2) if channels_last else (-2, -1)
    h, w = x.shape[h_dim], x.shape[w_dim]
    (r0, c0), (er, ec) = start, edge
    if r0 >= h and c0 >= w:
        return x
    out = x.clone()
    rows, cols = [slice(None)] * x.dim(), [slice(None)] * x.dim()
    rows[h_dim], cols[w_dim] = slice(r0, None), slice(c0, None)
    if extension.mode == "replicate":
        src_r, src_c = [slice(None)] * x.dim(), [slice(None)] * x.dim()
        src_r[h_dim], src_c[w_dim] = slice(er, er + 1), slice(ec, ec + 1)
        if r0 < h:
            out[tuple(rows)] = out[tuple(src_r)]
        if c0 < w:
            out[tuple(cols)] = out[tuple(src_c)]
        return out
    value = extension.value.to(dtype=x.dtype, device=x.device)
    value = value if channels_last else value.view(-1, 1, 1)
    if r0 < h:
        out[tuple(rows)] = value
    if c0 < w:
        out[tuple(cols)] = value
    return out


def border_background(x: Tensor) -> Tensor:
    """Per channel, the median of the border pixels (first/last rows and columns) of ``x`` (N, C, H, W):
    the background a translation of these images brings in."""
    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], dim=-1)  # (N, C, 2W + 2H)
    return border.transpose(0, 1).flatten(1).float().median(dim=1).values.to(x.dtype)


@torch.no_grad()
def attach_extensions(net: nn.Module, layer_names: Sequence[str], x: Tensor, mode: str) -> None:
    """Attach ``mode`` to the layers ``layer_names`` of ``net`` (its private copy), for inputs like ``x``.

    ``"background"`` runs ``net`` once on a constant image of ``x``'s shape filled, per channel, with
    :func:`border_background` of ``x``, and records per channel the value each layer sees at the middle
    of its input."""
    from .registry import get_adapter

    check_extend(mode)
    modules = dict(net.named_modules())
    if mode != "background":
        for name in layer_names:
            set_extension(modules[name], Extension(mode))
        return
    seen: dict[str, Tensor] = {}
    hooks = []
    for name in layer_names:
        adapter = get_adapter(modules[name])
        last = bool(getattr(adapter, "channels_last", False))

        def record(module: nn.Module, args: tuple, name: str = name, last: bool = last, adapter=adapter) -> None:
            inp = args[0] if adapter is None else adapter.map_of(module, args[0], tuple(args[1:]))
            h, w = (inp.shape[-3], inp.shape[-2]) if last else (inp.shape[-2], inp.shape[-1])
            seen[name] = (inp[0, h // 2, w // 2, :] if last else inp[0, :, h // 2, w // 2]).detach().clone()

        hooks.append(modules[name].register_forward_pre_hook(record))
    try:
        net(border_background(x)[None, :, None, None].expand(x[:1].shape).contiguous())
    finally:
        for hook in hooks:
            hook.remove()
    for name in layer_names:
        set_extension(modules[name], Extension("background", seen[name]))
