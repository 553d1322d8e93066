"""Phase adapters: every phase equals an independently built dense result, sliced (docs/semantics.md, "Phases").

The references here never call the adapters' helpers: they pad with the layer's own mode, extend the
bottom/right edge by the convention (zeros for convs, -inf for max pooling, uncounted for average
pooling) to ``R*Ho + d*(k-1)`` rows, where (Ho, Wo) is taken from the layer's real forward, run a
stride-1 copy of the op (or explicit window sums/counts via ``F.unfold``), and slice
``[dy::R, dx::R][:Ho, :Wo]``.
"""
from __future__ import annotations

import copy
import importlib
import os
from types import ModuleType
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import Tensor, nn

from undiscard._compat import class_path, import_timm, import_torchvision
from undiscard.errors import PhaseError, UnsupportedLayerError
from undiscard.layers import get_adapter, polyphase, registered_classes

os.environ.setdefault("HF_HUB_OFFLINE", "1")

NEG_INF = float("-inf")
PROPERTY = settings(max_examples=40, deadline=None)


# --------------------------------------------------------------------------- optional packages


def _optional(importer: Callable[[], ModuleType], *modules: str) -> list[ModuleType]:
    try:
        importer()
        return [importlib.import_module(m) for m in modules]
    except Exception as exc:  # ImportError, or a broken optional install
        pytest.skip(f"optional package unavailable: {exc}")


@pytest.fixture(scope="module")
def timm_layers() -> ModuleType:
    conv_same, pool_same, blur, padding = _optional(
        import_timm, "timm.layers.conv2d_same", "timm.layers.pool2d_same", "timm.layers.blur_pool",
        "timm.layers.padding")
    return _ns(
        Conv2dSame=conv_same.Conv2dSame, Conv2dSameExport=conv_same.Conv2dSameExport,
        MaxPool2dSame=pool_same.MaxPool2dSame, AvgPool2dSame=pool_same.AvgPool2dSame,
        BlurPool2d=blur.BlurPool2d, pad_same=padding.pad_same)


@pytest.fixture(scope="module")
def lite() -> ModuleType:
    (utils,) = _optional(lambda: importlib.import_module("efficientnet_lite_pytorch"), "efficientnet_lite_pytorch.utils")
    return utils


def _ns(**kw: object) -> ModuleType:
    m = ModuleType("ns")
    m.__dict__.update(kw)
    return m


# --------------------------------------------------------------------------- reference machinery


def _extend(xp: Tensor, out_hw: tuple[int, int], rate: int, kernel: tuple[int, int],
            dilation: tuple[int, int], value: float) -> Tensor:
    """Extend past the bottom/right edge to at least R*Ho + d*(k-1) rows/cols with ``value``."""
    need_h = rate * out_hw[0] + dilation[0] * (kernel[0] - 1)
    need_w = rate * out_hw[1] + dilation[1] * (kernel[1] - 1)
    eh, ew = max(0, need_h - xp.shape[-2]), max(0, need_w - xp.shape[-1])
    return F.pad(xp, (0, ew, 0, eh), value=value)


def _slice(dense: Tensor, rate: int, phase: int, out_hw: tuple[int, int]) -> Tensor:
    dy, dx = divmod(phase, rate)
    return dense[..., dy::rate, dx::rate][..., : out_hw[0], : out_hw[1]]


