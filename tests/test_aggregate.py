"""Aggregation (docs/semantics.md, "Aggregation"): weights, alignment and the end-to-end forward against explicit references.

- ``uniform_weights``/``entropy_weights`` of ``normalized_entropy``: hand-computed numbers, extreme logits, fallbacks.
- ``align_maps`` against the definition: upsample by S (nearest), shift by the offset with zero fill,
  average-pool by S.
- ``wrap(...)(x)`` with ``align=False`` on a model whose head is global-average-pool + Linear (a linear
  map, so aggregating features equals aggregating logits) against per-state ``run_state`` logits.
- budget 1 is the original network, bit for bit.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import undiscard
from undiscard.tasks.aggregation import (
    align_maps,
    entropy_weights,
    normalized_entropy,
    shift_axis,
    uniform_weights,
    weighted_sum,
)

pytestmark = pytest.mark.usefixtures("one_thread")


LN = math.log


# --------------------------------------------------------------------------- weights


def test_normalized_entropy_hand() -> None:
    logits = torch.tensor([
        [0.0, 0.0, 0.0, 0.0],  # uniform: 1
        [LN(0.5), LN(0.25), LN(0.125), LN(0.125)],  # H = 1.75 ln 2 = 0.875 ln 4
        [30.0, 0.0, 0.0, 0.0],  # nearly one-hot: 3 e^-30 (30 + ...) / ln 4
    ], dtype=torch.float64)
    want = torch.tensor([1.0, 0.875, 6.277544868283868e-12], dtype=torch.float64)
    torch.testing.assert_close(normalized_entropy(logits), want, rtol=1e-9, atol=1e-15)
    two = torch.tensor([[0.0, LN(3.0)]], dtype=torch.float64)  # p = (1/4, 3/4)
    torch.testing.assert_close(normalized_entropy(two), torch.tensor([0.8112781244591328], dtype=torch.float64))
    # one class: zero entropy, shape kept
    assert torch.equal(normalized_entropy(torch.randn(2, 3, 1)), torch.zeros(2, 3))


def test_uniform_weights_hand() -> None:
    logits = torch.randn(2, 3, 5)
    w = uniform_weights(2, 3, logits.dtype, logits.device)
    torch.testing.assert_close(w, torch.full((2, 3), 1.0 / 3.0))


def test_entropy_weights_hand() -> None:
    logits = torch.tensor([[
        [0.0, 0.0, 0.0, 0.0],  # w = 0
        [LN(0.5), LN(0.25), LN(0.125), LN(0.125)],  # w = 0.125
        [30.0, 0.0, 0.0, 0.0],  # w = 1 - 6.3e-12
    ]], dtype=torch.float64)
    w = entropy_weights(normalized_entropy(logits))
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0 / 9.0, 8.0 / 9.0]], dtype=torch.float64),
                               rtol=1e-9, atol=1e-12)
    # K = 2: w = 1 - 0.8112781244591328 for p = (1/4, 3/4), 0 for uniform -> (1, 0) after normalising;
    # second image: two equal confident states -> (1/2, 1/2)
    logits2 = torch.tensor([[[0.0, LN(3.0)], [1.0, 1.0]],
                            [[0.0, LN(3.0)], [LN(3.0), 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(entropy_weights(normalized_entropy(logits2)),
                               torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64))
    # float32 version of the first case
    w32 = entropy_weights(normalized_entropy(logits.float()))
    assert w32.dtype == torch.float32
    torch.testing.assert_close(w32, torch.tensor([[0.0, 1.0 / 9.0, 8.0 / 9.0]]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_entropy_weights_extreme_logits(dtype: torch.dtype) -> None:
    logits = torch.tensor([[[1e4, -1e4, 0.0], [-1e4, 1e4, -1e4], [0.0, 0.0, 0.0], [1e4, 1e4, -1e4]],
                           [[-1e4, -1e4, -1e4], [1e4, 1e4, 1e4], [1e4, -1e4, 1e4], [5e3, -1e4, 1e4]]]).to(dtype)
    h = normalized_entropy(logits)
    assert not torch.isnan(h).any()
    assert ((h >= 0) & (h <= 1)).all()
    w = entropy_weights(normalized_entropy(logits))
    assert w.dtype == dtype
    assert not torch.isnan(w).any() and (w >= 0).all()
    torch.testing.assert_close(w.float().sum(1), torch.ones(2), rtol=1e-2 if dtype in (torch.float16, torch.bfloat16)
                               else 1e-5, atol=1e-3)
    # first image: one-hot, one-hot, uniform (w 0), two-way tie (w = 1 - ln 2 / ln 3 = 0.36907)
    tol = 2e-3 if dtype in (torch.float16, torch.bfloat16) else 1e-6
    want = torch.tensor([1.0, 1.0, 0.0, 0.3690702464285426]) / 2.3690702464285426
    torch.testing.assert_close(w[0].float(), want, rtol=tol, atol=tol)


def test_entropy_with_minus_inf_logits() -> None:
    """A masked class (-inf logit) has p = 0 and contributes 0 to the entropy, not NaN."""
    logits = torch.tensor([[0.0, float("-inf"), LN(3.0)], [0.0, float("-inf"), 0.0]], dtype=torch.float64)
    torch.testing.assert_close(normalized_entropy(logits),
                               torch.tensor([0.8112781244591328 * LN(2) / LN(3), LN(2) / LN(3)], dtype=torch.float64))
    w = entropy_weights(normalized_entropy(torch.stack([logits, torch.zeros(2, 3, dtype=torch.float64)], 1)))
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_uniform_falls_back_to_uniform_weights(dtype: torch.dtype) -> None:
    logits = torch.zeros(3, 4, 7, dtype=dtype)
    logits[1] += 5.0  # constant shift: still uniform
    logits[2] = -3e4
    w = entropy_weights(normalized_entropy(logits))
    assert not torch.isnan(w).any()
    torch.testing.assert_close(w, torch.full((3, 4), 0.25, dtype=dtype))


def test_normalized_entropy_in_unit_interval() -> None:
    g = torch.Generator().manual_seed(0)
    for scale in (1e-6, 1e-2, 1.0, 10.0, 1e3, 1e5):
        for k in (2, 3, 10, 1000):
            for dtype in (torch.float32, torch.float64):
                logits = (torch.randn(64, k, generator=g) * scale).to(dtype)
                h = normalized_entropy(logits)
                assert h.shape == (64,) and h.dtype == dtype
                assert ((h >= 0) & (h <= 1)).all(), (scale, k, dtype)
    # near-uniform logits do not exceed 1 by rounding
    assert float(normalized_entropy(torch.full((1, 1000), 3.7)).max()) <= 1.0


# --------------------------------------------------------------------------- alignment


def ref_align(maps: Tensor, offsets: Tensor, stride: int) -> Tensor:
    """Upsample by S (nearest), shift by (dy, dx) (content moves to larger indices; zero fill), pool by S."""
    n, b, c, h, w = maps.shape
    up = maps.repeat_interleave(stride, dim=3).repeat_interleave(stride, dim=4)
    hs, ws = h * stride, w * stride
    shifted = torch.zeros_like(up)
    for i in range(n):
        for j in range(b):
            dy, dx = (int(v) for v in offsets[i, j])
            ty0, ty1 = max(0, dy), min(hs, hs + dy)
            tx0, tx1 = max(0, dx), min(ws, ws + dx)
            if ty0 < ty1 and tx0 < tx1:
                shifted[i, j, :, ty0:ty1, tx0:tx1] = up[i, j, :, ty0 - dy:ty1 - dy, tx0 - dx:tx1 - dx]
    return F.avg_pool2d(shifted.flatten(0, 1), stride).unflatten(0, (n, b))


@pytest.mark.parametrize("stride", [1, 2, 3, 4, 8])
def test_align_maps_matches_definition(stride: int) -> None:
    g = torch.Generator().manual_seed(stride)
    n, b, c, h, w = 2, 5, 3, 4, 5
    maps = torch.randn(n, b, c, h, w, generator=g, dtype=torch.float64)
    hand = [(0, 0), (0, 1), (1, 0), (stride - 1, stride), (stride, 2 * stride + 1),
            (3 * stride + 2, 1), (h * stride, 0), (h * stride + 5, w * stride + 3),
            (stride + 1, stride - 1), (2, 3)]
    offsets = torch.tensor(hand, dtype=torch.long).view(n, b, 2)
    torch.testing.assert_close(align_maps(maps, offsets, stride), ref_align(maps, offsets, stride),
                               rtol=1e-12, atol=1e-12)
    rand = torch.randint(0, 3 * stride + 2, (n, b, 2), generator=g)
    torch.testing.assert_close(align_maps(maps, rand, stride), ref_align(maps, rand, stride), rtol=1e-12, atol=1e-12)


def test_align_maps_negative_offsets() -> None:
    g = torch.Generator().manual_seed(9)
    maps = torch.randn(1, 4, 2, 3, 3, generator=g, dtype=torch.float64)
    offsets = torch.tensor([[[-1, 0], [0, -3], [-5, 2], [-2, -2]]])
    torch.testing.assert_close(align_maps(maps, offsets, 2), ref_align(maps, offsets, 2), rtol=1e-12, atol=1e-12)


def test_align_maps_hand() -> None:
    # one row [1, 2, 3], S = 2, dx = 1: aligned = ((2-1)*m[i] + 1*m[i-1]) / 2 = [0.5, 1.5, 2.5]
    m = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).view(1, 1, 1, 1, 3)
    out = align_maps(m, torch.tensor([[[0, 1]]]), 2)
    assert out.flatten().tolist() == [0.5, 1.5, 2.5]
    # dx = S: whole-cell shift [0, 1, 2]; dx = 3: [0, 0.5, 1.5]
    assert align_maps(m, torch.tensor([[[0, 2]]]), 2).flatten().tolist() == [0.0, 1.0, 2.0]
    assert align_maps(m, torch.tensor([[[0, 3]]]), 2).flatten().tolist() == [0.0, 0.5, 1.5]
    # dy moves along rows only
    col = m.transpose(-1, -2)
    assert align_maps(col, torch.tensor([[[1, 0]]]), 2).flatten().tolist() == [0.5, 1.5, 2.5]


@pytest.mark.parametrize("stride", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_align_maps_zero_offset_is_identity(stride: int, dtype: torch.dtype) -> None:
    maps = torch.randn(2, 3, 4, 5, 6, dtype=dtype)
    out = align_maps(maps, torch.zeros(2, 3, 2, dtype=torch.long), stride)
    assert torch.equal(out, maps)


def test_shift_axis_shape_and_zero_fill() -> None:
    m = torch.ones(1, 2, 1, 4, 1)
    out = shift_axis(m, torch.tensor([[0, 8]]), 2, dim=3)  # second state shifted past the end
    assert out.shape == m.shape
    assert torch.equal(out[0, 0], m[0, 0]) and torch.equal(out[0, 1], torch.zeros_like(m[0, 1]))


# --------------------------------------------------------------------------- weighted sum


def test_weighted_sum_hand() -> None:
    maps = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # (N=1, B=2, 1, 2)
    w = torch.tensor([[0.25, 0.75]])
    assert weighted_sum(maps, w).tolist() == [[[2.5, 3.5]]]
    maps5 = torch.arange(2 * 3 * 2 * 1 * 2, dtype=torch.float64).view(2, 3, 2, 1, 2)
    w5 = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    want = torch.stack([maps5[0, 0], 0.2 * maps5[1, 0] + 0.3 * maps5[1, 1] + 0.5 * maps5[1, 2]])
    torch.testing.assert_close(weighted_sum(maps5, w5), want)
    # weights are cast to the maps' dtype
    assert weighted_sum(maps5.float(), w5).dtype == torch.float32


# --------------------------------------------------------------------------- end to end


def tiny_cnn(seed: int = 0, head_scale: float = 4.0) -> nn.Module:
    """Three strided conv units; head = global average pool + Linear (linear in the features)."""
    torch.manual_seed(seed)
    head = nn.Linear(16, 10)
    with torch.no_grad():
        head.weight.mul_(head_scale)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()


def images(n: int, size: int = 16, seed: int = 1, dtype: torch.dtype = torch.float64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g).to(dtype)


def per_state_logits(model: undiscard.Undiscard, x: Tensor) -> list[Tensor]:
    """(B, K) run_state logits of each image's searched states."""
    states = model.search(x)
    with torch.no_grad():
        return [torch.cat([model.run_state(x[i:i + 1], s) for s in per]) for i, per in enumerate(states)]


