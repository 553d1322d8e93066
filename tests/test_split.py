"""Feature/head splits and feature layouts (maps, NHWC, token sequences, vectors)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import undiscard
from undiscard._compat import import_timm
from undiscard.split import from_map, get_split, to_map


@pytest.mark.parametrize("layout, shape, grid", [
    ("nchw", (2, 5, 3, 4), None), ("nhwc", (2, 3, 4, 5), None), ("vector", (2, 5), None),
    ("tokens", (2, 1 + 12, 5), (3, 4)), ("tokens", (2, 12, 5), (3, 4)), ("tokens", (2, 7, 5), None),
])
def test_layout_round_trip(layout, shape, grid):
    f = torch.randn(shape)
    maps, extra = to_map(f, layout, grid)
    assert maps.dim() == 4
    if layout == "tokens" and grid is not None:
        assert maps.shape[-2:] == grid and maps.shape[1] == shape[-1]
        assert (extra is None) == (shape[1] == grid[0] * grid[1])
    assert torch.equal(from_map(maps, extra, layout), f)


def test_generic_split_of_a_plain_sequential():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, 2, 1), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(6, 3)).eval()
    x = torch.randn(2, 3, 16, 16)
    split = get_split(net, x)
    with torch.no_grad():
        f = split.features(x)
        assert f.shape == (2, 6, 4, 4)
        assert torch.equal(split.head(f), net(x))


def test_generic_split_refuses_what_it_cannot_cut():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 3, 3, 2, 1), nn.Linear(3, 2)

        def forward(self, x):
            return self.b((self.a(x) * 2).mean((2, 3)))

    with pytest.raises(undiscard.UndiscardError, match="features=.*head="):
        get_split(Odd().eval(), torch.randn(1, 3, 8, 8))


def _vit() -> nn.Module:
    timm = import_timm()
    return timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, num_classes=5).eval()


def test_token_features_with_a_class_token_aggregate_linearly():
    """timm ViT: features are (N, 1 + 16, C); its head reads the class token through a Linear, so mean
    aggregation without alignment equals the mean of the chosen states' logits."""
    torch.manual_seed(0)
    net = _vit().double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    model = undiscard.wrap(net, budget=5, aggregate="mean", align=False)
    with torch.no_grad():
        out = model(x)
        states = model.search(x)
        for i, per_image in enumerate(states):
            ref = torch.stack([model.run_state(x[i:i + 1], s)[0] for s in per_image]).mean(0)
            torch.testing.assert_close(out[i], ref)
    aligned = undiscard.wrap(net, budget=5)
    with torch.no_grad():
        assert torch.isfinite(aligned(x)).all()


def test_timm_swin_features_are_nhwc():
    timm = import_timm()
    net = timm.models.swin_transformer.SwinTransformer(
        img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
        num_classes=10).eval()
    split = get_split(net, torch.randn(1, 3, 32, 32))
    assert split.layout == "nhwc"
    with torch.no_grad():
        f = split.features(torch.randn(1, 3, 32, 32))
    assert f.shape == (1, 2, 2, 128)  # (N, H, W, C): 32 px, patch 2, three merges


def test_tokens_without_a_grid_are_never_shifted():
    """A token sequence whose grid is unknown is aggregated token by token: align on/off agree."""
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 2, 2), nn.Linear(4, 3)

        def forward_features(self, x):  # (N, 8, C) from a 4x4 map: fewer tokens than the grid has cells
            return self.conv(x).flatten(2).transpose(1, 2)[:, ::2]

        def forward(self, x):
            return self.fc(self.forward_features(x).mean(1))

    torch.manual_seed(0)
    net = Tokens().eval().double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    split = dict(features=lambda m, x: m.forward_features(x), head=lambda m, f: m.fc(f.mean(1)))
    out = {}
    for align in (True, False):
        model = undiscard.wrap(net, budget=4, align=align, aggregate="mean", **split)
        with torch.no_grad():
            out[align] = model(x)
    torch.testing.assert_close(out[True], out[False])
