"""Phase adapters for Swin-style patch merging (NHWC, rate 2).

Patch merging concatenates each 2x2 neighbourhood's features (after zero-padding odd H/W at the
bottom/right), then applies ``norm`` and ``reduction`` (a Linear 4C -> C'), in that order or the
reverse. Viewed as a layer with kernel 2 and stride 2, its phase (dy, dx) gathers the neighbourhood
whose top-left corner is (2i + dy, 2j + dx) of the input zero-extended past its bottom/right edge
(the layer's own odd-size padding is zeros too, so the two coincide).

Concat order: every registered class concatenates the 2x2 neighbourhood as (row, col) offsets
(0,0), (1,0), (0,1), (1,1) -- torchvision's ``x0, x1, x2, x3`` with ``x1 = x[1::2, 0::2]``; timm's
``reshape(B, H/2, 2, W/2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)`` puts the column offset
outside the row offset, which is the same order.

Registered classes (exact class): torchvision ``PatchMerging`` (norm -> reduction) and
``PatchMergingV2`` (reduction -> norm); timm ``swin_transformer.PatchMerging`` (norm -> reduction),
``swin_transformer_v2.PatchMerging`` (reduction -> norm) and ``swin_transformer_v2_cr.PatchMerging``
(norm -> reduction).

Layout: input (..., H, W, C); ``all_phases`` returns (..., 4, Ho, Wo, C') with Ho = ceil(H/2),
Wo = ceil(W/2); ``one_phase`` returns (..., Ho, Wo, C').

Hugging Face ``transformers`` Swin and Swin v2 merge *token sequences*: their forward takes
``(tokens (N, H*W, C), input_dimensions (H, W))``, views the tokens as (N, H, W, C), zero-pads odd
H/W at the bottom/right, concatenates the same (0,0), (1,0), (0,1), (1,1) neighbours and returns
(N, Ho*Wo, C') tokens in row-major order. ``SwinPatchMerging`` applies norm -> reduction,
``Swinv2PatchMerging`` reduction -> norm. Their adapters take ``input_dimensions`` as the forward's
further argument (``PhaseAdapter.takes_args``): ``all_phases`` returns (N, 4, Ho*Wo, C'),
``one_phase`` (N, Ho*Wo, C').
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._compat import class_path
from ..errors import PhaseError
from .extension import extension_of, fill_unread
from .functional import check_output_size, phase_offset, split_phases
from .registry import PhaseAdapter, register_adapter

__all__ = ["PatchMergingAdapter", "PatchMergingV2Adapter", "HFSwinPatchMergingAdapter", "HFSwinv2PatchMergingAdapter",
           "CONCAT_ORDER"]

#: (row, col) offsets of the four concatenated neighbours, in the layers' concat order.
CONCAT_ORDER: tuple[tuple[int, int], ...] = ((0, 0), (1, 0), (0, 1), (1, 1))
_RATE = 2


class _MergingAdapter(PhaseAdapter):
    """Patch merging with ``layer.norm`` and ``layer.reduction``; ``norm_first`` says their order."""

    channels_last = True
    norm_first = True

    def rate(self, layer: nn.Module) -> int:
        return _RATE

    def _project(self, layer: nn.Module, x: Tensor) -> Tensor:
        if self.norm_first:
            return layer.reduction(layer.norm(x))
        return layer.norm(layer.reduction(x))

    def _extended(self, layer: nn.Module, x: Tensor) -> tuple[Tensor, int, int]:
        """x zero-extended to (2*Ho + 1, 2*Wo + 1) rows/cols, and (Ho, Wo). (..., H, W, C) in."""
        if x.dim() < 3:
            raise PhaseError(f"{class_path(layer)} expects (N, H, W, C) input, got shape {tuple(x.shape)}")
        h, w = int(x.shape[-3]), int(x.shape[-2])
        ho, wo = (h + 1) // 2, (w + 1) // 2
        check_output_size(class_path(layer), (h, w), (ho, wo))
        xe = F.pad(x, (0, 0, 0, 2 * wo + 1 - w, 0, 2 * ho + 1 - h))
        extension = extension_of(layer)
        if extension is not None:  # phase 0 reads rows < 2*Ho (its odd-size zero row included): the rest
            xe = fill_unread(xe, (2 * ho, 2 * wo), (h - 1, w - 1), extension, channels_last=True)
        return xe, ho, wo

    def all_phases(self, layer: nn.Module, x: Tensor) -> Tensor:
        xe, ho, wo = self._extended(layer, x)
        hh, ww = _RATE * ho, _RATE * wo
        dense = torch.cat([xe[..., a:a + hh, b:b + ww, :] for a, b in CONCAT_ORDER], dim=-1)  # (..., 2Ho, 2Wo, 4C)
        return split_phases(self._project(layer, dense), _RATE, channels_last=True)

    def one_phase(self, layer: nn.Module, x: Tensor, phase: int) -> Tensor:
        if not 0 <= phase < _RATE * _RATE:
            raise PhaseError(f"phase {phase} out of range for {class_path(layer)} with rate {_RATE}")
        xe, ho, wo = self._extended(layer, x)
        dy, dx = phase_offset(phase, _RATE)
        parts = [xe[..., dy + a::_RATE, dx + b::_RATE, :][..., :ho, :wo, :] for a, b in CONCAT_ORDER]
        return self._project(layer, torch.cat(parts, dim=-1))  # (..., Ho, Wo, C')


@register_adapter(
    "torchvision.models.swin_transformer.PatchMerging",
    "timm.models.swin_transformer.PatchMerging",
    "timm.models.swin_transformer_v2_cr.PatchMerging",
)
class PatchMergingAdapter(_MergingAdapter):
    """Patch merging with norm before reduction (Swin v1, timm's Swin v2-cr)."""

    norm_first = True


@register_adapter(
    "torchvision.models.swin_transformer.PatchMergingV2",
    "timm.models.swin_transformer_v2.PatchMerging",
)
class PatchMergingV2Adapter(_MergingAdapter):
    """Patch merging with reduction before norm (Swin v2)."""

    norm_first = False


class _TokenMergingAdapter(_MergingAdapter):
    """Hugging Face patch merging: (N, H*W, C) tokens and ``input_dimensions`` (H, W) in, tokens out."""

    takes_args = True

    def map_of(self, layer: nn.Module, x: Tensor, args: tuple = ()) -> Tensor:
        if len(args) != 1 or len(args[0]) != 2 or x.dim() != 3:
            raise PhaseError(f"{class_path(layer)} expects (tokens (N, H*W, C), input_dimensions (H, W)), got "
                             f"{tuple(x.shape)} and {len(args)} more arguments")
        h, w = (int(d) for d in args[0])
        if h * w != x.shape[1]:
            raise PhaseError(f"{class_path(layer)}: {x.shape[1]} tokens are not a {h}x{w} grid")
        return x.view(x.shape[0], h, w, x.shape[2])

    def grids(self, layer: nn.Module, x: Tensor, output: Tensor, args: tuple = ()) -> tuple[tuple[int, int], tuple[int, int]]:
        h, w = self.map_of(layer, x, args).shape[1:3]
        return (int(h), int(w)), ((int(h) + 1) // 2, (int(w) + 1) // 2)

    def all_phases(self, layer: nn.Module, x: Tensor, *args: object) -> Tensor:
        return super().all_phases(layer, self.map_of(layer, x, args)).flatten(2, 3)  # (N, 4, Ho*Wo, C')

    def one_phase(self, layer: nn.Module, x: Tensor, phase: int, *args: object) -> Tensor:
        return super().one_phase(layer, self.map_of(layer, x, args), phase).flatten(1, 2)  # (N, Ho*Wo, C')


@register_adapter("transformers.models.swin.modeling_swin.SwinPatchMerging")
class HFSwinPatchMergingAdapter(_TokenMergingAdapter):
    """Hugging Face ``SwinPatchMerging`` (norm before reduction)."""

    norm_first = True


@register_adapter("transformers.models.swinv2.modeling_swinv2.Swinv2PatchMerging")
class HFSwinv2PatchMergingAdapter(_TokenMergingAdapter):
    """Hugging Face ``Swinv2PatchMerging`` (reduction before norm)."""

    norm_first = False
