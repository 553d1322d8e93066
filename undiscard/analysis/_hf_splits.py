"""Built-in splits of Hugging Face ``transformers`` image classifiers and segmenters.

Each split is built from the model's own submodules, so that ``head(features(x))`` is
``model(pixel_values=x).logits`` bit for bit (checked, as every split, by :func:`undiscard.analysis.split.get_split`;
a split that stops reproducing a future ``transformers`` release is skipped for the next rule there),
and its stages are the model's stages in order, so the search caches the activation before each
searched unit and recomputes only from that unit's stage on (:mod:`undiscard.analysis._chain` refines module
stages into their blocks where those run as a chain). Nothing here imports ``transformers``: the
classes are registered by their fully qualified names, and the factories read submodules only.

Classifiers (``*ForImageClassification``; the split is used for any task other than a dense one):

==================================  ========================================================  ==========
family                              stages (features)                                          layout
==================================  ========================================================  ==========
ResNet, RegNet                      embedder, encoder.stages[i]                                NCHW
ConvNeXt, ConvNeXt V2               embeddings, encoder.stages[i]                              NCHW
MobileNet V1 / V2                   conv_stem, layer[i] (V2: then conv_1x1)                    NCHW
EfficientNet                        embeddings, encoder.blocks[i], top conv / bn / activation  NCHW
MobileViT / MobileViT V2            conv_stem, encoder.layer[i] (V1: then conv_1x1_exp)        NCHW
PVT v2                              encoder.layers[i], each reshaped to a map as the encoder   NCHW
SegFormer (classification)          stages[i]                                                  NCHW
Swin, Swin V2                       embeddings, per stage: its blocks, then its patch merging  tokens
ViT, DeiT, BEiT, Data2Vec-vision,   the base model's own forward (the patch embedding is the   tokens
DINOv2 (+ registers), ViT-MSN       only unit, so one stage loses nothing)
==================================  ========================================================  ==========

The heads are the classifiers' own code after the base model: pooling (or the class token), the
pooler's norm, dropout, ``classifier``. EfficientNet's pooler (an ``AvgPool2d`` whose stride is the
hidden size, one window over the whole map) is in the head, and discovery does not count it as a unit.

Segmenters (``*ForSemanticSegmentation``, ``task="segmentation"``): the output split (identity head)
with the encoder cut into stages. Decoders that read several encoder stages (SegFormer's all-MLP
head, UperNet's feature pyramid) get them through a *carry*: each stage returns the feature maps
computed so far packed into one (N, D) tensor (:class:`Carry`), so the engine can cache and replicate
it like any activation; the last stage unpacks them and runs the decoder. Registered: SegFormer,
MobileNetV2 (DeepLabV3), MobileViT / MobileViT V2 (DeepLabV3), UperNet with a ConvNeXt backbone. BEiT,
Data2Vec-vision and DPT segmenters have one unit (the patch embedding, their first layer), so the
model's forward as one stage already recomputes only from it: they use the plain output split.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .split import Split, register_split

__all__ = ["Carry", "HF", "register_hf"]

HF = "transformers.models."
Stage = Callable[[Tensor], Tensor]


def _cls(module: str, *names: str) -> list[str]:
    return [f"{HF}{module}.modeling_{module}.{n}" for n in names]


def register_hf(*classes: str, with_input: bool = False, at_output: bool = False):
    """:func:`~undiscard.analysis.split.register_split` for a Hugging Face factory; its splits are named
    ``transformers CLASS`` (what ``model.split_method`` reports, after the rule that found it)."""

    def deco(fn: Callable[..., Split]) -> Callable[..., Split]:
        def named(m: nn.Module, *rest: object) -> Split:
            split = fn(m, *rest)
            split.method = f"transformers {type(m).__name__}"
            return split

        register_split(*classes, with_input=with_input, at_output=at_output)(named)
        return fn

    return deco


# --- CNN classifiers: the model's stages, a pooled head ------------------------------------------------
@register_hf(*_cls("resnet", "ResNetForImageClassification"), *_cls("regnet", "RegNetForImageClassification"))
def _resnet(m: nn.Module) -> Split:
    base = m.base_model
    return Split([base.embedder, *base.encoder.stages], lambda f: m.classifier(base.pooler(f)))


@register_hf(*_cls("convnext", "ConvNextForImageClassification"),
                *_cls("convnextv2", "ConvNextV2ForImageClassification"))
def _convnext(m: nn.Module) -> Split:
    base = m.base_model
    return Split([base.embeddings, *base.encoder.stages], lambda f: m.classifier(base.layernorm(f.mean([-2, -1]))))


@register_hf(*_cls("mobilenet_v1", "MobileNetV1ForImageClassification"),
                *_cls("mobilenet_v2", "MobileNetV2ForImageClassification"))
def _mobilenet(m: nn.Module) -> Split:
    base = m.base_model
    stages: list[Stage] = [base.conv_stem, *base.layer]
    if getattr(base, "conv_1x1", None) is not None:  # MobileNetV2's last 1x1 conv
        stages.append(base.conv_1x1)
    return Split(stages, lambda f: m.classifier(m.dropout(torch.flatten(base.pooler(f), start_dim=1))))


@register_hf(*_cls("efficientnet", "EfficientNetForImageClassification"))
def _efficientnet(m: nn.Module) -> Split:
    base, enc = m.base_model, m.base_model.encoder
    stages: list[Stage] = [base.embeddings, *enc.blocks, enc.top_conv, enc.top_bn, enc.top_activation]

    def head(f: Tensor) -> Tensor:
        pooled = base.pooler(f)
        return m.classifier(m.dropout(pooled.reshape(pooled.shape[:2])))

    return Split(stages, head)


@register_hf(*_cls("mobilevit", "MobileViTForImageClassification"),
                *_cls("mobilevitv2", "MobileViTV2ForImageClassification"))
def _mobilevit(m: nn.Module) -> Split:
    base = m.base_model
    stages: list[Stage] = [base.conv_stem, *base.encoder.layer]
    if getattr(base, "conv_1x1_exp", None) is not None:  # MobileViT v1 expands before pooling
        stages.append(base.conv_1x1_exp)
    dropout = getattr(m, "dropout", None) or nn.Identity()  # v2 has none
    return Split(stages, lambda f: m.classifier(dropout(torch.mean(f, dim=[-2, -1]))))


class _PvtStage:
    """One PVT v2 encoder layer, its token output reshaped to an NCHW map as ``PvtV2Encoder`` does (with
    the batch size read from the tokens, so the batch may grow inside the layer)."""

    def __init__(self, layer: nn.Module):
        self.layer = layer

    def __call__(self, x: Tensor) -> Tensor:
        outputs, height, width = self.layer(x, False)
        tokens = outputs[0]
        return tokens.reshape(tokens.shape[0], height, width, -1).permute(0, 3, 1, 2).contiguous()


def _token_mean_head(m: nn.Module, channels: int) -> Callable[[Tensor], Tensor]:
    """The PVT v2 / SegFormer classifiers' head: NCHW map -> mean over positions -> classifier."""
    return lambda f: m.classifier(f.permute(0, 2, 3, 1).reshape(f.shape[0], -1, channels).mean(dim=1))