@pytest.mark.parametrize("budget", [2, 5, 16, 64])
@pytest.mark.parametrize("criterion", ["entropy", "offset"])
def test_end_to_end_mean_and_entropy_unaligned(budget: int, criterion: str) -> None:
    net = tiny_cnn().double()
    x = images(4)
    for aggregate in ("mean", "entropy"):
        model = undiscard.wrap(net, budget=budget, criterion=criterion, aggregate=aggregate, align=False,
                               units=[0, 1, 2])
        with torch.no_grad():
            got = model(x)
        assert got.shape == (4, 10) and got.dtype == torch.float64
        for i, logits in enumerate(per_state_logits(model, x)):
            assert logits.shape == (budget, 10)
            if aggregate == "mean":
                want = logits.mean(0)
            else:
                logp = torch.log_softmax(logits, -1)
                w = 1.0 - (-(logp.exp() * logp).sum(-1) / math.log(10))
                want = (w[:, None] * logits).sum(0) / w.sum()
            torch.testing.assert_close(got[i], want, rtol=1e-10, atol=1e-10)


def test_end_to_end_default_units() -> None:
    """Default units of a 3-unit model: the middle one (4 states); mean over all 4."""
    net = tiny_cnn(seed=3).double()
    x = images(3, seed=4)
    model = undiscard.wrap(net, budget=4, aggregate="mean", align=False)
    got = model(x)
    assert [u.name for u in model.search_units] == ["2"]
    want = torch.stack([model.run_state(x, (s,)) for s in range(4)]).mean(0)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_aligned_differs_but_is_finite() -> None:
    net = tiny_cnn().double()
    x = images(2)
    a = undiscard.wrap(net, budget=8, aggregate="mean", align=True, units=[0, 1, 2])(x)
    b = undiscard.wrap(net, budget=8, aggregate="mean", align=False, units=[0, 1, 2])(x)
    assert torch.isfinite(a).all() and a.shape == b.shape
    assert not torch.allclose(a, b)  # offsets up to 7 px on an 8-px stride grid do shift the maps


