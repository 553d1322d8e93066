"""Seeded integer translations of image batches: the "accuracy under shift" and "shift consistency"
evaluations (docs/semantics.md, "What an evaluation reports") compare a model's prediction on an image with its prediction on a shifted copy.
"""
from __future__ import annotations

import torch
from torch import Tensor

Fill = float | int | str  # a constant, or "edge" (the nearest edge pixel repeated)


def overlap(h: int, w: int, dy: int, dx: int) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Where an (h, w) map translated by (dy, dx) (down/right positive) overlaps itself: the source and
    destination (rows, columns) slices, ``out[dst] = x[src]``; None when nothing overlaps."""
    if abs(dy) >= h or abs(dx) >= w:
        return None
    src = (slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx)))
    dst = (slice(max(0, dy), h - max(0, -dy)), slice(max(0, dx), w - max(0, -dx)))
    return src, dst


def translate(x: Tensor, dy: int, dx: int, fill: Fill = 0) -> Tensor:
    """Translate every image (or label map) of ``x`` (..., H, W) by (dy, dx) pixels (down/right positive).

    ``out[..., i + dy, j + dx] = x[..., i, j]`` where both indices are inside the image; everything else
    is ``fill``: a constant (default 0), or ``"edge"`` for the nearest edge pixel of ``x`` repeated (the
    image-space TTA's shift views). Same shape and dtype as ``x``. The one image translation of the
    package: the shift evaluations, the TTA views and the label-map checks all use it.
    """
    h, w = x.shape[-2:]
    if fill == "edge":
        rows = (torch.arange(h, device=x.device) - dy).clamp(0, h - 1)
        cols = (torch.arange(w, device=x.device) - dx).clamp(0, w - 1)
        return x.index_select(-2, rows).index_select(-1, cols)
    if isinstance(fill, str):
        raise ValueError(f"fill must be a number or 'edge', got {fill!r}")
    out = torch.full_like(x, fill)
    where = overlap(h, w, dy, dx)
    if where is not None:
        (sy, sx), (ty, tx) = where
        out[..., ty, tx] = x[..., sy, sx]
    return out


def random_offsets(n: int, max_shift: int, seed: int, min_shift: int = 1) -> Tensor:
    """``n`` seeded integer offsets (dy, dx), int64 (n, 2), uniform over the offsets whose Chebyshev
    length ``max(|dy|, |dx|)`` lies in [min_shift, max_shift]."""
    if not 0 <= min_shift <= max_shift:
        raise ValueError(f"need 0 <= min_shift <= max_shift, got min_shift={min_shift}, max_shift={max_shift}")
    r = torch.arange(-max_shift, max_shift + 1)
    grid = torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1).reshape(-1, 2)
    grid = grid[grid.abs().amax(dim=1) >= min_shift]
    g = torch.Generator().manual_seed(seed)
    return grid[torch.randint(len(grid), (n,), generator=g)]


def shift_images(x: Tensor, max_shift: int, seed: int, min_shift: int = 1,
                 offsets: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Translate each image of ``x`` (N, C, H, W) by its own seeded random integer offset.

    Offsets (dy, dx) are drawn by :func:`random_offsets` (max(|dy|, |dx|) in [min_shift, max_shift]);
    image k is moved by ``offsets[k]`` (down/right positive) with zero fill and keeps its size, so
    ``shifted[k, :, i + dy, j + dx] == x[k, :, i, j]`` wherever both sides are in range. Zero fill is
    the background of Fashion-MNIST before normalisation: shift raw [0, 1] (or uint8) images, then
    normalise. The same ``seed`` gives the same offsets for any batch of the same size. ``offsets``
    (N, 2) overrides the draw (e.g. a shard's slice of offsets drawn for a whole data set).

    Returns (shifted (N, C, H, W), offsets int64 (N, 2)).
    """
    if x.dim() != 4:
        raise ValueError(f"shift_images expects (N, C, H, W), got shape {tuple(x.shape)}")
    if offsets is None:
        offsets = random_offsets(x.shape[0], max_shift, seed, min_shift)
    elif offsets.shape != (x.shape[0], 2):
        raise ValueError(f"offsets must have shape ({x.shape[0]}, 2), got {tuple(offsets.shape)}")
    out = torch.empty_like(x)
    # One batched translate per distinct offset (at most (2 * max_shift + 1)^2 of them).
    uniq, group = torch.unique(offsets, dim=0, return_inverse=True)
    for g, (dy, dx) in enumerate(uniq.tolist()):
        idx = (group == g).nonzero().squeeze(1)
        out[idx] = translate(x[idx], dy, dx)
    return out, offsets


def random_crop_flip(x: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Training augmentation of a batch (B, 1, S, S): zero-pad ``pad`` px, crop a random S x S window back
    (a translation of -pad..+pad px in each direction) and flip horizontally with probability 1/2, all
    drawn from ``generator``."""
    b, _, s, _ = x.shape
    p = torch.nn.functional.pad(x, (pad,) * 4)
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    ar = torch.arange(s)
    rows = (oy[:, None] + ar)[:, :, None]  # (B, S, 1)
    cols = (ox[:, None] + ar)[:, None, :]  # (B, 1, S)
    flip = torch.rand(b, generator=generator) < 0.5
    cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
    return p[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)

