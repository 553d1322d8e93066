"""Image-space views for test-time augmentation: ops, their text form, and the named policies.

A view maps a batch of model inputs (N, C, H, W), already normalised, to another batch of the same shape.
Ops work in that input space: geometric ops resample and fill what comes from outside the image with
the nearest edge pixel (so a black background stays black, whatever the normalisation), photometric
ops shift or scale values. Every view has a text form, so policies can be written
on the command line and saved with fitted aggregators::

    identity | hflip | vflip | shift:DY,DX (edge-filled translation)
    crop:WHERE,SIZE (WHERE: tl, tr, bl, br or c; the SIZE x H by SIZE x W region at that corner or the
        centre, 0 < SIZE <= 1, resized back to H x W, bilinear with antialiasing: a zoom-in on it, as
        five-crop TTA does, with no pixel from outside the image)
    scale:F (zoom about the centre; F > 1 zooms in) | rotate:DEG (counter-clockwise) | brightness:D | contrast:F

and views combine with ``+`` (applied left to right): ``hflip+scale:1.1+crop:tl,0.875``. ``crop:tl``
without a size (once an edge-filled translation by H/16, not a crop) is refused with a message
naming both replacements.

Policies (:func:`policy_views`):

- ``flip``: identity, horizontal flip (2 views);
- ``standard``: flips x scales (1, 0.9, 1.1) x (the whole image, and its four 7/8 corner crops), as in
  the paper's comparison (30 views), ordered by what they add on held-out images, so that a budget of
  T views takes the T most useful (:data:`STANDARD_ORDER`; identity and its flip first);
- ``expanded``: photometric and geometric ops at several levels, one op per view (21 views);
- a list of view strings (comma-separated on the command line).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._registry import Registry
from ..data.shift import translate
from ..errors import UndiscardError

__all__ = ["View", "parse_view", "policy_views", "POLICIES", "OPS", "register_view_op", "list_view_ops", "STANDARD_ORDER", "standard_pool", "crop_box",
           "translation_policy"]

Op = Callable[[Tensor, tuple[float, ...]], Tensor]


class ViewError(UndiscardError, ValueError):
    """A view or policy that cannot be parsed."""


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    """Resample x with the (2, 3) affine matrix ``theta`` of output -> input normalised coordinates."""
    n = x.shape[0]
    grid = F.affine_grid(theta.to(x.dtype).expand(n, 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _op_shift(x: Tensor, a: tuple[float, ...]) -> Tensor:
    return translate(x, int(a[0]), int(a[1]), fill="edge")


_WHERE = ("tl", "tr", "bl", "br", "c")


def crop_box(h: int, w: int, where: str, size: float) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the ``size`` x (h, w) crop at corner/centre ``where`` (torchvision's
    ``five_crop`` boxes: corners flush with the image's, the centre's offset ``round((h - ch) / 2)``)."""
    ch, cw = max(1, round(size * h)), max(1, round(size * w))
    top = {"t": 0, "b": h - ch, "c": round((h - ch) / 2)}[where[0]]
    left = {"l": 0, "r": w - cw, "c": round((w - cw) / 2)}[where[-1]]
    return top, left, ch, cw


def _op_crop(x: Tensor, a: tuple) -> Tensor:
    h, w = x.shape[-2:]
    top, left, ch, cw = crop_box(h, w, str(a[0]), float(a[1]))
    if (ch, cw) == (h, w):
        return x
    region = x[..., top:top + ch, left:left + cw]
    return F.interpolate(region, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def _op_scale(x: Tensor, a: tuple[float, ...]) -> Tensor:
    f = float(a[0])
    return _affine(x, torch.tensor([[1.0 / f, 0.0, 0.0], [0.0, 1.0 / f, 0.0]], device=x.device))


def _op_rotate(x: Tensor, a: tuple[float, ...]) -> Tensor:
    t = math.radians(float(a[0]))
    return _affine(x, torch.tensor([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]],
                                   device=x.device))


def _op_contrast(x: Tensor, a: tuple[float, ...]) -> Tensor:
    mean = x.mean(dim=(-3, -2, -1), keepdim=True)
    return (x - mean) * float(a[0]) + mean