def _resnet18() -> nn.Module:
    try:
        from undiscard._compat import import_torchvision

        tv = import_torchvision()
    except Exception as exc:
        pytest.skip(f"torchvision unavailable: {exc}")
    torch.manual_seed(0)
    return tv.models.resnet18(num_classes=10).eval()


@pytest.mark.parametrize("which", ["tiny", "resnet18"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_budget_one_is_original_bit_for_bit(which: str, dtype: torch.dtype) -> None:
    net = (tiny_cnn() if which == "tiny" else _resnet18()).to(dtype)
    x = images(3, 16 if which == "tiny" else 32, dtype=dtype)
    model = undiscard.wrap(net, budget=1)
    with torch.no_grad():
        want = net(x)
        assert torch.equal(model(x), want)
    assert torch.equal(model(x).detach(), want)  # grad mode too
    with torch.inference_mode():
        assert torch.equal(model(x), net(x))
        assert model.search(x) == [[(0,) * len(model.search_units)]] * 3
    assert model.last_cost == 1.0


def test_budget_one_under_inference_mode_first_call() -> None:
    """The first call (which discovers units and builds the engine) may itself be under inference_mode."""
    net = tiny_cnn()
    x = images(2, dtype=torch.float32)
    model = undiscard.wrap(net, budget=1)
    with torch.inference_mode():
        assert torch.equal(model(x), net(x))
        model8 = undiscard.wrap(net, budget=4)
        y = model8(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()


@pytest.mark.parametrize("aggregate", ["mean", "entropy"])
@pytest.mark.parametrize("criterion", ["entropy", "random", "offset"])
def test_no_nan_with_huge_logits(aggregate: str, criterion: str) -> None:
    net = tiny_cnn(head_scale=1e4)
    with torch.no_grad():
        net[-1].bias.mul_(1e4)
    x = images(3, dtype=torch.float32) * 10
    with torch.no_grad():
        assert net(x).abs().max() > 1e3
    model = undiscard.wrap(net, budget=8, criterion=criterion, aggregate=aggregate, units=[0, 1, 2])
    y = model(x)
    assert torch.isfinite(y).all()
    # weights are not NaN even though softmax probabilities underflow
    cands = model.candidates(x)
    logits = torch.stack([torch.stack([c.logits for c in per]) for per in cands])
    w = entropy_weights(normalized_entropy(logits))
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w.sum(1), torch.ones(3))


def test_phase_is_a_translation_in_the_direction_alignment_undoes() -> None:
    """On a trained zoo model, phase (dy, dx) of the first unit ~ the original model on the input moved
    up-left by (dy, dx): that is why align_maps shifts a state's map down-right by its offset."""
    from undiscard import zoo
    from undiscard.data import load_fashion_mnist, preprocess, translate
    from undiscard.layers.plans import phase_plan

    name = next((n for n in zoo.list_models() if zoo.weights_path(n).exists()), None)
    if name is None:
        pytest.skip("no trained zoo weights in this checkout")
    images, _ = load_fashion_mnist("test")
    cfg = zoo.model_config(name)
    x = preprocess(images[:64], cfg["input_size"][-1], cfg["in_chans"])
    model = undiscard.wrap(zoo.create_model(name), budget=1, units=[0], example_input=x[:1])
    engine = model.prepare(x)
    unit = model.search_units[0]
    assert unit.in_size == tuple(x.shape[-2:]), "the first unit must see the input grid for this check"
    background = x.min()
    with torch.no_grad():
        for s in range(1, unit.num_phases):
            dy, dx = divmod(s, unit.rate)
            with phase_plan({engine.searched[0]: torch.full((x.shape[0],), s)}):
                phased = engine.split.features(x)
            err = {}
            for sign in (-1, 1):  # -1: content moved up-left by (dy, dx)
                moved = translate(x - background, sign * dy, sign * dx) + background
                err[sign] = ((phased - engine.split.features(moved)).norm() / phased.norm()).item()
            assert err[-1] < 0.5 * err[1], (s, err)
