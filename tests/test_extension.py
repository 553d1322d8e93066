"""The ``extend=`` modes (undiscard.layers.extension): what a phase reads past the bottom/right edge.

Invariants: phase 0 is the layer bit for bit in every mode; every phase equals an independent reference
(the stride-1 op on an input built by hand: the layer's padding, the unread rows/columns filled by the
mode, then sliced); real input is never overwritten; average pooling ignores the mode.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import undiscard
from undiscard.errors import UndiscardError
from undiscard.layers.extension import (
    Extension,
    attach_extensions,
    border_background,
    set_extension,
)

MODES = ["zero", "replicate", "background"]


def _reference_conv(conv: nn.Conv2d, x: torch.Tensor, mode: str, value: torch.Tensor | None) -> torch.Tensor:
    """All R² phases of ``conv`` (N, R², C', Ho, Wo) from a hand-built extended input."""
    r, (k, _), (p, _) = conv.stride[0], conv.kernel_size, conv.padding
    ho = (x.shape[-2] + 2 * p - k) // r + 1
    wo = (x.shape[-1] + 2 * p - k) // r + 1
    eh, ew = r * ho + k - 1, r * wo + k - 1
    xp = F.pad(x, (p, p, p, p))
    xp = F.pad(xp, (0, max(ew - xp.shape[-1], 0), 0, max(eh - xp.shape[-2], 0)))[..., :eh, :ew].clone()
    end_h, end_w = x.shape[-2] + p, x.shape[-1] + p  # padded coords: one past the last real row/column
    r0 = max(r * (ho - 1) + k, end_h)
    c0 = max(r * (wo - 1) + k, end_w)
    if mode == "replicate":
        xp[..., r0:, :] = xp[..., end_h - 1:end_h, :]
        xp[..., :, c0:] = xp[..., :, end_w - 1:end_w]
    elif mode == "background":
        xp[..., r0:, :] = value.view(-1, 1, 1)
        xp[..., :, c0:] = value.view(-1, 1, 1)
    dense = F.conv2d(xp, conv.weight, conv.bias)
    return torch.stack([dense[..., dy::r, dx::r][..., :ho, :wo] for dy in range(r) for dx in range(r)], dim=1)


CONVS = [  # (kernel, stride, padding, size): patchify (wide extension), ResNet-style (pad row only), odd size
    (4, 4, 0, 18), (3, 2, 1, 16), (3, 2, 1, 17), (2, 2, 0, 9), (7, 4, 3, 21),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k,s,p,size", CONVS)
def test_every_conv_phase_equals_the_hand_built_reference(mode, k, s, p, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, k, s, p).double()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    value = torch.randn(3, dtype=torch.float64)
    set_extension(conv, Extension(mode, value if mode == "background" else None))
    got = undiscard.polyphase(conv, x)
    torch.testing.assert_close(got, _reference_conv(conv, x, mode, value), rtol=1e-12, atol=1e-12)
    assert torch.equal(undiscard.polyphase(conv, x, 0), F.conv2d(x, conv.weight, conv.bias, s, p))


@pytest.mark.parametrize("mode", MODES)
def test_phase_zero_is_the_layer_bit_for_bit_in_every_mode(mode):
    torch.manual_seed(1)
    layers = [nn.Conv2d(3, 4, 4, 4), nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(2, 2), nn.Conv2d(3, 4, 3, 2, 1)]
    x = torch.randn(2, 3, 15, 15)
    for layer in layers:
        set_extension(layer, Extension(mode, torch.randn(3) if mode == "background" else None))
        assert torch.equal(undiscard.polyphase(layer, x, 0), layer(x))
        assert torch.equal(undiscard.polyphase(layer, x)[:, 0], layer(x))


def test_max_pool_phases_read_the_edge_not_minus_infinity_when_replicating():
    pool = nn.MaxPool2d(2, 2)
    x = torch.arange(25.0).view(1, 1, 5, 5) * -1.0  # the largest values are at the top-left
    zero = undiscard.polyphase(pool, x, 3)
    set_extension(pool, Extension("replicate"))
    rep = undiscard.polyphase(pool, x, 3)
    # phase (1, 1) windows start at rows/cols 1 and 3: the second window reads row/col 5 (unread by phase 0)
    assert torch.equal(zero[..., :1, :1], rep[..., :1, :1])
    assert rep[0, 0, 1, 1] == max(x[0, 0, 3:5, 3:5].max(), x[0, 0, 4, 4])  # the edge repeated
    assert torch.isfinite(rep).all()


def test_avg_pool_ignores_the_mode():
    pool = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
    x = torch.randn(1, 2, 7, 7)
    before = undiscard.polyphase(pool, x)
    set_extension(pool, Extension("background", torch.full((2,), 100.0)))
    assert torch.equal(undiscard.polyphase(pool, x), before)


def test_real_input_is_never_overwritten():
    """k=3, s=2, p=1 on 18 rows: phase 0 stops before the last real row; it must keep its value."""
    conv = nn.Conv2d(1, 1, 3, 2, 1, bias=False)
    nn.init.ones_(conv.weight)
    x = torch.zeros(1, 1, 18, 18)
    x[..., 17, :] = 1.0  # the last real row
    set_extension(conv, Extension("background", torch.tensor([50.0])))
    got = undiscard.polyphase(conv, x)
    torch.testing.assert_close(got, _reference_conv(conv, x, "background", torch.tensor([50.0])))


def test_patch_merging_modes():
    pytest.importorskip("timm")
    from timm.models.swin_transformer import PatchMerging

    torch.manual_seed(2)
    layer = PatchMerging(4, 6).eval()
    x = torch.randn(2, 7, 7, 4)
    zero = undiscard.polyphase(layer, x)
    for mode in ("replicate", "background"):
        set_extension(layer, Extension(mode, torch.randn(4) if mode == "background" else None))
        got = undiscard.polyphase(layer, x)
        assert torch.equal(got[:, 0], layer(x))
        assert torch.equal(got[:, 0], zero[:, 0])
        assert not torch.equal(got[:, 3], zero[:, 3])  # phase (1, 1) reads row/col 8: the fill


def test_border_background_and_attach():
    x = torch.full((1, 2, 8, 8), -1.0)
    x[..., 2:6, 2:6] = 5.0  # an object on a -1 background
    assert torch.equal(border_background(x), torch.tensor([-1.0, -1.0]))
    net = nn.Sequential(nn.Conv2d(2, 3, 3, 1, 1), nn.ReLU(), nn.Conv2d(3, 4, 2, 2))
    attach_extensions(net, ["2"], x, "background")
    blank = net[1](net[0](torch.full((1, 2, 8, 8), -1.0)))
    ext = copy.deepcopy(net)[2].__dict__["undiscard_extension"]
    assert ext.mode == "background" and torch.allclose(ext.value, blank[0, :, 4, 4])


@pytest.mark.parametrize("mode", MODES)
def test_wrap_extend_keeps_budget_one_and_state_zero_exact(mode):
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 8, 4, 4), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(),
                        nn.Conv2d(8, 8, 2, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    x = torch.randn(4, 1, 30, 30)
    model = undiscard.wrap(net, budget=4, units=[0, 1, 2], extend=mode)
    assert torch.equal(model(x, budget=1), net(x))
    assert torch.equal(model.run_state(x, (0, 0, 0)), net(x))
    out = model(x)
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    states = [(1, 0, 0), (0, 3, 1)]
    if mode != "zero":  # the fill changes the phases that read past the edge
        zero = undiscard.wrap(net, budget=4, units=[0, 1, 2], extend="zero")
        assert any(not torch.equal(model.run_state(x, s), zero.run_state(x, s)) for s in states)


def test_the_default_is_the_measured_replicate():
    """``extend`` defaults to "replicate" (``Settings``; results/extend/README.md): the default
    wrap is the replicate mode, state by state, and not the pad value."""
    from undiscard.settings import DEFAULTS

    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(1, 8, 4, 4), nn.ReLU(), nn.Conv2d(8, 8, 2, 2), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 3)).eval()
    x = torch.randn(2, 1, 28, 28) + 2.0  # a non-zero border: its edge differs from the pad value 0
    default = undiscard.wrap(net, budget=4, units=[0, 1])
    assert DEFAULTS.extend == "replicate" and default.extend == DEFAULTS.extend
    explicit = undiscard.wrap(net, budget=4, units=[0, 1], extend="replicate")
    zero = undiscard.wrap(net, budget=4, units=[0, 1], extend="zero")
    for state in [(3, 1), (15, 3)]:  # these reach column/row 28 of the input, past its edge
        assert torch.equal(default.run_state(x, state), explicit.run_state(x, state))
        assert not torch.equal(default.run_state(x, state), zero.run_state(x, state))


def test_unknown_mode_is_one_line():
    with pytest.raises(UndiscardError, match="unknown extend mode 'edge'.*zero, replicate, background"):
        undiscard.wrap(nn.Conv2d(1, 1, 1).eval(), extend="edge")
