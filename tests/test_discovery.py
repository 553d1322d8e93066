"""find_units on hand-made models whose correct units are known by construction."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import undiscard
from undiscard import UnsupportedLayerError


def conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1)


class Residual(nn.Module):
    """A ResNet-style downsampling block: strided conv + strided 1x1 shortcut, merged by addition."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.conv2 = conv(c, c, 2), conv(c, c)
        self.shortcut = nn.Conv2d(c, c, 1, 2)

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class Branches(nn.Module):
    """Inception-style: three strided branches concatenated."""

    def __init__(self, c: int):
        super().__init__()
        self.a, self.b = conv(c, c, 2), nn.Sequential(conv(c, c), conv(c, c, 2))
        self.pool = nn.MaxPool2d(3, 2, 1)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x), self.pool(x)], 1)


def run(model: nn.Module, size: int = 32, **kw) -> list[undiscard.Unit]:
    return undiscard.find_units(model.eval(), torch.randn(1, 3, size, size), **kw)


def test_residual_and_branches_are_merged_in_execution_order():
    net = nn.Sequential(conv(3, 8, 2), Residual(8), Branches(8), nn.AdaptiveAvgPool2d(1))
    units = run(net)
    assert [(u.name, u.rate, u.layers) for u in units] == [
        ("0", 2, ("0",)),
        ("1", 2, ("1.conv1", "1.shortcut")),
        ("2", 2, ("2.a", "2.b.1", "2.pool")),
    ]
    assert [(u.in_size, u.out_size) for u in units] == [((32, 32), (16, 16)), ((16, 16), (8, 8)), ((8, 8), (4, 4))]
    assert all(u.spatial for u in units)


def test_layers_in_sequence_are_separate_units():
    net = nn.Sequential(conv(3, 4, 2), nn.ReLU(), nn.MaxPool2d(2), conv(4, 4, 2))
    assert [u.layers for u in run(net)] == [("0",), ("2",), ("3",)]


def test_stride_one_and_same_padding_layers_are_not_units():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, 1, "same"), nn.MaxPool2d(3, 1, 1), nn.AvgPool2d(1))
    assert run(net) == []


class Doubled(nn.Conv2d):
    """A subclass with its own forward: it must not be treated as a Conv2d."""

    def forward(self, x):
        return 2 * super().forward(x)


def test_unsupported_subclass_is_reported_by_name_and_left_alone():
    net = nn.Sequential(conv(3, 4, 2), Doubled(4, 4, 3, 2, 1), conv(4, 4, 2))
    with pytest.warns(UserWarning, match=r"1 \(.*Doubled\)"):
        units = run(net)
    assert [u.layers for u in units] == [("0",), ("2",)]
    with pytest.raises(UnsupportedLayerError, match="Doubled"):
        run(net, strict=True)


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))

    def forward(self, x):
        return F.conv2d(x, self.weight, stride=2, padding=1)


def test_functional_strided_op_is_reported():
    with pytest.warns(UserWarning, match=r"conv2d with stride \(2, 2\)"):
        assert run(nn.Sequential(Functional(), conv(4, 4, 2))) == [
            undiscard.Unit("1", 2, ("1",))]


def test_non_square_stride_is_reported():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, (2, 1), 1), conv(4, 4, 2))
    with pytest.warns(UserWarning, match="non-square stride"):
        assert [u.layers for u in run(net)] == [("1",)]


class HalfUnsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.main, self.skip = conv(3, 4, 2), Doubled(3, 4, 1, 2)

    def forward(self, x):
        return self.main(x) + self.skip(x)


def test_unit_merged_with_unsupported_layer_is_dropped():
    with pytest.warns(UserWarning, match="merged with unsupported layer"):
        assert run(HalfUnsupported()) == []


class SequentialMerge(nn.Module):
    """Two stride-2 convs in sequence merged with one stride-4 conv: no single phase fits both."""

    def __init__(self):
        super().__init__()
        self.a1, self.a2, self.b = conv(3, 4, 2), conv(4, 4, 2), nn.Conv2d(3, 4, 4, 4)

    def forward(self, x):
        return self.a2(self.a1(x)) + self.b(x)


def test_sequential_layers_merged_with_a_branch_are_unsupported():
    with pytest.warns(UserWarning, match="different rates|in sequence"):
        assert run(SequentialMerge()) == []


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = conv(3, 3, 2)

    def forward(self, x):
        return self.down(self.down(x))


def test_layer_called_twice_is_unsupported():
    with pytest.warns(UserWarning, match="called more than once"):
        assert run(Shared()) == []


class ReducedAttention(nn.Module):
    """PVT-style: keys/values from a strided 'spatial reduction' conv; the map keeps its grid."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.embed, self.sr, self.down = conv(3, c, 2), nn.Conv2d(c, c, 4, 4), conv(c, c, 2)

    def forward(self, x):
        x = self.embed(x)
        n, c, h, w = x.shape
        q = x.flatten(2).transpose(1, 2)
        kv = self.sr(x).flatten(2).transpose(1, 2)
        attn = torch.softmax(q @ kv.transpose(1, 2), -1) @ kv
        x = x + attn.transpose(1, 2).reshape(n, c, h, w)
        return self.down(x)


def test_spatial_reduction_is_a_side_unit_and_not_searched_by_default():
    net = ReducedAttention().eval()
    x = torch.randn(1, 3, 32, 32)
    units = undiscard.find_units(net, x)
    assert [(u.name, u.spatial) for u in units] == [("embed", True), ("sr", False), ("down", True)]


def test_find_units_leaves_the_model_untouched():
    net = nn.Sequential(conv(3, 8, 2), Residual(8)).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(net)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    for m in net.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and "forward" not in vars(m)


def test_example_input_must_be_a_tensor():
    with pytest.raises(undiscard.PhaseError, match="tensor"):
        undiscard.find_units(nn.Conv2d(3, 3, 3, 2), [torch.randn(1, 3, 8, 8)])


def test_units_within_offset_counts_pixels_of_the_input():
    units = [undiscard.Unit("maxpool", 2, ("maxpool",), True, (32, 32), (16, 16)),
             undiscard.Unit("sr", 4, ("sr",), False, (16, 16), (4, 4)),
             undiscard.Unit("layer2", 2, ("layer2",), True, (16, 16), (8, 8)),
             undiscard.Unit("layer3", 2, ("layer3",), True, (8, 8), (4, 4))]
    from undiscard.analysis.discovery import units_within_offset

    assert units_within_offset(units, (32, 32), 4) == [0, 2]  # reach 1 + 2 = 3 <= 4; + 4 = 7 > 4
    assert units_within_offset(units, (32, 32), 7) == [0, 2, 3]
    assert units_within_offset(units, (32, 32), 0) == [0]  # never empty