@register_hf(*_cls("pvt_v2", "PvtV2ForImageClassification"))
def _pvt_v2(m: nn.Module) -> Split:
    stages: list[Stage] = [_PvtStage(layer) for layer in m.base_model.encoder.layers]
    return Split(stages, _token_mean_head(m, m.config.hidden_sizes[-1]))


@register_hf(*_cls("segformer", "SegformerForImageClassification"))
def _segformer_classifier(m: nn.Module) -> Split:
    return Split(list(m.base_model.stages), _token_mean_head(m, m.config.hidden_sizes[-1]))


# --- Swin: token sequences with their grid size, known from the input size --------------------------------
class _SwinBlocks:
    """A Swin stage's blocks on (N, H*W, C) tokens of an (H, W) grid (v1 and v2 blocks return tuples)."""

    def __init__(self, blocks: nn.ModuleList, dims: tuple[int, int]):
        self.blocks, self.dims = blocks, dims

    def __call__(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x, self.dims)[0]
        return x


class _SwinMerge:
    """A Swin stage's patch merging on tokens of an (H, W) grid (its own phases: layers.merging)."""

    def __init__(self, merging: nn.Module, dims: tuple[int, int]):
        self.merging, self.dims = merging, dims

    def __call__(self, x: Tensor) -> Tensor:
        return self.merging(x, self.dims)