def _windows(xp: Tensor, kernel: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> Tensor:
    """(N, C, H, W) -> (N, C, kh*kw, H', W'): every stride-1 window, via F.unfold."""
    n, c, h, w = xp.shape
    ho = h - dilation[0] * (kernel[0] - 1)
    wo = w - dilation[1] * (kernel[1] - 1)
    cols = F.unfold(xp, kernel, dilation=dilation)
    return cols.reshape(n, c, kernel[0] * kernel[1], ho, wo)


def _conv_dense(xp: Tensor, layer: nn.Module, weight: Tensor, bias: Tensor | None,
                dilation: tuple[int, int], groups: int) -> Tensor:
    """A stride-1, padding-0 nn.Conv2d built from the layer's config, applied to xp."""
    out_ch, in_per_group, kh, kw = weight.shape
    copy_ = nn.Conv2d(in_per_group * groups, out_ch, (kh, kw), stride=1, padding=0, dilation=dilation,
                      groups=groups, bias=bias is not None).to(weight.dtype)
    with torch.no_grad():
        copy_.weight.copy_(weight)
        if bias is not None:
            copy_.bias.copy_(bias)
    return copy_(xp)


def _max_dense(xp: Tensor, kernel: tuple[int, int], dilation: tuple[int, int],
               padded_hw: tuple[int, int] | None = None) -> Tensor:
    """Window maxima of xp. Windows starting at or past ``padded_hw`` (the size before the bottom/right
    extension) hold only extension: the convention gives 0 there."""
    out = _windows(xp, kernel, dilation).amax(dim=2)
    if padded_hw is not None:
        out[..., padded_hw[0]:, :] = 0
        out[..., :, padded_hw[1]:] = 0
    return out


def _avg_dense(xp: Tensor, counted: Tensor, kernel: tuple[int, int], divisor: int | None) -> Tensor:
    """Window sums of xp over window counts of the 0/1 mask ``counted`` (0/0 -> 0), or / divisor."""
    sums = _windows(xp, kernel).sum(dim=2)
    if divisor:
        return sums / divisor
    counts = _windows(counted, kernel).sum(dim=2)
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums))


def _check(layer: nn.Module, x: Tensor, reference: Callable[[Tensor, int, tuple[int, int]], Tensor],
           atol: float = 1e-10, channels_last: bool = False) -> None:
    """all_phases and one_phase equal ``reference(x, rate, out_hw)`` sliced, phase 0 equals layer(x)."""
    adapter = get_adapter(layer)
    assert adapter is not None, class_path(layer)
    rate = adapter.rate(layer)
    with torch.no_grad():
        y = layer(x)
        out_hw = tuple(y.shape[-3:-1]) if channels_last else tuple(y.shape[-2:])
        dense = reference(x, rate, out_hw)
        allp = polyphase(layer, x)
        assert allp.shape == (y.shape[0], rate * rate, *y.shape[1:])
        assert torch.equal(polyphase(layer, x, 0), y)
        for s in range(rate * rate):
            if channels_last:
                dy, dx = divmod(s, rate)
                ref = dense[..., dy::rate, dx::rate, :][..., : out_hw[0], : out_hw[1], :]
            else:
                ref = _slice(dense, rate, s, out_hw)
            if s == 0:  # the convention's phase 0 is the default forward
                torch.testing.assert_close(ref, y, atol=atol, rtol=1e-7)
            torch.testing.assert_close(allp[:, s], ref, atol=atol, rtol=1e-7)
            one = adapter.one_phase(layer, x, s)
            torch.testing.assert_close(one, ref, atol=atol, rtol=1e-7)
            if s > 0:
                assert torch.equal(polyphase(layer, x, s), one)


def _float32_phase0(layer: nn.Module, x: Tensor) -> None:
    layer32, x32 = copy.deepcopy(layer).float(), x.float()
    with torch.no_grad():
        assert torch.equal(polyphase(layer32, x32, 0), layer32(x32))


