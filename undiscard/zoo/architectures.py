"""Builders of the bundled model zoo: small Fashion-MNIST classifiers made of real timm modules.

Each builder returns an untrained ``nn.Module`` (1 input channel, 32x32 input, 10 classes) whose
subsampling layers are the same classes as in users' ImageNet models (timm ResNet stems and
downsample blocks, MobileNet inverted residuals, ConvNeXt patchify stems, Swin patch merging, PVT-v2
overlapping patch embeddings, MobileViT blocks). Every model has at least 3 (here 4)
strided layers in sequence on its main path and a final feature map of 2x2 (total stride 16) before
global pooling, so every searched unit has room for its phases. The few changes to timm's defaults
(a stride-1 3x3 stem conv for the basic ResNet, a 2x2 patchify stem for ConvNeXt, a stride-2 patch
embedding for PVT-v2, a ResNeXt without the stem max-pool) swap in standard modules (nn.Conv2d,
nn.Identity, timm's own OverlapPatchEmbed); nothing here subclasses or patches timm.
(EfficientFormer is absent: timm fixes its attention-bias grid at 7x7, which needs a 112-224 px
input, and without its attention stage timm's head does not run.)
"""
from __future__ import annotations

import torch.nn as nn

from .._compat import import_timm


def _timm_models():
    import_timm()
    import timm.models as tm  # noqa: F401  (registers byobnet blocks such as 'mobilevit')
    import timm.models.mobilevit  # noqa: F401
    return tm


def resnet_basic() -> nn.Module:
    """timm ResNet with BasicBlocks, widths 32-256, one block per stage.

    Strided: stem max-pool (s2, 32->16), layer2/3/4 first block (3x3 conv s2 + 1x1 conv s2 shortcut).
    The 7x7 stride-2 stem conv is replaced by a 3x3 stride-1 nn.Conv2d (a 32x32 input cannot afford
    stride 4 in the stem). Final map 2x2x256.
    """
    _timm_models()
    from timm.models.resnet import BasicBlock, ResNet

    # stem_type="deep" with stem_width=16 gives the 32-channel stem output (bn1, layer1) that the
    # replacement conv feeds; the deep stem's convs themselves are then replaced by one 3x3 conv.
    m = ResNet(block=BasicBlock, layers=(1, 1, 1, 1), channels=(32, 64, 128, 256), in_chans=1,
               num_classes=10, stem_type="deep", stem_width=16)
    m.conv1 = nn.Conv2d(1, 32, kernel_size=3, stride=1, padding=1, bias=False)
    return m


def resnext() -> nn.Module:
    """timm ResNeXt-D (Bottleneck blocks, cardinality 4, average-pool shortcuts), deep 3x3 stem.

    Strided: deep-stem first conv (3x3 s2, 32->16), layer2/3/4 first block (grouped 3x3 conv s2 +
    AvgPool2d(2, s2) in the shortcut, one unit). The stem max-pool is nn.Identity. Final map 2x2x512.
    """
    _timm_models()
    from timm.models.resnet import Bottleneck, ResNet

    m = ResNet(block=Bottleneck, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), cardinality=4,
               base_width=16, stem_type="deep", stem_width=16, avg_down=True, in_chans=1, num_classes=10)
    m.maxpool = nn.Identity()
    return m


def mobilenetv2() -> nn.Module:
    """timm EfficientNet class with a MobileNetV2 architecture (inverted residuals, ReLU6), width 0.5.

    Strided: stem conv (3x3 s2, 32->16), first depthwise 3x3 s2 conv of stages 2, 3, 4. Final 2x2x640.
    """
    _timm_models()
    from functools import partial

    from timm.models._efficientnet_builder import decode_arch_def, round_channels
    from timm.models.efficientnet import EfficientNet

    arch_def = [
        ["ds_r1_k3_s1_c16"],
        ["ir_r2_k3_s2_e6_c24"],
        ["ir_r2_k3_s2_e6_c48"],
        ["ir_r2_k3_s1_e6_c64"],
        ["ir_r2_k3_s2_e6_c96"],
        ["ir_r1_k3_s1_e6_c160"],
    ]
    return EfficientNet(block_args=decode_arch_def(arch_def), num_features=640, stem_size=32,
                        in_chans=1, num_classes=10, act_layer=nn.ReLU6,
                        round_chs_fn=partial(round_channels, multiplier=1.0))