OPS: Registry[tuple[int, Op]] = Registry("view op")  # name -> (number of arguments, op)
for _name, _entry in {"identity": (0, lambda x, a: x),
                      "hflip": (0, lambda x, a: x.flip(-1)),
                      "vflip": (0, lambda x, a: x.flip(-2)),
                      "shift": (2, _op_shift),
                      "crop": (2, _op_crop),
                      "scale": (1, _op_scale),
                      "rotate": (1, _op_rotate),
                      "brightness": (1, lambda x, a: x + float(a[0])),
                      "contrast": (1, _op_contrast)}.items():
    OPS.add(_name, _entry)


def list_view_ops() -> list[str]:
    """The registered view op names, in registration order (``TTA(policy="hflip+scale:1.1")``)."""
    return list(OPS.names())


def register_view_op(name: str, nargs: int, replace: bool = False) -> Callable[[Op], Op]:
    """Decorator: ``op(x, args)`` becomes the view op ``name`` taking ``nargs`` arguments (``name:a,b``); a
    name that is taken is refused unless ``replace``."""

    def deco(op: Op) -> Op:
        OPS.add(name, (nargs, op), replace)
        return op

    return deco


@dataclass(frozen=True)
class View:
    """One augmented view: a chain of (op, args), applied left to right; ``name`` is its text form."""

    name: str
    steps: tuple[tuple[str, tuple], ...]

    def __call__(self, x: Tensor) -> Tensor:
        for op, args in self.steps:
            x = OPS.get(op)[1](x, args)
        return x


def parse_view(text: str) -> View:
    """A view from its text form (see the module doc), e.g. ``"hflip+scale:1.1"``."""
    steps = []
    for part in text.strip().split("+"):
        op, _, rest = part.strip().partition(":")
        if op not in OPS:
            raise ViewError(f"unknown view op {op!r} in {text!r}: expected one of {', '.join(OPS)}")
        nargs = OPS.get(op)[0]
        raw = [a.strip() for a in rest.split(",")] if rest else []
        if op == "crop":
            args: tuple = _crop_args(raw, text)
        else:
            if len(raw) != nargs:
                raise ViewError(f"view op {op!r} takes {nargs} argument(s), got {len(raw)} in {text!r}")
            try:
                args = tuple(int(a) if op == "shift" else float(a) for a in raw)
            except ValueError:
                raise ViewError(f"bad argument in view {text!r}") from None
            if op == "scale" and args[0] <= 0:
                raise ViewError(f"scale must be positive, got {args[0]}")
        steps.append((op, args))
    steps = [s for s in steps if s[0] != "identity"] or [("identity", ())]
    return View("+".join(_fmt(op, a) for op, a in steps), tuple(steps))


def _crop_args(raw: list[str], text: str) -> tuple[str, float]:
    """The checked (corner, size) of a crop view's arguments."""
    if raw and raw[0] not in _WHERE:
        raise ViewError(f"crop corner must be one of {', '.join(_WHERE)} (c: centre), got {raw[0]!r} in {text!r}")
    if len(raw) == 1:
        raise ViewError(f"crop:{raw[0]} has no size, in {text!r}: crops are real crops, crop:{raw[0]},SIZE (e.g. "
                        f"crop:{raw[0]},0.875, that 7/8 of the image resized back to the input size); the "
                        "old crop:CORNER, an edge-filled translation by D = round(H/16) px away "
                        "from the corner, is shift:D,D for tl (shift:-D,-D for br)")
    if len(raw) != 2:
        raise ViewError(f"view op 'crop' takes 2 arguments (CORNER,SIZE), got {len(raw)} in {text!r}")
    try:
        size = float(raw[1])
    except ValueError:
        raise ViewError(f"bad crop size in view {text!r}") from None
    if not 0 < size <= 1:
        raise ViewError(f"crop size must be in (0, 1] (a fraction of the input's side), got {size} in {text!r}")
    return raw[0], size


def _fmt(op: str, args: tuple) -> str:
    return op if not args else f"{op}:{','.join(str(a) for a in args)}"


STANDARD_CROP = 0.875  # the corner crops' side, as a fraction of the input's (224 of 256, as in ten-crop)


def standard_pool() -> list[str]:
    """The ``standard`` policy's 30 views, unordered: flips x scales (1, 0.9, 1.1) x (the whole image, and
    its four corner crops of :data:`STANDARD_CROP`), each written flip, then scale, then crop."""
    crops = [""] + [f"crop:{c},{STANDARD_CROP}" for c in _WHERE[:4]]
    return ["+".join(p for p in (flip, scale, crop) if p) or "identity"
            for scale, crop, flip in itertools.product(("", "scale:0.9", "scale:1.1"), crops, ("", "hflip"))]