@register_hf(*_cls("swin", "SwinForImageClassification"), *_cls("swinv2", "Swinv2ForImageClassification"),
                with_input=True)
def _swin(m: nn.Module, x: Tensor) -> Split:
    base = m.base_model
    patch = base.embeddings.patch_embeddings.patch_size
    dims = tuple(math.ceil(s / p) for s, p in zip(x.shape[-2:], patch))  # the patch embedding pads to a multiple
    stages: list[Stage] = [lambda t: base.embeddings(t)[0]]
    for stage in base.encoder.layers:
        stages.append(_SwinBlocks(stage.blocks, dims))
        if stage.downsample is not None:
            stages.append(_SwinMerge(stage.downsample, dims))
            dims = ((dims[0] + 1) // 2, (dims[1] + 1) // 2)
    stages.append(base.layernorm)
    return Split(stages, lambda f: m.classifier(torch.flatten(base.pooler(f.transpose(1, 2)), 1)), layout="tokens")


# --- ViT-style: one unit (the patch embedding), the base model's forward as the one stage -------------------
class _LastHiddenState:
    """The base model's own forward, its ``last_hidden_state`` (N, P + h*w, C)."""

    def __init__(self, base: nn.Module):
        self.base = base

    def __call__(self, x: Tensor) -> Tensor:
        return self.base(x).last_hidden_state


@register_hf(*_cls("vit", "ViTForImageClassification"), *_cls("deit", "DeiTForImageClassification"),
                *_cls("vit_msn", "ViTMSNForImageClassification"))
def _vit(m: nn.Module) -> Split:
    return Split([_LastHiddenState(m.base_model)], lambda f: m.classifier(f[:, 0, :]), layout="tokens")


@register_hf(*_cls("beit", "BeitForImageClassification"),
                f"{HF}data2vec.modeling_data2vec_vision.Data2VecVisionForImageClassification")
def _beit(m: nn.Module) -> Split:
    base = m.base_model
    return Split([_LastHiddenState(base)], lambda f: m.classifier(base.pooler(f)), layout="tokens")


@register_hf(*_cls("dinov2", "Dinov2ForImageClassification"),
                *_cls("dinov2_with_registers", "Dinov2WithRegistersForImageClassification"))
def _dinov2(m: nn.Module) -> Split:
    first = 1 + int(getattr(m.config, "num_register_tokens", 0))  # the class token, then the registers

    def head(f: Tensor) -> Tensor:
        return m.classifier(torch.cat([f[:, 0], f[:, first:].mean(dim=1)], dim=1))

    return Split([_LastHiddenState(m.base_model)], head, layout="tokens")


# --- segmenters ----------------------------------------------------------------------------------------------
class Carry:
    """Feature maps packed into one (N, D) tensor, so that several maps travel between chain segments as one
    activation the engine can cache, index, replicate and grow: ``pack`` flattens each (N, ...) map and
    concatenates them; ``unpack`` cuts them out again by the per-image shapes it was given."""

    def __init__(self, shapes: Sequence[tuple[int, ...]]):
        self.shapes = [tuple(s) for s in shapes]
        self.sizes = [math.prod(s) for s in self.shapes]

    @staticmethod
    def pack(maps: Sequence[Tensor]) -> Tensor:
        return torch.cat([t.flatten(1) for t in maps], dim=1)

    def unpack(self, packed: Tensor) -> list[Tensor]:
        parts = packed.split(self.sizes, dim=1)
        return [p.reshape(packed.shape[0], *s) for p, s in zip(parts, self.shapes)]


class _CarryStage:
    """Stage k of an encoder whose maps a decoder reads: unpack the maps so far, run ``stage`` on the last
    (or on the input, for k = 0), pack them with its output."""

    def __init__(self, stage: Stage, carry: Carry | None):
        self.stage, self.carry = stage, carry

    def __call__(self, x: Tensor) -> Tensor:
        maps = [] if self.carry is None else self.carry.unpack(x)
        out = self.stage(maps[-1] if maps else x)
        return Carry.pack([*maps, out])


class _Decode:
    """The last stage: unpack every encoder map and run the decoder on those it reads."""

    def __init__(self, carry: Carry, decode: Callable[[list[Tensor]], Tensor]):
        self.carry, self.decode = carry, decode

    def __call__(self, x: Tensor) -> Tensor:
        return self.decode(self.carry.unpack(x))


def _carried(encoder: Sequence[Stage], decode: Callable[[list[Tensor]], Tensor], x: Tensor) -> Split:
    """The output split of ``decode(maps)`` over the encoder stages' maps, carried between stages (the
    shapes of the maps come from one run of the encoder on ``x``)."""
    shapes: list[tuple[int, ...]] = []
    with torch.no_grad():
        h = x[:1]
        for stage in encoder:
            h = stage(h)
            shapes.append(tuple(h.shape[1:]))
    stages: list[Stage] = [_CarryStage(s, Carry(shapes[:k]) if k else None) for k, s in enumerate(encoder)]
    return Split([*stages, _Decode(Carry(shapes), decode)], lambda f: f)


@register_hf(*_cls("segformer", "SegformerForSemanticSegmentation"), at_output=True)
def _segformer(m: nn.Module, x: Tensor, output: object) -> Split:
    return _carried(list(m.base_model.stages), lambda maps: m.decode_head(tuple(maps)), x)


@register_hf(*_cls("upernet", "UperNetForSemanticSegmentation"), at_output=True)
def _upernet(m: nn.Module, x: Tensor, output: object) -> Split:
    backbone = m.backbone
    if not hasattr(backbone, "embeddings") or not hasattr(getattr(backbone, "encoder", None), "stages"):
        return _single(m)  # not a ConvNeXt-style backbone: the model's forward as one stage
    names = list(backbone.stage_names)  # "stem", "stage1", ...: the embeddings' map, then each stage's
    wanted = [i for i, n in enumerate(names) if n in backbone.out_features]
    size = tuple(x.shape[-2:])

    def decode(maps: list[Tensor]) -> Tensor:
        features = tuple(backbone.hidden_states_norms[names[i]](maps[i]) for i in wanted)
        return F.interpolate(m.decode_head(features), size=size, mode="bilinear", align_corners=False)

    return _carried([backbone.embeddings, *backbone.encoder.stages], decode, x)


def _single(m: nn.Module) -> Split:
    return Split([lambda t: m(t).logits], lambda f: f)


@register_hf(*_cls("mobilenet_v2", "MobileNetV2ForSemanticSegmentation"), at_output=True)
def _mobilenet_v2_seg(m: nn.Module, x: Tensor, output: object) -> Split:
    base = m.base_model  # the DeepLabV3 head reads the last layer's output (before conv_1x1)
    return Split([base.conv_stem, *base.layer, m.segmentation_head], lambda f: f)


@register_hf(*_cls("mobilevit", "MobileViTForSemanticSegmentation"),
                *_cls("mobilevitv2", "MobileViTV2ForSemanticSegmentation"), at_output=True)
def _mobilevit_seg(m: nn.Module, x: Tensor, output: object) -> Split:
    base = m.base_model  # the DeepLabV3 head reads the last encoder layer's output only
    return Split([base.conv_stem, *base.encoder.layer, lambda h: m.segmentation_head((h,))], lambda f: f)
