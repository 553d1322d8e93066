"""De-augmentable views for dense (per-pixel) test-time augmentation: flips and rescaling.

A dense view changes the input and must map the network's output back onto the input's pixel grid
before views can be averaged ("de-augmentation", as qubvel/ttach and mmsegmentation's ``--tta`` do).
:class:`DenseView` does both halves:

- :meth:`DenseView.apply`: resize the input (N, C, H, W) bilinearly to ``round(H * s), round(W * s)``
  (``align_corners=False``, no antialiasing: mmseg's ``Resize`` with cv2 ``INTER_LINEAR``), flip it,
  translate it by ``shift`` = (dy, dx) pixels (down/right positive, the edge pixels fill in) and pad it
  at the bottom/right to a multiple of ``size_divisor`` (networks that need a side divisible by their
  total stride, e.g. smp's 32) with ``pad_value``;
- :meth:`DenseView.invert`: crop the padding off the output (N, K, h, w), translate it back (the edge
  fills in), flip it back and resize it
  to (H, W) bilinearly (``align_corners=False``, mmseg's ``resize`` of ``seg_logits`` to the original
  shape). The output is assumed to cover the (padded) input at one stride, so padding is cropped in
  proportion (an output at the input's resolution, the usual case, crops exactly the padded pixels).

For a flip at scale 1 (no resizing, no padding) :meth:`invert` is the exact inverse of :meth:`apply`,
bit for bit (a flip is a permutation); the identity view is the network's output itself.

Text forms (comma-separated in policies; ``+`` combines): ``identity``, ``hflip``, ``vflip``,
``scale:F``, ``shift:DY;DX`` and e.g. ``hflip+scale:1.25``. Named policies (:data:`DENSE_POLICIES`):

- ``flip``: identity, horizontal flip (2 views);
- ``flips``: identity, hflip, vflip, both (4 views; vertical flips suit aerial or medical images, not
  street scenes);
- ``multiscale``: scales 0.75, 1, 1.25 (3 views);
- ``flip,shift``: identity, hflip, and both shifted by (2, 2) px (4 views: the generic shift TTA an
  equal-cost comparison with flip x 2 phase states needs);
- ``flip,multiscale`` (also ``multiscale,flip``): every scale with and without the horizontal flip
  (6 views), mmsegmentation's usual ``--tta`` (which uses more scales: pass them as a list).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch.nn.functional as F
from torch import Tensor

from ..data.shift import translate
from ..errors import UndiscardError
from .views import check_unique

__all__ = ["DenseView", "DENSE_POLICIES", "DEFAULT_SCALES", "parse_dense_view", "dense_policy_views",
           "DenseViewError", "PadValue"]

PadValue = float | Sequence[float] | str  # a constant, one per channel, or "edge" (replicate)
DEFAULT_SCALES = (0.75, 1.0, 1.25)


class DenseViewError(UndiscardError, ValueError):
    """A dense view or policy that cannot be parsed."""


@dataclass(frozen=True)
class DenseView:
    """One de-augmentable view: resize by ``scale``, then flip (``hflip``: last axis, ``vflip``: rows), then
    translate by ``shift`` = (dy, dx) pixels of the resized input."""

    hflip: bool = False
    vflip: bool = False
    scale: float = 1.0
    shift: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise DenseViewError(f"scale must be a positive number, got {self.scale}")

    @property
    def name(self) -> str:
        """Text form: ``identity``, ``hflip``, ``vflip``, ``hflip+vflip``, ``scale:0.75``, ``hflip+scale:1.25``."""
        parts = [p for p, on in (("hflip", self.hflip), ("vflip", self.vflip)) if on]
        if self.scale != 1.0:
            parts.append(f"scale:{self.scale:g}")
        if self.shift != (0, 0):
            parts.append(f"shift:{self.shift[0]};{self.shift[1]}")
        return "+".join(parts) or "identity"

    def _dims(self) -> list[int]:
        return [d for d, on in ((-1, self.hflip), (-2, self.vflip)) if on]

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        """The input's side lengths after resizing (before padding): ``round(side * scale)``, at least 1."""
        if self.scale == 1.0:
            return h, w
        return max(1, int(h * self.scale + 0.5)), max(1, int(w * self.scale + 0.5))

    def apply(self, x: Tensor, size_divisor: int = 1, pad_value: PadValue = 0.0) -> Tensor:
        """The augmented input of ``x`` (N, C, H, W): resized, flipped, padded (bottom/right) to multiples of
        ``size_divisor`` with ``pad_value`` (a constant in input space, one per channel, or ``"edge"``)."""
        h, w = x.shape[-2:]
        rh, rw = self.resized_size(h, w)
        if (rh, rw) != (h, w):
            x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False)
        dims = self._dims()
        if dims:
            x = x.flip(dims)
        if self.shift != (0, 0):
            x = translate(x, self.shift[0], self.shift[1], fill="edge")
        ph, pw = (-rh) % size_divisor, (-rw) % size_divisor
        if ph or pw:
            x = _pad(x, ph, pw, pad_value)
        return x

    def invert(self, y: Tensor, size: tuple[int, int], size_divisor: int = 1) -> Tensor:
        """The output ``y`` (N, K, h, w) of the augmented input mapped back onto the original (H, W) = ``size``
        grid: padding cropped, flipped back, resized (bilinear) to ``size``."""
        h, w = size
        rh, rw = self.resized_size(h, w)
        ah, aw = rh + (-rh) % size_divisor, rw + (-rw) % size_divisor  # the augmented input's size
        if (ah, aw) != (rh, rw):  # crop the padding, in proportion to the output's stride
            oh, ow = y.shape[-2:]
            y = y[..., :max(1, round(oh * rh / ah)), :max(1, round(ow * rw / aw))]
        if self.shift != (0, 0):  # in output pixels (the output may be at a stride of the input)
            sy, sx = round(self.shift[0] * y.shape[-2] / rh), round(self.shift[1] * y.shape[-1] / rw)
            y = translate(y, -sy, -sx, fill="edge")
        dims = self._dims()
        if dims:
            y = y.flip(dims)
        if tuple(y.shape[-2:]) != (h, w):
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        return y


