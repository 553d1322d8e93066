"""Image-space views for test-time augmentation: ops, their text form, and the named policies.

A view maps a batch of model inputs (N, C, H, W), already normalised, to another batch of the same shape.
Ops work in that input space: geometric ops resample and fill what comes from outside the image with
the nearest edge pixel (so a black background stays black, whatever the normalisation), photometric
ops shift or scale values. Every view has a text form, so policies can be written
on the command line and saved with fitted aggregators::

    identity | hflip | vflip | shift:DY,DX | crop:CORNER (tl, tr, bl, br, shift by H/16 toward it)
    scale:F (zoom about the centre; F > 1 zooms in) | rotate:DEG (counter-clockwise) | brightness:D | contrast:F

and views combine with ``+`` (applied left to right): ``hflip+scale:1.1+crop:tl``.

Policies (:func:`policy_views`):

- ``flip``: identity, horizontal flip (2 views);
- ``standard``: flips x scales (1, 0.9, 1.1) x crops (centre and the four corners), as in the paper's
  comparison (30 views; the first few are the identity, its flip and the corner crops at scale 1);
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

from ..data.shift import translate
from ..errors import UndiscardError

__all__ = ["View", "parse_view", "policy_views", "POLICIES", "OPS"]

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


_CORNERS = {"tl": (1, 1), "tr": (1, -1), "bl": (-1, 1), "br": (-1, -1)}


def _op_crop(x: Tensor, a: tuple[float, ...]) -> Tensor:
    # a crop toward a corner, resized back = the image moved away from that corner by H/16
    sy, sx = _CORNERS[str(a[0])]
    d = max(1, round(x.shape[-2] / 16))
    return translate(x, sy * d, sx * d, fill="edge")


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


OPS: dict[str, tuple[int, Op]] = {  # name -> (number of arguments, op)
    "identity": (0, lambda x, a: x),
    "hflip": (0, lambda x, a: x.flip(-1)),
    "vflip": (0, lambda x, a: x.flip(-2)),
    "shift": (2, _op_shift),
    "crop": (1, _op_crop),
    "scale": (1, _op_scale),
    "rotate": (1, _op_rotate),
    "brightness": (1, lambda x, a: x + float(a[0])),
    "contrast": (1, _op_contrast),
}


@dataclass(frozen=True)
class View:
    """One augmented view: a chain of (op, args), applied left to right; ``name`` is its text form."""

    name: str
    steps: tuple[tuple[str, tuple], ...]

    def __call__(self, x: Tensor) -> Tensor:
        for op, args in self.steps:
            x = OPS[op][1](x, args)
        return x


def parse_view(text: str) -> View:
    """A view from its text form (see the module doc), e.g. ``"hflip+scale:1.1"``."""
    steps = []
    for part in text.strip().split("+"):
        op, _, rest = part.strip().partition(":")
        if op not in OPS:
            raise ViewError(f"unknown view op {op!r} in {text!r}: expected one of {', '.join(OPS)}")
        nargs = OPS[op][0]
        raw = [a.strip() for a in rest.split(",")] if rest else []
        if len(raw) != nargs:
            raise ViewError(f"view op {op!r} takes {nargs} argument(s), got {len(raw)} in {text!r}")
        if op == "crop":
            if raw[0] not in _CORNERS:
                raise ViewError(f"crop corner must be one of {', '.join(_CORNERS)}, got {raw[0]!r}")
            args: tuple = (raw[0],)
        else:
            try:
                args = tuple(int(a) if op == "shift" else float(a) for a in raw)
            except ValueError:
                raise ViewError(f"bad argument in view {text!r}") from None
            if op == "scale" and args[0] <= 0:
                raise ViewError(f"scale must be positive, got {args[0]}")
        steps.append((op, args))
    steps = [s for s in steps if s[0] != "identity"] or [("identity", ())]
    return View("+".join(_fmt(op, a) for op, a in steps), tuple(steps))


def _fmt(op: str, args: tuple) -> str:
    return op if not args else f"{op}:{','.join(str(a) for a in args)}"


def _standard() -> list[str]:
    views = []
    for scale, crop, flip in itertools.product(("", "scale:0.9", "scale:1.1"), ("", "crop:tl", "crop:tr",
                                                                                  "crop:bl", "crop:br"), ("", "hflip")):
        views.append("+".join(p for p in (flip, scale, crop) if p) or "identity")
    return views


POLICIES: dict[str, list[str]] = {
    "flip": ["identity", "hflip"],
    "standard": _standard(),
    "expanded": ["identity", "hflip", "rotate:-10", "rotate:-5", "rotate:5", "rotate:10", "scale:0.8", "scale:0.9",
                 "scale:1.1", "scale:1.2", "shift:-2,0", "shift:2,0", "shift:0,-2", "shift:0,2",
                 "brightness:-0.2", "brightness:-0.1", "brightness:0.1", "brightness:0.2", "contrast:0.8",
                 "contrast:0.9", "contrast:1.2"],
}


def check_unique(names: list[str], error: type[Exception], what: str) -> None:
    """``error`` naming the repeated view names of a ``what``, if any."""
    if len(set(names)) != len(names):
        raise error(f"repeated views in {what}: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")


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
