"""Pure tensor helpers shared by the phase adapters: output sizes, padding, extension, phase split.

Vocabulary (one spatial dimension; the 2-D helpers take one value per dimension, (H, W) order):

- ``n``: the size the strided op itself sees, i.e. after any *explicit* padding a layer applies
  before calling its functional op (TF-"same" padding, a ``ZeroPad2d``, reflect padding, ...).
- ``padding``: the op's own symmetric padding (the ``padding=`` argument of ``F.conv2d`` /
  ``F.max_pool2d`` / ``F.avg_pool2d``).
- ``kernel``, ``stride`` (the rate R), ``dilation``, ``ceil_mode``: as in PyTorch.

A phase (dy, dx) of a layer with rate R is ``dense[..., R*i + dy, R*j + dx]`` where ``dense`` is the
stride-1 op on the padded input *extended* past its bottom/right edge to
``extent = R*out + dilation*(kernel-1)`` rows/columns (docs/semantics.md, "Phases"). With exactly that many rows,
the stride-1 op yields exactly ``R*out`` rows and the stride-R op on the input cropped by ``dy`` rows
yields exactly ``out`` rows, for every ``0 <= dy < R``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import PhaseError

__all__ = [
    "pair",
    "conv_output_size",
    "pool_output_size",
    "same_padding",
    "pad_same",
    "dense_extent",
    "pad_extend",
    "phase_offset",
    "split_phases",
    "window_counts",
    "check_output_size",
]


def pair(v: int | Sequence[int]) -> tuple[int, int]:
    """``v`` as an (H, W) pair of ints: ``3 -> (3, 3)``, ``[2] -> (2, 2)``, ``(2, 3) -> (2, 3)``."""
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(e) for e in v)
    if len(t) == 1:
        return (t[0], t[0])
    if len(t) != 2:
        raise ValueError(f"expected an int or a pair, got {v!r}")
    return (t[0], t[1])


def conv_output_size(n: int, kernel: int, stride: int, padding: int = 0, dilation: int = 1) -> int:
    """Output size of ``F.conv2d`` along one dimension: ``floor((n + 2p - d(k-1) - 1) / s) + 1``.

    May be < 1 for too small inputs (the caller reports it; see ``check_output_size``).
    """
    return (n + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def pool_output_size(
    n: int, kernel: int, stride: int, padding: int = 0, dilation: int = 1, ceil_mode: bool = False
) -> int:
    """Output size of ``F.max_pool2d`` / ``F.avg_pool2d`` along one dimension, exactly as PyTorch
    computes it (``pooling_output_shape`` in ATen), including ceil mode's rule that the last window
    must *start* inside the input or its left padding: if ``(out - 1) * s >= n + p`` one window is
    dropped.
    """
    out = (n + 2 * padding - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= n + padding:
        out -= 1
    return out


def same_padding(n: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) along one dimension, as timm's ``pad_same`` and
    efficientnet-lite's ``*SamePadding`` layers compute it: total
    ``max((ceil(n/s) - 1) * s + (k-1)*d + 1 - n, 0)``, the odd pixel going after.
    """
    total = max((math.ceil(n / stride) - 1) * stride + (kernel - 1) * dilation + 1 - n, 0)
    return (total // 2, total - total // 2)


def pad_same(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
             value: float = 0.0) -> Tensor:
    """TF-"same" padding of ``x`` (N, C, H, W) with a constant ``value``, computed from x's own size by
    :func:`same_padding` (timm ``pad_same``, efficientnet-lite's ``*SamePadding`` layers)."""
    top, bottom = same_padding(int(x.shape[-2]), kernel[0], stride[0], dilation[0])
    left, right = same_padding(int(x.shape[-1]), kernel[1], stride[1], dilation[1])
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


def dense_extent(out: int, kernel: int, stride: int, dilation: int = 1) -> int:
    """Rows (or columns) of padded input the dense pass needs: ``R*out + d*(k-1)``."""
    return stride * out + dilation * (kernel - 1)


def check_output_size(layer_name: str, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    """Raise PhaseError naming the input size when the default output would be empty."""
    if out_hw[0] < 1 or out_hw[1] < 1:
        raise PhaseError(
            f"input of spatial size {in_hw[0]}x{in_hw[1]} is too small for {layer_name}: "
            f"its output would be {out_hw[0]}x{out_hw[1]}"
        )


def pad_extend(
    x: Tensor,
    padding: tuple[int, int],
    extent: tuple[int, int],
    value: float = 0.0,
) -> Tensor:
    """Apply the op's own symmetric ``padding`` (ph, pw), then extend (or crop) past the bottom/right
    edge so that the result has exactly ``extent`` (rows, columns); both with the constant ``value``.

    Shapes: x (..., H, W) -> (..., extent[0], extent[1]).
    Cropping happens when the padded input is larger than the dense pass needs (the rows past the
    last window are never read, by any phase).
    """
    (ph, pw), (eh, ew) = padding, extent
    h, w = x.shape[-2] + 2 * ph, x.shape[-1] + 2 * pw
    bottom, right = ph + max(eh - h, 0), pw + max(ew - w, 0)
    if ph or pw or bottom or right:
        x = F.pad(x, (pw, right, ph, bottom), mode="constant", value=value)
    return x[..., :eh, :ew]


def phase_offset(phase: int, rate: int) -> tuple[int, int]:
    """(dy, dx) of phase ``s = dy*R + dx``."""
    return divmod(phase, rate)


def split_phases(dense: Tensor, rate: int, channels_last: bool = False) -> Tensor:
    """Split a dense (stride-1) result into its R² phases, phase s = dy*R + dx.

    Shapes: NCHW ``(*lead, C, R*Ho, R*Wo) -> (*lead, R², C, Ho, Wo)``;
    channels_last ``(*lead, R*Ho, R*Wo, C) -> (*lead, R², Ho, Wo, C)``.
    ``out[..., s, :, i, j] = dense[..., :, R*i + dy, R*j + dx]``.
    """
    r = rate
    if channels_last:
        *lead, hh, ww, c = dense.shape
        ho, wo = hh // r, ww // r
        k = len(lead)
        t = dense.reshape(*lead, ho, r, wo, r, c)
        perm = [*range(k), k + 1, k + 3, k, k + 2, k + 4]  # (*lead, dy, dx, Ho, Wo, C)
        return t.permute(perm).reshape(*lead, r * r, ho, wo, c)
    *lead, c, hh, ww = dense.shape
    ho, wo = hh // r, ww // r
    k = len(lead)
    t = dense.reshape(*lead, c, ho, r, wo, r)
    perm = [*range(k), k + 2, k + 4, k, k + 1, k + 3]  # (*lead, dy, dx, C, Ho, Wo)
    return t.permute(perm).reshape(*lead, r * r, c, ho, wo)


def window_counts(
    starts: Tensor, kernel: int, lo: int, hi: int
) -> Tensor:
    """How many of the window positions ``[t, t + kernel)`` lie in ``[lo, hi)``, for each start t.

    Used for average pooling's divisor: ``[lo, hi)`` is the counted region in padded coordinates
    (the input, plus the op's own padding when ``count_include_pad``); the bottom/right extension is
    never counted. Shape: same as ``starts`` (int64).
    """
    return (torch.clamp(starts + kernel, max=hi) - torch.clamp(starts, min=lo)).clamp(min=0)