def convnext() -> nn.Module:
    """timm ConvNeXt, dims 32-256, depths (1, 1, 2, 1), with a 2x2 patchify stem.

    Strided: stem conv (k2 s2, 32->16; timm's patch_size=2 would also make stage 0 downsample, so a
    standard k4 s4 stem is built and its conv swapped for a k2 s2 nn.Conv2d), then the downsample
    conv (k2 s2, after LayerNorm2d) opening stages 1, 2, 3. Final 2x2x256. Layer scale starts at 1
    (timm's 1e-6 suits 300-epoch ImageNet runs; in a few epochs it left the model at 86%).
    """
    _timm_models()
    from timm.models.convnext import ConvNeXt

    m = ConvNeXt(in_chans=1, num_classes=10, depths=(1, 1, 2, 1), dims=(32, 64, 128, 256),
                 patch_size=4, ls_init_value=1.0, drop_path_rate=0.0)
    m.stem[0] = nn.Conv2d(1, 32, kernel_size=2, stride=2)
    return m


def swin() -> nn.Module:
    """timm SwinTransformer, 32x32 input, 2x2 patches, window 4, embed 32, depths (1, 1, 2, 1),
    MLP ratio 2 in the two high-resolution stages (4 after), with a small convolutional stem.

    Strided: patch embed (conv k2 s2, 32->16), PatchMerging (2x2 -> channels) before stages 2, 3, 4.
    Final 2x2x256 (channels-last inside ``forward_features``). The patch embedding's projection is
    ``Sequential(3x3 conv s1, BatchNorm2d, GELU, 2x2 conv s2)`` ("early convolutions", Xiao et al.
    2021): with the plain 2x2 linear patch embedding this Swin reached only 84% in the CPU budget.
    """
    _timm_models()
    from timm.models.swin_transformer import SwinTransformer

    m = SwinTransformer(img_size=32, patch_size=2, in_chans=1, num_classes=10, embed_dim=32,
                        depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=4,
                        mlp_ratio=(2.0, 2.0, 4.0, 4.0), drop_path_rate=0.0)
    m.patch_embed.proj = nn.Sequential(
        nn.Conv2d(1, 24, kernel_size=3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(24),
        nn.GELU(),
        nn.Conv2d(24, 32, kernel_size=2, stride=2),
    )
    return m


def pvtv2() -> nn.Module:
    """timm PyramidVisionTransformerV2, embed dims 32-256, depths (1, 1, 2, 1), MLP ratios (2, 2, 4, 4).

    Strided: OverlapPatchEmbed (conv 3x3 s2 instead of timm's 7x7 s4 stem, 32->16), then the
    OverlapPatchEmbed (conv 3x3 s2) opening stages 2, 3, 4. Final 2x2x256.
    """
    _timm_models()
    from timm.models.pvt_v2 import OverlapPatchEmbed, PyramidVisionTransformerV2

    m = PyramidVisionTransformerV2(in_chans=1, num_classes=10, depths=(1, 1, 2, 1),
                                   embed_dims=(32, 64, 128, 256), num_heads=(1, 2, 4, 8),
                                   sr_ratios=(4, 2, 1, 1), mlp_ratios=(2, 2, 4, 4))
    m.patch_embed = OverlapPatchEmbed(patch_size=3, stride=2, in_chans=1, embed_dim=32)
    return m


def mobilevit() -> nn.Module:
    """timm ByobNet with a MobileViT configuration (inverted residuals + MobileViT blocks, SiLU).

    Strided: stem conv (3x3 s2, 32->16), depthwise 3x3 s2 of the first inverted residual in stages 2,
    3 (then MobileViT block, patch 2) and 4 (then MobileViT block, patch 2). Final 2x2x256.
    """
    _timm_models()
    from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg

    def ir(d, c, s, br=2.0):
        return ByoBlockCfg(type="bottle", d=d, c=c, s=s, gs=1, br=br,
                           block_kwargs=dict(bottle_in=True, linear_out=True))

    def mvit(c, dim, depth):
        return ByoBlockCfg(type="mobilevit", d=1, c=c, s=1,
                           block_kwargs=dict(transformer_dim=dim, transformer_depth=depth, patch_size=2))

    cfg = ByoModelCfg(
        blocks=(ir(1, 24, 1), ir(2, 32, 2), (ir(1, 64, 2), mvit(64, 80, 2)), (ir(1, 96, 2), mvit(96, 96, 2))),
        stem_chs=24, stem_type="3x3", stem_pool="", downsample="", act_layer="silu", num_features=256,
    )
    return ByobNet(cfg, in_chans=1, num_classes=10)