# standard_pool() in the order measured by scripts/order_tta_views.py (results/tta_views): identity and
# hflip, then greedily the view whose addition most raises the top-1 of the mean of logits on held-out
# images (the zoo's train-split validation images and labelled crops of the bundled photos)
STANDARD_ORDER: tuple[str, ...] = (
    "identity", "hflip", "scale:1.1+crop:br,0.875", "hflip+scale:0.9", "hflip+crop:tl,0.875", "scale:0.9",
    "scale:1.1+crop:tr,0.875", "crop:tr,0.875", "hflip+scale:0.9+crop:br,0.875", "scale:1.1",
    "hflip+scale:0.9+crop:tl,0.875", "hflip+scale:1.1+crop:tl,0.875", "hflip+scale:0.9+crop:bl,0.875",
    "crop:br,0.875", "scale:1.1+crop:tl,0.875", "hflip+crop:tr,0.875", "scale:0.9+crop:br,0.875",
    "hflip+scale:1.1+crop:bl,0.875", "hflip+scale:1.1", "hflip+crop:bl,0.875", "scale:1.1+crop:bl,0.875",
    "hflip+scale:1.1+crop:tr,0.875", "hflip+crop:br,0.875", "scale:0.9+crop:tl,0.875",
    "hflip+scale:0.9+crop:tr,0.875", "crop:tl,0.875", "scale:0.9+crop:bl,0.875", "crop:bl,0.875",
    "scale:0.9+crop:tr,0.875", "hflip+scale:1.1+crop:br,0.875",
)


POLICIES: dict[str, list[str]] = {
    "flip": ["identity", "hflip"],
    "standard": list(STANDARD_ORDER),
    "expanded": ["identity", "hflip", "rotate:-10", "rotate:-5", "rotate:5", "rotate:10", "scale:0.8", "scale:0.9",
                 "scale:1.1", "scale:1.2", "shift:-2,0", "shift:2,0", "shift:0,-2", "shift:0,2",
                 "brightness:-0.2", "brightness:-0.1", "brightness:0.1", "brightness:0.2", "contrast:0.8",
                 "contrast:0.9", "contrast:1.2"],
}


def check_unique(names: list[str], error: type[Exception], what: str) -> None:
    """``error`` naming the repeated view names of a ``what``, if any."""
    if len(set(names)) != len(names):
        raise error(f"repeated views in {what}: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")


def translation_policy(size: int) -> list[str]:
    """The 30 views flips x scales (1, 0.9, 1.1) x {none, the four diagonal translations by ``size/16`` px},
    in that nesting (flip fastest): the ``standard`` policy with translations where it has corner crops,
    for ``size``-pixel images. The first 8 are identity, hflip and the four translations with and without
    flip: an 8-view translation TTA."""
    d = max(1, round(size / 16))
    crops = ["", f"shift:{d},{d}", f"shift:{d},{-d}", f"shift:{-d},{d}", f"shift:{-d},{-d}"]
    return ["+".join(p for p in (flip, scale, crop) if p) or "identity"
            for scale, crop, flip in itertools.product(("", "scale:0.9", "scale:1.1"), crops, ("", "hflip"))]


def policy_views(policy: str | Sequence[str | View]) -> list[View]:
    """The views of a named policy, of a comma-separated list of view strings, or of a list of views."""
    if isinstance(policy, str):
        names = POLICIES.get(policy)
        if names is None:
            if ":" not in policy and "+" not in policy and "," not in policy and policy not in OPS:
                raise ViewError(f"unknown TTA policy {policy!r}: expected {', '.join(POLICIES)} or a "
                                "comma-separated list of views")
            names = _split_views(policy)
        policy = names
    views = [v if isinstance(v, View) else parse_view(v) for v in policy]
    if not views:
        raise ViewError("a TTA policy needs at least one view")
    check_unique([v.name for v in views], ViewError, "policy")
    return views


def _split_views(text: str) -> list[str]:
    """Split 'hflip,shift:1,2,scale:1.1' at the commas between views, not those between an op's args."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if out and part.lstrip("-").replace(".", "", 1).isdigit():
            out[-1] += "," + part  # a further argument of the previous op
        elif part:
            out.append(part)
    return out