def _pad(x: Tensor, ph: int, pw: int, value: PadValue) -> Tensor:
    if value == "edge":
        return F.pad(x, (0, pw, 0, ph), mode="replicate")
    if isinstance(value, str):
        raise DenseViewError(f"pad_value must be a number, one per channel, or 'edge', got {value!r}")
    if isinstance(value, (int, float)):
        return F.pad(x, (0, pw, 0, ph), value=float(value))
    values = [float(v) for v in value]
    if len(values) != x.shape[1]:
        raise DenseViewError(f"pad_value has {len(values)} values for {x.shape[1]} channels")
    out = x.new_empty(*x.shape[:-2], x.shape[-2] + ph, x.shape[-1] + pw)
    for c, v in enumerate(values):
        out[:, c] = F.pad(x[:, c], (0, pw, 0, ph), value=v)
    return out


def parse_dense_view(text: str) -> DenseView:
    """A view from its text form, e.g. ``"hflip+scale:1.25"`` (see the module docstring)."""
    hflip = vflip = False
    scale = 1.0
    shift = (0, 0)
    for part in (p.strip() for p in text.strip().split("+")):
        op, _, arg = part.partition(":")
        if op == "identity" and not arg:
            continue
        if op in ("hflip", "vflip") and not arg:
            hflip, vflip = hflip or op == "hflip", vflip or op == "vflip"
        elif op == "scale" and arg:
            try:
                scale *= float(arg)
            except ValueError:
                raise DenseViewError(f"bad scale in dense view {text!r}") from None
            if not (math.isfinite(scale) and scale > 0):
                raise DenseViewError(f"scale must be a positive number, got {arg} in {text!r}")
        elif op == "shift" and arg:
            try:
                dy, dx = (int(a) for a in arg.replace(",", ";").split(";"))
            except ValueError:
                raise DenseViewError(f"shift takes DY;DX integers, got {arg!r} in {text!r}") from None
            shift = (shift[0] + dy, shift[1] + dx)
        else:
            raise DenseViewError(f"unknown dense view {part!r} in {text!r}: expected identity, hflip, vflip or "
                                 "scale:F or shift:DY;DX (combined with +)")
    return DenseView(hflip, vflip, scale, shift)


def _flip_multiscale(scales: Sequence[float] = DEFAULT_SCALES) -> list[DenseView]:
    return [DenseView(hflip=f, scale=s) for s in scales for f in (False, True)]


DENSE_POLICIES: dict[str, list[DenseView]] = {
    "flip": [DenseView(), DenseView(hflip=True)],
    "flips": [DenseView(), DenseView(hflip=True), DenseView(vflip=True), DenseView(hflip=True, vflip=True)],
    "multiscale": [DenseView(scale=s) for s in DEFAULT_SCALES],
    "flip,shift": [DenseView(), DenseView(hflip=True), DenseView(shift=(2, 2)), DenseView(hflip=True, shift=(2, 2))],
    "flip,multiscale": _flip_multiscale(),
    "multiscale,flip": _flip_multiscale(),
}


def dense_policy_views(policy: str | Sequence[str | DenseView]) -> list[DenseView]:
    """The views of a named dense policy (:data:`DENSE_POLICIES`), of a comma-separated list of view
    strings, or of a list of views / strings. Repeated views are refused."""
    if isinstance(policy, str):
        key = ",".join(p.strip() for p in policy.split(","))
        views = list(DENSE_POLICIES[key]) if key in DENSE_POLICIES else \
            [parse_dense_view(p) for p in key.split(",") if p]
    else:
        views = [v if isinstance(v, DenseView) else parse_dense_view(v) for v in policy]
    if not views:
        raise DenseViewError("a dense TTA policy needs at least one view")
    check_unique([v.name for v in views], DenseViewError, "dense policy")
    return views