def _rand(seed: int, *shape: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------------- property tests

_sizes = st.integers(0, 6)
_seed = st.integers(0, 2**31 - 1)


@PROPERTY
@given(kh=st.integers(1, 4), kw=st.integers(1, 4), rate=st.integers(1, 4), ph=st.integers(0, 2),
       pw=st.integers(0, 2), dh=st.integers(1, 2), dw=st.integers(1, 2), groups=st.integers(1, 2),
       cin=st.integers(1, 2), cout=st.integers(1, 2), bias=st.booleans(),
       mode=st.sampled_from(["zeros", "reflect", "replicate", "circular"]), valid=st.booleans(),
       eh=_sizes, ew=_sizes, seed=_seed)
def test_conv2d_phases_property(kh, kw, rate, ph, pw, dh, dw, groups, cin, cout, bias, mode, valid,
                                eh, ew, seed):
    torch.manual_seed(seed)
    padding = "valid" if valid else (ph, pw)
    if valid:
        ph = pw = 0
    layer = nn.Conv2d(cin * groups, cout * groups, (kh, kw), stride=rate, padding=padding,
                      dilation=(dh, dw), groups=groups, bias=bias, padding_mode=mode).double()
    # smallest input with a non-empty output; reflect needs pad < size, circular pad <= size
    h = max(1, dh * (kh - 1) + 1 - 2 * ph, ph + 1) + eh
    w = max(1, dw * (kw - 1) + 1 - 2 * pw, pw + 1) + ew
    x = _rand(seed, 2, cin * groups, h, w)

    def reference(x, r, out_hw):
        xp = F.pad(x, (pw, pw, ph, ph), mode="constant" if mode == "zeros" else mode)
        xp = _extend(xp, out_hw, r, (kh, kw), (dh, dw), 0.0)
        return _conv_dense(xp, layer, layer.weight, layer.bias, (dh, dw), groups)

    _check(layer, x, reference)
    _float32_phase0(layer, x)


@PROPERTY
@given(kh=st.integers(1, 4), kw=st.integers(1, 4), rate=st.integers(2, 4), ph=st.integers(0, 2),
       pw=st.integers(0, 2), dh=st.integers(1, 2), dw=st.integers(1, 2), ceil=st.booleans(),
       eh=_sizes, ew=_sizes, seed=_seed)
def test_maxpool2d_phases_property(kh, kw, rate, ph, pw, dh, dw, ceil, eh, ew, seed):
    ph, pw = min(ph, kh // 2), min(pw, kw // 2)  # PyTorch (CPU): pad <= half the kernel
    layer = nn.MaxPool2d((kh, kw), stride=rate, padding=(ph, pw), dilation=(dh, dw), ceil_mode=ceil)
    h = max(1, dh * (kh - 1) + 1 - 2 * ph) + eh
    w = max(1, dw * (kw - 1) + 1 - 2 * pw) + ew
    x = _rand(seed, 2, 3, h, w)

    def reference(x, r, out_hw):
        xp = F.pad(x, (pw, pw, ph, ph), value=NEG_INF)
        padded_hw = tuple(xp.shape[-2:])
        xp = _extend(xp, out_hw, r, (kh, kw), (dh, dw), NEG_INF)
        return _max_dense(xp, (kh, kw), (dh, dw), padded_hw)

    _check(layer, x, reference)
    _float32_phase0(layer, x)


@PROPERTY
@given(kh=st.integers(1, 4), kw=st.integers(1, 4), rate=st.integers(2, 4), ph=st.integers(0, 2),
       pw=st.integers(0, 2), ceil=st.booleans(), include=st.booleans(),
       divisor=st.one_of(st.none(), st.integers(1, 5)), eh=_sizes, ew=_sizes, seed=_seed)
def test_avgpool2d_phases_property(kh, kw, rate, ph, pw, ceil, include, divisor, eh, ew, seed):
    ph, pw = min(ph, kh // 2), min(pw, kw // 2)  # PyTorch: pad <= half the kernel
    layer = nn.AvgPool2d((kh, kw), stride=rate, padding=(ph, pw), ceil_mode=ceil,
                         count_include_pad=include, divisor_override=divisor)
    h = max(1, kh - 2 * ph) + eh
    w = max(1, kw - 2 * pw) + ew
    x = _rand(seed, 2, 3, h, w)

    def reference(x, r, out_hw):
        xp = _extend(F.pad(x, (pw, pw, ph, ph)), out_hw, r, (kh, kw), (1, 1), 0.0)
        mask = F.pad(torch.ones_like(x[:, :1]), (pw, pw, ph, ph), value=1.0 if include else 0.0)
        mask = _extend(mask, out_hw, r, (kh, kw), (1, 1), 0.0)
        return _avg_dense(xp, mask, (kh, kw), divisor)

    _check(layer, x, reference)
    _float32_phase0(layer, x)


# --------------------------------------------------------------------------- hand-computed cases

X44 = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
#  0  1  2  3
#  4  5  6  7
#  8  9 10 11
# 12 13 14 15


def test_maxpool_2x2_by_hand():
    expected = torch.tensor([
        [[5, 7], [13, 15]],    # (0, 0): the default output
        [[6, 7], [14, 15]],    # (0, 1): right column windows see the -inf extension
        [[9, 11], [13, 15]],   # (1, 0)
        [[10, 11], [14, 15]],  # (1, 1)
    ], dtype=torch.float32)
    layer = nn.MaxPool2d(2, 2)
    assert torch.equal(polyphase(layer, X44), expected[None, :, None])
    for s in range(4):
        assert torch.equal(polyphase(layer, X44, s), expected[s][None, None])


def test_conv_all_ones_2x2_by_hand():
    layer = nn.Conv2d(1, 1, 2, stride=2, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    expected = torch.tensor([
        [[10, 18], [42, 50]],  # (0, 0): 0+1+4+5, 2+3+6+7, ...
        [[14, 10], [46, 26]],  # (0, 1): 1+2+5+6, 3+7 (+ zero extension), ...
        [[26, 34], [25, 29]],  # (1, 0): 4+5+8+9, 6+7+10+11, 12+13, 14+15
        [[30, 18], [27, 15]],  # (1, 1): 5+6+9+10, 7+11, 13+14, 15
    ], dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(polyphase(layer, X44), expected[None, :, None])
        for s in range(4):
            assert torch.equal(polyphase(layer, X44, s), expected[s][None, None])


def test_avgpool_2x2_by_hand_extension_not_counted():
    layer = nn.AvgPool2d(2, 2)
    expected = torch.tensor([
        [[2.5, 4.5], [10.5, 12.5]],
        [[3.5, 5.0], [11.5, 13.0]],    # (3+7)/2: the extension column is not counted
        [[6.5, 8.5], [12.5, 14.5]],
        [[7.5, 9.0], [13.5, 15.0]],    # 15/1 at the corner
    ])
    torch.testing.assert_close(polyphase(layer, X44), expected[None, :, None])
    for s in range(1, 4):
        torch.testing.assert_close(polyphase(layer, X44, s), expected[s][None, None])


def test_maxpool_ceil_mode_by_hand():
    # 3x3 input, kernel 2, stride 2, ceil_mode: output 2x2 whose last window holds one row/column.
    x = torch.arange(9, dtype=torch.float32).reshape(1, 1, 3, 3)
    layer = nn.MaxPool2d(2, 2, ceil_mode=True)
    expected = torch.tensor([
        [[4, 5], [7, 8]],          # the default forward
        [[5, 0], [8, 0]],          # windows starting at column 3 hold nothing but extension: empty -> 0
        [[7, 8], [0, 0]],
        [[8, 0], [0, 0]],
    ], dtype=torch.float32)
    assert torch.equal(layer(x), expected[0][None, None])
    assert torch.equal(polyphase(layer, x), expected[None, :, None])
    for s in range(4):
        assert torch.equal(polyphase(layer, x, s), expected[s][None, None])


@pytest.mark.parametrize("n, padding, expected_out", [(3, 1, 2), (4, 1, 3), (5, 0, 3), (6, 1, 4)])
def test_maxpool_ceil_mode_last_window_rule(n, padding, expected_out):
    """Ceil mode drops a last window that would start past input + left padding (PyTorch's rule)."""
    layer = nn.MaxPool2d(2, 2, padding=padding, ceil_mode=True)
    x = _rand(n, 1, 2, n, n)
    assert layer(x).shape[-1] == expected_out
    allp = polyphase(layer, x)
    assert allp.shape == (1, 4, 2, expected_out, expected_out)
    assert torch.equal(allp[:, 0], layer(x))


# --------------------------------------------------------------------------- conv details


@pytest.mark.filterwarnings("ignore:Using padding=.same.")
def test_conv_rate_one_same_padding():
    for mode in ("zeros", "reflect"):
        layer = nn.Conv2d(2, 3, (2, 3), stride=1, padding="same", dilation=(1, 2), padding_mode=mode).double()
        x = _rand(1, 2, 2, 5, 6)
        assert get_adapter(layer).rate(layer) == 1
        with torch.no_grad():
            allp = polyphase(layer, x)
            assert allp.shape == (2, 1, 3, 5, 6)
            torch.testing.assert_close(allp[:, 0], layer(x))
            torch.testing.assert_close(get_adapter(layer).one_phase(layer, x, 0), layer(x))


def test_all_phases_is_one_dense_pass(monkeypatch):
    layer = nn.Conv2d(2, 3, 3, stride=3, padding=1)
    x = torch.randn(1, 2, 10, 11)
    calls: list[tuple] = []
    real = F.conv2d

    def counting(inp, weight, bias=None, stride=1, *args, **kw):
        calls.append((tuple(inp.shape), stride))
        return real(inp, weight, bias, stride, *args, **kw)

    monkeypatch.setattr(F, "conv2d", counting)
    with torch.no_grad():
        allp = polyphase(layer, x)
        assert [c[1] for c in calls] == [1] and allp.shape[1] == 9
        calls.clear()
        polyphase(layer, x, 5)
        assert len(calls) == 1 and calls[0][1] == 3


def test_adapters_change_no_module_attribute():
    layers = [nn.Conv2d(2, 3, 3, stride=2, padding=1, padding_mode="reflect"),
              nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.AvgPool2d(3, 2, 1, count_include_pad=False)]
    x = torch.randn(1, 2, 7, 7)
    for layer in layers:
        before = {k: copy.copy(v) for k, v in vars(layer).items() if not k.startswith("_")}
        params = {k: v.clone() for k, v in layer.state_dict().items()}
        with torch.no_grad():
            polyphase(layer, x)
            polyphase(layer, x, 3)
        assert {k: v for k, v in vars(layer).items() if not k.startswith("_")} == before
        assert all(torch.equal(params[k], v) for k, v in layer.state_dict().items())


# --------------------------------------------------------------------------- timm layers


@pytest.mark.parametrize("k, stride, dilation, size", [(3, 2, 1, (9, 8)), (4, 3, 1, (7, 11)), (3, 2, 2, (6, 5)),
                                                       (1, 2, 1, (5, 5)), (5, 4, 1, (1, 2))])
def test_timm_conv2d_same(timm_layers, k, stride, dilation, size):
    for cls in (timm_layers.Conv2dSame, timm_layers.Conv2dSameExport):
        layer = cls(3, 4, k, stride=stride, dilation=dilation).double()
        x = _rand(k, 2, 3, *size)
        with torch.no_grad():  # before any forward: the export variant has no cached pad yet
            adapter = get_adapter(layer)
            assert type(adapter).__name__.startswith("TimmConv2dSame")
            allp = polyphase(layer, x)
            assert getattr(layer, "pad", None) is None
            _ = adapter.one_phase(layer, x, 1)
            assert getattr(layer, "pad", None) is None

        def reference(x, r, out_hw):
            xp = timm_layers.pad_same(x, (k, k), (stride, stride), (dilation, dilation))
            xp = _extend(xp, out_hw, r, (k, k), (dilation, dilation), 0.0)
            return _conv_dense(xp, layer, layer.weight, layer.bias, (dilation, dilation), 1)

        _check(layer, x, reference)
        torch.testing.assert_close(allp, polyphase(layer, x))


def test_timm_conv2d_same_export_uses_cached_pad(timm_layers):
    layer = timm_layers.Conv2dSameExport(2, 3, 3, stride=2).double()
    with torch.no_grad():
        layer(_rand(0, 1, 2, 8, 8))  # caches ZeroPad2d((0, 1, 0, 1)) for 8x8 inputs
    x = _rand(1, 1, 2, 9, 9)  # same-padding for 9x9 would be (1, 1): the layer keeps (0, 1)

    def reference(x, r, out_hw):
        xp = _extend(F.pad(x, (0, 1, 0, 1)), out_hw, r, (3, 3), (1, 1), 0.0)
        return _conv_dense(xp, layer, layer.weight, layer.bias, (1, 1), 1)

    _check(layer, x, reference)


@pytest.mark.parametrize("filt, stride, mode, channels", [(3, 2, "reflect", 4), (5, 2, "constant", None),
                                                          (3, 3, "replicate", None), (4, 2, "reflect", 4)])
def test_timm_blurpool(timm_layers, filt, stride, mode, channels):
    layer = timm_layers.BlurPool2d(channels=channels, filt_size=filt, stride=stride, pad_mode=mode).double()
    x = _rand(filt, 2, 4, 9, 8)
    coeffs = torch.tensor([1.0, 1.0], dtype=torch.float64)
    for _ in range(filt - 2):
        coeffs = torch.tensor([1.0] + [a + b for a, b in zip(coeffs[:-1], coeffs[1:])] + [1.0], dtype=torch.float64)
    kernel2d = torch.outer(coeffs, coeffs) / coeffs.sum() ** 2
    p = ((stride - 1) + (filt - 1)) // 2

    def reference(x, r, out_hw):
        xp = _extend(F.pad(x, (p, p, p, p), mode=mode), out_hw, r, (filt, filt), (1, 1), 0.0)
        return _conv_dense(xp, layer, kernel2d.expand(4, 1, filt, filt), None, (1, 1), 4)

    _check(layer, x, reference)


@pytest.mark.parametrize("k, stride, ceil, size", [(3, 2, False, (9, 8)), (2, 2, True, (7, 5)), (3, 3, False, (4, 10))])
def test_timm_pool2d_same(timm_layers, k, stride, ceil, size):
    x = _rand(k, 2, 3, *size)

    def max_ref(x, r, out_hw):
        xp = timm_layers.pad_same(x, (k, k), (stride, stride), (1, 1), value=NEG_INF)
        return _max_dense(_extend(xp, out_hw, r, (k, k), (1, 1), NEG_INF), (k, k), (1, 1), tuple(xp.shape[-2:]))

    layer = timm_layers.MaxPool2dSame(k, stride=stride, ceil_mode=ceil)
    # timm's constructor passes ceil_mode into nn.MaxPool2d's return_indices slot; its forward
    # ignores return_indices. Check the layer as built, then with ceil_mode really on.
    _check(layer, x, max_ref)
    if ceil:
        layer.ceil_mode, layer.return_indices = True, False
        _check(layer, x, max_ref)
    for include in (True, False):  # timm pads explicit zeros: always counted
        layer = timm_layers.AvgPool2dSame(k, stride=stride, ceil_mode=ceil, count_include_pad=include)

        def avg_ref(x, r, out_hw):
            xp = timm_layers.pad_same(x, (k, k), (stride, stride))
            mask = torch.ones_like(xp[:, :1])
            return _avg_dense(_extend(xp, out_hw, r, (k, k), (1, 1), 0.0),
                              _extend(mask, out_hw, r, (k, k), (1, 1), 0.0), (k, k), None)

        _check(layer, x, avg_ref)


# --------------------------------------------------------------------------- efficientnet-lite layers


@pytest.mark.parametrize("k, stride, size", [(3, 2, (9, 9)), (5, 2, (8, 7)), (3, 2, (12, 12)), (1, 2, (5, 6))])
def test_lite_convs(lite, k, stride, size):
    x = _rand(k, 2, 3, *size)
    static = lite.Conv2dStaticSamePadding(3, 4, k, stride=stride, image_size=9).double()
    dynamic = lite.Conv2dDynamicSamePadding(3, 4, k, stride=stride).double()

    def static_ref(x, r, out_hw):
        xp = _extend(static.static_padding(x), out_hw, r, (k, k), (1, 1), 0.0)
        return _conv_dense(xp, static, static.weight, static.bias, (1, 1), 1)

    def dynamic_ref(x, r, out_hw):
        total = [max((-(-n // stride) - 1) * stride + k - n, 0) for n in x.shape[-2:]]
        xp = F.pad(x, (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2))
        return _conv_dense(_extend(xp, out_hw, r, (k, k), (1, 1), 0.0), dynamic, dynamic.weight,
                           dynamic.bias, (1, 1), 1)

    _check(static, x, static_ref)
    _check(dynamic, x, dynamic_ref)


@pytest.mark.parametrize("k, stride, size, padding", [(3, 2, (9, 9), 0), (2, 2, (7, 8), 1), (3, 3, (10, 9), 1)])
def test_lite_maxpools(lite, k, stride, size, padding):
    x = _rand(k, 2, 3, *size)
    static = lite.MaxPool2dStaticSamePadding(k, stride, image_size=9, padding=padding)
    dynamic = lite.MaxPool2dDynamicSamePadding(k, stride, padding=padding)

    def ref_after(xz, r, out_hw):  # the layer's zero "same" padding, then its -inf padding
        xp = F.pad(xz, (padding,) * 4, value=NEG_INF)
        return _max_dense(_extend(xp, out_hw, r, (k, k), (1, 1), NEG_INF), (k, k), (1, 1), tuple(xp.shape[-2:]))

    def dynamic_ref(x, r, out_hw):
        total = [max((-(-n // stride) - 1) * stride + k - n, 0) for n in x.shape[-2:]]
        xz = F.pad(x, (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2))
        return ref_after(xz, r, out_hw)

    _check(static, x, lambda x, r, o: ref_after(static.static_padding(x), r, o))
    _check(dynamic, x, dynamic_ref)
    with pytest.raises(UnsupportedLayerError, match="return_indices"):
        polyphase(lite.MaxPool2dDynamicSamePadding(k, stride, return_indices=True), x)


# --------------------------------------------------------------------------- patch merging


def _merging_layers() -> list[nn.Module]:
    tv_swin = _optional(import_torchvision, "torchvision.models.swin_transformer")[0]
    timm_mods = _optional(import_timm, "timm.models.swin_transformer", "timm.models.swin_transformer_v2",
                          "timm.models.swin_transformer_v2_cr")
    return [tv_swin.PatchMerging(3), tv_swin.PatchMergingV2(3)] + [m.PatchMerging(3) for m in timm_mods]


@pytest.mark.parametrize("size", [(6, 4), (5, 7), (1, 1), (3, 2)])
def test_patch_merging(size):
    for layer in _merging_layers():
        layer = layer.double().eval()
        with torch.no_grad():  # non-trivial norm affine parameters
            for p in layer.norm.parameters():
                p.copy_(torch.randn_like(p))
        x = _rand(size[0] * 7 + size[1], 2, *size, 3)
        ho, wo = -(-size[0] // 2), -(-size[1] // 2)

        def reference(x, r, out_hw):
            # phase (dy, dx) = the layer itself on its input shifted up/left by (dy, dx), zero-filled;
            # stack the four into a dense map for _check's slicing.
            xe = F.pad(x, (0, 0, 0, 2 * wo + 1 - x.shape[-2], 0, 2 * ho + 1 - x.shape[-3]))
            dense = None
            for s in range(4):
                dy, dx = divmod(s, 2)
                y = layer(xe[:, dy:dy + 2 * ho, dx:dx + 2 * wo])
                if dense is None:
                    dense = y.new_zeros(y.shape[0], 2 * ho, 2 * wo, y.shape[-1])
                dense[:, dy::2, dx::2] = y
            return dense

        _check(layer, x, reference, channels_last=True)
        assert polyphase(layer, x).shape == (2, 4, ho, wo, layer.reduction.out_features)


# --------------------------------------------------------------------------- registration and errors


def test_registered_paths_name_the_real_classes():
    real: list[type] = [nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d]
    try:
        import_timm()
        for mod, names in [("timm.layers.conv2d_same", ["Conv2dSame", "Conv2dSameExport"]),
                           ("timm.layers.pool2d_same", ["MaxPool2dSame", "AvgPool2dSame"]),
                           ("timm.layers.blur_pool", ["BlurPool2d"]),
                           ("timm.models.swin_transformer", ["PatchMerging"]),
                           ("timm.models.swin_transformer_v2", ["PatchMerging"]),
                           ("timm.models.swin_transformer_v2_cr", ["PatchMerging"]),
                           ("torchvision.models.swin_transformer", ["PatchMerging", "PatchMergingV2"])]:
            real += [getattr(importlib.import_module(mod), n) for n in names]
    except ImportError:
        pass
    try:
        utils = importlib.import_module("efficientnet_lite_pytorch.utils")
        real += [utils.Conv2dStaticSamePadding, utils.Conv2dDynamicSamePadding,
                 utils.MaxPool2dStaticSamePadding, utils.MaxPool2dDynamicSamePadding]
    except ImportError:
        pass
    registered = set(registered_classes())
    for cls in real:
        assert class_path(cls) in registered, class_path(cls)


def test_phase_out_of_range_and_not_int():
    layer, x = nn.Conv2d(1, 1, 3, stride=2), torch.randn(1, 1, 8, 8)
    for bad in (4, -1, 100):
        with pytest.raises(PhaseError, match="out of range"):
            polyphase(layer, x, bad)
    for bad in (1.0, True, "1", torch.tensor(1)):
        with pytest.raises(PhaseError, match="must be an int"):
            polyphase(layer, x, bad)
    with pytest.raises(PhaseError, match="out of range"):
        get_adapter(layer).one_phase(layer, x, 4)


@pytest.mark.parametrize("layer", [nn.Conv2d(1, 1, 3, stride=(2, 1)), nn.MaxPool2d(2, stride=(1, 2)),
                                   nn.AvgPool2d((2, 3))])
def test_non_square_stride(layer):
    with pytest.raises(UnsupportedLayerError, match=type(layer).__name__) as info:
        polyphase(layer, torch.randn(1, 1, 8, 8))
    stride = tuple(layer.stride) if not isinstance(layer.stride, int) else layer.stride
    assert str(stride) in str(info.value)


def test_maxpool_return_indices_unsupported():
    with pytest.raises(UnsupportedLayerError, match="return_indices"):
        polyphase(nn.MaxPool2d(2, return_indices=True), torch.randn(1, 1, 4, 4), 1)


def test_unregistered_subclass_is_not_adapted():
    class DoubledConv(nn.Conv2d):
        def forward(self, x):
            return 2 * super().forward(x)

    layer = DoubledConv(1, 1, 3, stride=2)
    assert get_adapter(layer) is None
    for phase in (None, 1):
        with pytest.raises(UnsupportedLayerError, match="DoubledConv"):
            polyphase(layer, torch.randn(1, 1, 8, 8), phase)


@pytest.mark.parametrize("layer, size", [(nn.Conv2d(1, 1, 5, stride=2), (3, 7)),
                                         (nn.MaxPool2d(3, 2), (2, 2)),
                                         (nn.AvgPool2d(4, 2, padding=1), (7, 1))])
def test_input_too_small(layer, size):
    x = torch.randn(1, 1, *size)
    for phase in (None, 1):
        with pytest.raises(PhaseError, match=f"{size[0]}x{size[1]}"):
            polyphase(layer, x, phase)


def test_patch_merging_input_too_small():
    layer = _merging_layers()[0]
    with pytest.raises(PhaseError, match="0x4"):
        polyphase(layer, torch.randn(1, 0, 4, 3))
