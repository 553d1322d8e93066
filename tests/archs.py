"""Real architectures with random weights, and the units we expect undiscard to find in each.

Each entry: (builder, input size, expected units as (name, rate, number of layers, spatial)).
The expectations were checked by hand against each model's code: e.g. a ResNet block's strided conv
and its strided shortcut form one unit; PVT-v2's spatial-reduction convs are side units.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from undiscard._compat import import_timm, import_torchvision

Expected = list[tuple[str, int, int, bool]]


def _tv(name: str, **kw) -> Callable[[], nn.Module]:
    return lambda: import_torchvision().models.get_model(name, weights=None, num_classes=10, **kw)


def _timm(name: str, **kw) -> Callable[[], nn.Module]:
    return lambda: import_timm().create_model(name, pretrained=False, num_classes=10, **kw)


def _timm_swin() -> nn.Module:
    timm = import_timm()
    return timm.models.swin_transformer.SwinTransformer(
        img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
        num_classes=10)


def _tv_vit_tiny() -> nn.Module:
    tv = import_torchvision()
    return tv.models.vision_transformer.VisionTransformer(
        image_size=16, patch_size=4, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10)


def _lite0() -> nn.Module:
    from undiscard.models.loading import load_model

    return load_model("efficientnet-lite0").model


def _resnet_units(first: str = "conv1") -> Expected:
    return [(first, 2, 1, True), ("maxpool", 2, 1, True), ("layer2.0", 2, 2, True), ("layer3.0", 2, 2, True),
            ("layer4.0", 2, 2, True)]


def _chain(names: list[str], first_rate: int = 2) -> Expected:
    return [(n, first_rate if i == 0 else 2, 1, True) for i, n in enumerate(names)]


ARCHS: dict[str, tuple[Callable[[], nn.Module], int, Expected]] = {
    "tv_resnet18": (_tv("resnet18"), 32, _resnet_units()),
    "tv_resnet50": (_tv("resnet50"), 32, _resnet_units()),
    "tv_resnext50_32x4d": (_tv("resnext50_32x4d"), 32, _resnet_units()),
    "tv_mobilenet_v2": (_tv("mobilenet_v2"), 32, _chain(
        ["features.0.0", "features.2.conv.1.0", "features.4.conv.1.0", "features.7.conv.1.0",
         "features.14.conv.1.0"])),
    "tv_mobilenet_v3_small": (_tv("mobilenet_v3_small"), 32, _chain(
        ["features.0.0", "features.1.block.0.0", "features.2.block.1.0", "features.4.block.1.0",
         "features.9.block.1.0"])),
    "tv_efficientnet_b0": (_tv("efficientnet_b0"), 32, _chain(
        ["features.0.0", "features.2.0.block.1.0", "features.3.0.block.1.0", "features.4.0.block.1.0",
         "features.6.0.block.1.0"])),
    "tv_regnet_x_400mf": (_tv("regnet_x_400mf"), 32, [("stem.0", 2, 1, True)] + [
        (f"trunk_output.block{i}.block{i}-0", 2, 2, True) for i in range(1, 5)]),
    "tv_shufflenet_v2_x0_5": (_tv("shufflenet_v2_x0_5"), 32, [
        ("conv1.0", 2, 1, True), ("maxpool", 2, 1, True), ("stage2.0", 2, 2, True), ("stage3.0", 2, 2, True),
        ("stage4.0", 2, 2, True)]),
    "tv_convnext_tiny": (_tv("convnext_tiny"), 32, _chain(
        ["features.0.0", "features.2.1", "features.4.1", "features.6.1"], first_rate=4)),
    "tv_swin_t": (_tv("swin_t"), 32, _chain(["features.0.0", "features.2", "features.4", "features.6"],
                                             first_rate=4)),
    "tv_squeezenet1_1": (_tv("squeezenet1_1"), 32, _chain(["features.0", "features.2", "features.5", "features.8"])),
    "tv_vgg11_bn": (_tv("vgg11_bn"), 32, _chain(
        ["features.3", "features.7", "features.14", "features.21", "features.28"])),
    "tv_mnasnet0_5": (_tv("mnasnet0_5"), 32, _chain(
        ["layers.0", "layers.8.0.layers.3", "layers.9.0.layers.3", "layers.10.0.layers.3", "layers.12.0.layers.3"])),
    "tv_googlenet": (_tv("googlenet", aux_logits=False, init_weights=True), 32, _chain(
        ["conv1.conv", "maxpool1", "maxpool2", "maxpool3", "maxpool4"])),
    "tv_vit_b_16": (_tv("vit_b_16", image_size=32), 32, [("conv_proj", 16, 1, True)]),
    # a tiny ViT: its code fixes the batch size, so expansions run in replicate mode (see engine.py)
    "tv_vit_tiny": (_tv_vit_tiny, 16, [("conv_proj", 4, 1, True)]),
    "timm_resnet18": (_timm("resnet18"), 32, _resnet_units()),
    "timm_resnet50d": (_timm("resnet50d"), 32, _resnet_units("conv1.0")),
    "timm_convnext_atto": (_timm("convnext_atto"), 32, _chain(
        ["stem.0", "stages.1.downsample.1", "stages.2.downsample.1", "stages.3.downsample.1"], first_rate=4)),
    "timm_efficientnet_b0": (_timm("efficientnet_b0"), 32, _chain(
        ["conv_stem", "blocks.1.0.conv_dw", "blocks.2.0.conv_dw", "blocks.3.0.conv_dw", "blocks.5.0.conv_dw"])),
    "timm_mobilenetv3_small_100": (_timm("mobilenetv3_small_100"), 32, _chain(
        ["conv_stem", "blocks.0.0.conv_dw", "blocks.1.0.conv_dw", "blocks.2.0.conv_dw", "blocks.4.0.conv_dw"])),
    "timm_pvt_v2_b0": (_timm("pvt_v2_b0"), 32, [
        ("patch_embed.proj", 4, 1, True),
        ("stages.0.blocks.0.attn.sr", 8, 1, False), ("stages.0.blocks.1.attn.sr", 8, 1, False),
        ("stages.1.downsample.proj", 2, 1, True),
        ("stages.1.blocks.0.attn.sr", 4, 1, False), ("stages.1.blocks.1.attn.sr", 4, 1, False),
        ("stages.2.downsample.proj", 2, 1, True),
        ("stages.2.blocks.0.attn.sr", 2, 1, False), ("stages.2.blocks.1.attn.sr", 2, 1, False),
        ("stages.3.downsample.proj", 2, 1, True)]),
    "timm_mobilevitv2_050": (_timm("mobilevitv2_050"), 32, _chain(
        ["stem.conv"] + [f"stages.{i}.0.conv2_kxk.conv" for i in range(1, 5)])),
    "timm_regnetx_002": (_timm("regnetx_002"), 32, [("stem.conv", 2, 1, True)] + [
        (f"s{i}.b1", 2, 2, True) for i in range(1, 5)]),
    "timm_efficientformer_l1": (_timm("efficientformer_l1"), 224, _chain(
        ["stem.conv1", "stem.conv2"] + [f"stages.{i}.downsample.conv" for i in range(1, 4)])),
    "timm_swin": (_timm_swin, 32, _chain(
        ["patch_embed.proj", "layers.1.downsample", "layers.2.downsample", "layers.3.downsample"])),
    "efficientnet_lite0_real": (_lite0, 224, _chain(
        ["_conv_stem", "_blocks.1._depthwise_conv", "_blocks.3._depthwise_conv", "_blocks.5._depthwise_conv",
         "_blocks.11._depthwise_conv"])),
}


def build(name: str, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, torch.Tensor]:
    """The model (eval mode, seeded random weights unless real) and a seeded input batch (two images;
    one at 224 px, to keep the suite fast)."""
    builder, size, _ = ARCHS[name]
    torch.manual_seed(0)
    net = builder().eval().to(dtype)
    x = torch.randn(2 if size < 224 else 1, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return net, x
