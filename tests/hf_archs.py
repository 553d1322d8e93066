"""Tiny random-weight Hugging Face ``transformers`` models (nothing is downloaded), one per family.

Each entry: (config factory, model class name, input size). Sizes are the smallest at which every
stage still sees a map larger than its windows (MobileViT V2 and EfficientNet need 64 px).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

import undiscard  # noqa: F401  (before transformers: the torchvision import fix)


def _t():
    import transformers

    return transformers


def _vit_kw(**kw) -> dict:
    return {**dict(image_size=32, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2), **kw}


CLASSIFIERS: dict[str, tuple[Callable[[], object], str, int]] = {
    "resnet": (lambda: _t().ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                         layer_type="basic", num_labels=5), "ResNetForImageClassification", 32),
    "regnet": (lambda: _t().RegNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                         groups_width=8, num_labels=5), "RegNetForImageClassification", 32),
    "convnext": (lambda: _t().ConvNextConfig(hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], num_labels=5),
                 "ConvNextForImageClassification", 32),
    "convnextv2": (lambda: _t().ConvNextV2Config(hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], num_labels=5),
                   "ConvNextV2ForImageClassification", 32),
    "mobilenet_v1": (lambda: _t().MobileNetV1Config(image_size=32, depth_multiplier=0.25, num_labels=5),
                     "MobileNetV1ForImageClassification", 32),
    "mobilenet_v2": (lambda: _t().MobileNetV2Config(image_size=32, depth_multiplier=0.25, num_labels=5),
                     "MobileNetV2ForImageClassification", 32),
    # hidden_dim must be round_filters(1280) = 320 at width 0.25 (the default 2560 breaks the model itself)
    "efficientnet": (lambda: _t().EfficientNetConfig(image_size=64, width_coefficient=0.25, depth_coefficient=0.25,
                                                     hidden_dim=320, num_labels=5),
                     "EfficientNetForImageClassification", 64),
    "mobilevit": (lambda: _t().MobileViTConfig(image_size=32, hidden_sizes=[16, 16, 16],
                                               neck_hidden_sizes=[8, 8, 16, 16, 16, 16, 32], num_labels=5),
                  "MobileViTForImageClassification", 32),
    "mobilevitv2": (lambda: _t().MobileViTV2Config(image_size=64, width_multiplier=0.25, num_labels=5),
                    "MobileViTV2ForImageClassification", 64),
    "pvt_v2": (lambda: _t().PvtV2Config(image_size=32, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                        num_attention_heads=[1, 1, 2, 2], num_labels=5),
               "PvtV2ForImageClassification", 32),
    "segformer_cls": (lambda: _t().SegformerConfig(hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                                   num_attention_heads=[1, 1, 2, 2], num_labels=5),
                      "SegformerForImageClassification", 32),
    "swin": (lambda: _t().SwinConfig(image_size=32, patch_size=2, embed_dim=8, depths=[1, 1, 1, 1],
                                     num_heads=[1, 1, 2, 2], window_size=2, num_labels=5),
             "SwinForImageClassification", 32),
    "swinv2": (lambda: _t().Swinv2Config(image_size=32, patch_size=2, embed_dim=8, depths=[1, 1, 1, 1],
                                         num_heads=[1, 1, 2, 2], window_size=2, num_labels=5),
               "Swinv2ForImageClassification", 32),
    "vit": (lambda: _t().ViTConfig(**_vit_kw(intermediate_size=32, num_labels=5)), "ViTForImageClassification", 32),
    "deit": (lambda: _t().DeiTConfig(**_vit_kw(intermediate_size=32, num_labels=5)), "DeiTForImageClassification", 32),
    "beit": (lambda: _t().BeitConfig(**_vit_kw(intermediate_size=32, num_labels=5)), "BeitForImageClassification", 32),
    "data2vec": (lambda: _t().Data2VecVisionConfig(**_vit_kw(intermediate_size=32, num_labels=5)),
                 "Data2VecVisionForImageClassification", 32),
    "dinov2": (lambda: _t().Dinov2Config(**_vit_kw(mlp_ratio=2, num_labels=5)), "Dinov2ForImageClassification", 32),
    "dinov2_registers": (lambda: _t().Dinov2WithRegistersConfig(**_vit_kw(mlp_ratio=2, num_register_tokens=2,
                                                                           num_labels=5)),
                         "Dinov2WithRegistersForImageClassification", 32),
    "vit_msn": (lambda: _t().ViTMSNConfig(**_vit_kw(intermediate_size=32, num_labels=5)),
                "ViTMSNForImageClassification", 32),
}

SEGMENTERS: dict[str, tuple[Callable[[], object], str, int]] = {
    "segformer": (lambda: _t().SegformerConfig(hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                               num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=16, num_labels=4),
                  "SegformerForSemanticSegmentation", 32),
    "upernet": (lambda: _t().UperNetConfig(backbone_config=_t().ConvNextConfig(
        hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], out_features=["stage1", "stage2", "stage3", "stage4"]),
        hidden_size=16, auxiliary_in_channels=16, auxiliary_channels=8, num_labels=4),
        "UperNetForSemanticSegmentation", 32),
    "mobilenet_v2_seg": (lambda: _t().MobileNetV2Config(image_size=64, depth_multiplier=0.25, num_labels=4),
                         "MobileNetV2ForSemanticSegmentation", 64),
    "mobilevit_seg": (lambda: _t().MobileViTConfig(image_size=64, hidden_sizes=[16, 16, 16], aspp_out_channels=16,
                                                   neck_hidden_sizes=[8, 8, 16, 16, 16, 16, 32], num_labels=4),
                      "MobileViTForSemanticSegmentation", 64),
    "beit_seg": (lambda: _t().BeitConfig(**_vit_kw(num_hidden_layers=4, intermediate_size=32, out_indices=[0, 1, 2, 3],
                                                   pool_scales=[1, 2], use_auxiliary_head=False, num_labels=4)),
                 "BeitForSemanticSegmentation", 32),
    "dpt": (lambda: _t().DPTConfig(**_vit_kw(num_hidden_layers=4, intermediate_size=32, backbone_out_indices=[0, 1, 2, 3],
                                             neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=16,
                                             reassemble_factors=[4, 2, 1, 0.5], use_auxiliary_head=False,
                                             num_labels=4)),
            "DPTForSemanticSegmentation", 32),
}
SINGLE_UNIT_SEGMENTERS = {"beit_seg", "dpt"}  # the plain output split: the patch embedding is their first layer


def build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A tiny eval-mode model of family ``name`` (float64) and two input images."""
    config, cls, size = {**CLASSIFIERS, **SEGMENTERS}[name]
    torch.manual_seed(seed)
    net = getattr(_t(), cls)(config()).eval().double()
    return net, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
