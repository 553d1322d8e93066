"""Feature/head splits and feature layouts (maps, NHWC, token sequences, vectors)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import undiscard
from undiscard._compat import class_path, import_timm
from undiscard.analysis._hook_split import Gate
from undiscard.analysis.split import (
    Split,
    SplitError,
    from_map,
    get_split,
    register_split,
    to_map,
)


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


class Odd(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 3, 3, 2, 1), nn.Linear(3, 2)

    def forward(self, x):
        return self.b((self.a(x) * 2).mean((2, 3)))


def test_graph_capture_cuts_after_the_last_spatial_activation():
    """The features end at ``a(x) * 2`` (functional work after the last module included); the head is the
    mean and the Linear."""
    net = Odd().eval()
    x = torch.randn(2, 3, 8, 8)
    split = get_split(net, x[:1])
    assert split.method == "graph capture"
    with torch.no_grad():
        f = split.features(x)
        assert torch.equal(f, net.a(x) * 2)
        assert torch.equal(split.head(f), net(x))


class BatchFirst(nn.Module):
    """Reads the batch size at the top of forward and a default argument, mutates in place."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 2, 1), nn.Linear(4 * 4 * 4, 3)

    def forward(self, x, return_features: bool = False):
        b = x.shape[0]
        x = self.c1(x)
        x.relu_()
        x = torch.relu(self.c2(x))
        if return_features:
            return x
        return self.fc(x.reshape(b, -1))


def test_graph_capture_reads_the_batch_size_from_the_features():
    net = BatchFirst().eval()
    x = torch.randn(3, 3, 16, 16)
    split = get_split(net, x[:1])
    assert split.method == "graph capture"
    with torch.no_grad():
        assert torch.equal(split.head(split.features(x)), net(x))


class Channels(nn.Module):
    """Features end in NHWC: permute, LayerNorm over channels, mean over (1, 2)."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.fc = nn.Conv2d(3, 4, 3, 2, 1), nn.LayerNorm(4), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.norm(self.conv(x).permute(0, 2, 3, 1)).mean((1, 2)))


def test_graph_capture_knows_nhwc_maps():
    net = Channels().eval()
    split = get_split(net, torch.randn(1, 3, 8, 8))
    assert split.layout == "nhwc"
    with torch.no_grad():
        assert split.features(torch.randn(1, 3, 8, 8)).shape == (1, 4, 4, 4)


class Pre(nn.Module):
    """Pre-activation residual stages: the cut before each strided conv is at the stage's input."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 1, 1)
        self.bn1, self.conv1, self.short1 = nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, 2, 1), nn.Conv2d(4, 4, 1, 2)
        self.bn2, self.conv2, self.short2 = nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, 2, 1), nn.Conv2d(4, 4, 1, 2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.stem(x)
        a = torch.relu(self.bn1(x))
        x = self.conv1(a) + self.short1(x)
        a = torch.relu(self.bn2(x))
        x = self.conv2(a) + self.short2(x)
        return self.fc(x.mean((2, 3)))


def test_graph_capture_cuts_where_one_tensor_flows_before_each_unit():
    torch.manual_seed(0)
    net = Pre().eval()
    x = torch.randn(2, 3, 16, 16)
    model = undiscard.wrap(net, budget=4, units=[1], example_input=x[:1])
    engine = next(iter(model._engines.values()))
    assert model.split_method == "graph capture"
    assert len(engine.split.stages) == 3  # stem | stage 1 | stage 2
    assert engine.cut == [2]  # the searched second stage is rerun from its cached input
    with torch.no_grad():
        assert torch.equal(model(x, budget=1), net(x))
        model(x)
    assert model.last_cost < 4.0


class ReadsInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, 2, 1), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3))) + x.mean()


def test_a_model_no_split_reproduces_is_refused_in_one_line():
    with pytest.raises(SplitError) as err:
        get_split(ReadsInput().eval(), torch.randn(1, 3, 8, 8))
    msg = str(err.value)
    assert "\n" not in msg
    assert "graph capture: no activation is a cut: the head after" in msg and "reads the model's input" in msg
    assert "hook fallback: it differs from the model's output" in msg
    assert msg.endswith("pass features=(model, x) -> maps and head=(model, maps) -> logits to wrap(); "
                        "budget=1 needs no split")


def test_a_split_that_does_not_reproduce_the_model_is_skipped():
    """A registry split is verified too: a wrong one gives way to graph capture."""

    class Registered(Odd):
        pass

    register_split(class_path(Registered))(lambda m: Split([m.a], lambda f: m.b(f.amax((2, 3)))))
    split = get_split(Registered().eval(), torch.randn(1, 3, 8, 8))
    assert split.method == "graph capture"


def test_a_wrong_override_is_an_error():
    net = Odd().eval()
    with pytest.raises(SplitError, match="features=/head= do not reproduce the model"):
        get_split(net, torch.randn(1, 3, 8, 8), features=lambda m, x: m.a(x), head=lambda m, f: m.b(f.mean((2, 3))))


def test_hook_fallback_survives_copies():
    """The hook split's tap is installed once per module; a deep copy of a wrapped model finds its own."""
    import copy

    class Guarded(Odd):
        def forward(self, x):
            if x.shape[1] != 3:
                raise ValueError("RGB only")
            return super().forward(x)

    x = torch.randn(2, 3, 8, 8)
    model = undiscard.wrap(Guarded().eval(), budget=4, example_input=x[:1])
    assert model.split_method.startswith("hook fallback")
    clone = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))
        assert torch.equal(clone(x, budget=1), model.net(x))
    gate = clone.net.a.__dict__["forward"]  # the copy's own gate, once (not a gate around a gate)
    assert isinstance(gate, Gate) and gate.module is clone.net.a and not isinstance(gate.wrapped, Gate)


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
