"""Image-space TTA of a segmenter (``undiscard.TTA(..., task="segmentation")``): de-augmentation, aggregation
spaces, cost, composition with wrap.

Invariants in the style of qubvel/ttach: the identity view is the network itself, bit for bit; flips are
undone exactly; flip TTA of a flip-equivariant network is the network; costs are FLOP ratios."""
from __future__ import annotations

import functools
import importlib.util
import math

import pytest
import torch
from torch import nn

import undiscard
from undiscard.data.shift import translate
from undiscard.errors import UndiscardError
from undiscard.tasks.base import TASKS
from undiscard.tta import (
    DENSE_POLICIES,
    TTA,
    DenseView,
    dense_policy_views,
    make_aggregator,
    parse_dense_view,
)

pytestmark = pytest.mark.usefixtures("one_thread")
K = 5
SegTTA = functools.partial(TTA, task="segmentation")


def combine_dense(logits: torch.Tensor, aggregate: str) -> torch.Tensor:
    """The dense aggregate ``aggregate`` of (N, V, K, H, W) view logits."""
    return make_aggregator(aggregate, logits.shape[1], task="segmentation")(logits)


def conv_net(seed: int = 0, symmetric: bool = False) -> nn.Module:
    """A stride-1 fully convolutional segmenter (N, 3, H, W) -> (N, K, H, W); ``symmetric``: every kernel
    is mirror-symmetric left-right, so the network commutes with a horizontal flip."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, K, 3, padding=1)).eval()
    if symmetric:
        with torch.no_grad():
            for m in net:
                if isinstance(m, nn.Conv2d):
                    m.weight.copy_((m.weight + m.weight.flip(-1)) / 2)
    return net


class PixelNet(nn.Module):
    """Per-pixel (1x1) logits: exactly flip-equivariant, any flip."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.w = nn.Parameter(torch.randn(K, 3), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("kc,nchw->nkhw", self.w, x)


class DictNet(nn.Module):
    """torchvision-style segmenter output: {"out": logits, "aux": ...}."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        y = self.net(x)
        return {"out": y, "aux": y * 2}


X = torch.randn(3, 3, 20, 24)


# --- views -----------------------------------------------------------------------------------------
def test_flip_deaugmentation_is_exact():
    for view in (DenseView(hflip=True), DenseView(vflip=True), DenseView(hflip=True, vflip=True), DenseView()):
        aug = view.apply(X)
        assert torch.equal(view.invert(aug, (20, 24)), X)
        if view.hflip or view.vflip:
            assert not torch.equal(aug, X)
    assert torch.equal(DenseView(hflip=True).apply(X), X.flip(-1))
    assert torch.equal(DenseView(vflip=True).apply(X), X.flip(-2))


def test_padding_is_cropped_exactly():
    # a 20x24 input padded to 32x32 (size_divisor 16): the padding is cropped off the output exactly
    for view in (DenseView(), DenseView(hflip=True)):
        aug = view.apply(X, size_divisor=16, pad_value=-7.0)
        assert aug.shape[-2:] == (32, 32)
        assert (aug[..., 20:, :] == -7.0).all() and (aug[..., :, 24:] == -7.0).all()
        assert torch.equal(view.invert(aug, (20, 24), size_divisor=16), X)
    edge = DenseView().apply(X, 16, "edge")
    assert torch.equal(edge[..., 25, :24], X[..., 19, :])
    per_channel = DenseView().apply(X, 16, (1.0, 2.0, 3.0))
    assert [float(per_channel[0, c, -1, -1]) for c in range(3)] == [1.0, 2.0, 3.0]


def test_scale_views():
    v = DenseView(scale=0.75)
    assert v.resized_size(96, 96) == (72, 72) and DenseView(scale=1.25).resized_size(96, 96) == (120, 120)
    assert v.apply(X).shape[-2:] == (15, 18)
    flat = torch.full((1, 3, 20, 24), 0.3)
    back = DenseView(scale=1.25, hflip=True).invert(DenseView(scale=1.25, hflip=True).apply(flat), (20, 24))
    assert back.shape == flat.shape and torch.allclose(back, flat)
    # a ramp survives resizing there and back (bilinear, align_corners=False) inside the image
    ramp = torch.linspace(0, 1, 24).expand(1, 3, 20, 24).contiguous()
    up = DenseView(scale=2.0)
    assert torch.allclose(up.invert(up.apply(ramp), (20, 24))[..., 2:-2], ramp[..., 2:-2], atol=1e-5)


def test_shift_views():
    v = parse_dense_view("hflip+shift:2;-1")
    assert v == DenseView(hflip=True, shift=(2, -1)) and v.name == "hflip+shift:2;-1"
    aug = v.apply(X)
    assert torch.equal(aug[..., 2:, :23], X.flip(-1)[..., :-2, 1:])  # content moved down 2, left 1
    back = v.invert(aug, (20, 24))
    assert torch.equal(back[..., :-2, :-1], X[..., :-2, :-1])  # exact wherever the content was kept (the shift
    # is in the flipped frame: its lost column is the original last one)
    assert len(dense_policy_views("flip,shift")) == 4


def test_parsing_and_policies():
    assert parse_dense_view("identity") == DenseView()
    assert parse_dense_view("hflip+scale:1.25").name == "hflip+scale:1.25"
    assert [v.name for v in dense_policy_views("flip")] == ["identity", "hflip"]
    assert [v.name for v in dense_policy_views("multiscale")] == ["scale:0.75", "identity", "scale:1.25"]
    assert len(dense_policy_views("flip, multiscale")) == 6 and len(dense_policy_views("flips")) == 4
    assert [v.name for v in dense_policy_views("identity,vflip,scale:0.5")] == ["identity", "vflip", "scale:0.5"]
    for name in DENSE_POLICIES:
        names = [v.name for v in dense_policy_views(name)]
        assert len(set(names)) == len(names)
    for bad, msg in (("spin", "unknown dense view"), ("scale:0", "positive"), ("scale:x", "bad scale"),
                     ("hflip,hflip", "repeated"), ("", "at least one view")):
        with pytest.raises(UndiscardError, match=msg):
            dense_policy_views(bad)
    with pytest.raises(UndiscardError, match="aggregate"):
        SegTTA(conv_net(), aggregate="median")


# --- the module ------------------------------------------------------------------------------------
@torch.no_grad()
def test_identity_view_is_the_network_bit_for_bit():
    net = conv_net()
    y = net(X)
    assert torch.equal(SegTTA(net, ["identity"], "logits")(X), y)
    tta = SegTTA(net, "flip,multiscale")
    views = tta.view_logits(X)
    assert views.shape == (3, 6, K, 20, 24)
    assert torch.equal(views[:, [v.name for v in tta.views].index("identity")], y)
    assert torch.equal(SegTTA(DictNet(net), ["identity"], "logits")(X), y)  # {"out": ...} outputs


@torch.no_grad()
def test_flip_tta_of_a_flip_equivariant_network_is_the_network():
    pix = PixelNet()
    for policy in ("flip", "flips"):
        views = SegTTA(pix, policy).view_logits(X)
        assert all(torch.equal(views[:, v], pix(X)) for v in range(views.shape[1]))  # exactly, per view
        assert torch.equal(SegTTA(pix, policy, "logits")(X), pix(X))
    sym = conv_net(symmetric=True)
    assert torch.allclose(SegTTA(sym, "flip", "logits")(X), sym(X), atol=1e-5)
    assert torch.allclose(SegTTA(sym, "flip", "mean")(X), torch.log_softmax(sym(X), 1), atol=1e-5)
    plain = conv_net()  # not equivariant: its flip view differs
    assert not torch.allclose(SegTTA(plain, "flip", "logits")(X), plain(X), atol=1e-3)


@torch.no_grad()
def test_aggregation_spaces():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, K, 4, 5) * 4
    p = logits.softmax(2)
    assert torch.allclose(combine_dense(logits, "mean").exp(), p.mean(1), atol=1e-6)  # probabilities (mmseg)
    assert torch.equal(combine_dense(logits, "logits"), logits.mean(1))
    g = torch.log_softmax(logits, 2).mean(1)
    assert torch.allclose(combine_dense(logits, "gmean"), torch.log_softmax(g, 1), atol=1e-6)
    m = p.amax(1)
    assert torch.allclose(combine_dense(logits, "max").exp(), m / m.sum(1, keepdim=True), atol=1e-6)
    for agg in ("mean", "gmean", "max"):
        assert torch.allclose(combine_dense(logits, agg).exp().sum(1), torch.ones(2, 4, 5), atol=1e-5)
    huge = torch.tensor([0.0, 1e4]).view(1, 1, 2, 1, 1).expand(1, 2, 2, 1, 1)  # no NaN when probabilities underflow
    assert combine_dense(huge, "mean").isfinite().all()
    # mean of probabilities != mean of logits: one very confident view outvotes two fairly sure ones in logits
    a = torch.tensor([[20.0, 0.0], [0.0, 3.0], [0.0, 3.0]]).view(1, 3, 2, 1, 1)
    assert combine_dense(a, "logits").argmax(1).item() == 0 and combine_dense(a, "mean").argmax(1).item() == 1


@torch.no_grad()
def test_cost_is_counted_in_plain_forwards():
    net = conv_net()
    x = torch.randn(2, 3, 96, 96)
    tta = SegTTA(net, "flip")
    tta(x)
    assert tta.last_cost == 2.0
    ms = SegTTA(net, "multiscale")
    ms(x)  # a stride-1 conv net: FLOPs follow pixels, 72² + 96² + 120² over 96²
    assert ms.last_cost == pytest.approx(0.75 ** 2 + 1 + 1.25 ** 2, rel=1e-6)
    padded = SegTTA(net, "multiscale", size_divisor=32)
    out = padded(x)  # 72 -> padded to 96, 120 -> 128: padding is paid for
    assert out.shape == (2, K, 96, 96)
    assert padded.last_cost == pytest.approx(1 + 1 + (128 / 96) ** 2, rel=1e-6)
    both = SegTTA(net, "flip,multiscale", size_divisor=32)
    both(x)
    assert both.last_cost == pytest.approx(2 * padded.last_cost, rel=1e-6)
    with pytest.raises(UndiscardError, match="wrap"):
        tta(x, phase_budget=2)


@torch.no_grad()
def test_around_a_wrapped_model():
    net = conv_net()
    wrapped = undiscard.wrap(net, budget=1)
    plain, around = SegTTA(net, "flip,multiscale"), SegTTA(wrapped, "flip,multiscale")
    assert torch.equal(around(X), plain(X))  # budget 1 is net(x) bit for bit, in every view
    assert around.last_cost == pytest.approx(plain.last_cost)


class StridedSeg(nn.Module):
    """A small encoder-decoder segmenter with two stride-2 convolutions and a bilinear upsampling."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                                 nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(16, K, 1)

    def forward(self, x):
        return nn.functional.interpolate(self.head(self.enc(x)), size=x.shape[-2:], mode="bilinear",
                                         align_corners=False)


@pytest.mark.skipif("segmentation" not in TASKS, reason="the segmentation task is not registered yet")
@torch.no_grad()
def test_flip_times_ours_counts_every_search():
    net = StridedSeg().eval()
    x = torch.randn(2, 3, 32, 32)
    model = undiscard.wrap(net, budget=2, task="segmentation")
    tta = SegTTA(model, "flip")
    out = tta(x)
    assert out.shape == (2, K, 32, 32) and out.isfinite().all()
    assert tta.last_cost > 2.0  # two views, each a search of 2 states
    model(x)
    one = model.last_cost
    tta(x[:1])
    assert tta.last_cost >= one - 1e-9
    assert torch.equal(SegTTA(model, "flip")(x, phase_budget=1), SegTTA(net, "flip")(x))


@pytest.mark.skipif(importlib.util.find_spec("segmentation_models_pytorch") is None,
                    reason="segmentation_models_pytorch (undiscard[seg]) not installed")
@torch.no_grad()
def test_zoo_segmenter_multiscale_with_padding():
    from undiscard.data import segmentation as segdata
    from undiscard.zoo import segmentation as segzoo

    images, _ = segdata.load_seg_test()
    x = segdata.to_input(images[:2])
    net = segzoo.create_model("seg_fpn")
    black = -segdata.MEAN / segdata.STD
    tta = SegTTA(net, "flip,multiscale", size_divisor=32, pad_value=black)
    out = tta(x)  # 72 and 120 px are not multiples of smp's 32: padded to 96 and 128
    assert out.shape == (2, segdata.NUM_CLASSES, 96, 96)
    assert 2 * (1 + 1) < tta.last_cost < 2 * (1 + 1 + 2)
    assert torch.equal(tta.view_logits(x)[:, 2], net(x))  # the identity view (policy: scale, then flip)


def _by_hand(net: nn.Module, x: torch.Tensor, views: list[tuple[bool, float, tuple[int, int]]]) -> torch.Tensor:
    """De-augmented view logits (N, V, K, H, W) composed by hand: each view (hflip, scale, shift) resizes
    the input bilinearly, flips it, translates it with edge fill; the output is translated back, flipped
    back and resized to the input's size. Views of one input shape run as one batch, as the TTA does."""
    h, w = x.shape[-2:]
    inputs = []
    for flip, scale, (dy, dx) in views:
        v = x if scale == 1 else nn.functional.interpolate(x, size=(int(h * scale + 0.5), int(w * scale + 0.5)),
                                                           mode="bilinear", align_corners=False)
        v = v.flip(-1) if flip else v
        inputs.append(translate(v, dy, dx, fill="edge") if (dy, dx) != (0, 0) else v)
    outs: list[torch.Tensor | None] = [None] * len(views)
    for shape in dict.fromkeys(tuple(v.shape) for v in inputs):
        idx = [i for i, v in enumerate(inputs) if tuple(v.shape) == shape]
        y = net(torch.cat([inputs[i] for i in idx]))
        for j, i in enumerate(idx):
            flip, scale, (dy, dx) = views[i]
            o = y[j * len(x):(j + 1) * len(x)]
            o = translate(o, -dy, -dx, fill="edge") if (dy, dx) != (0, 0) else o
            o = o.flip(-1) if flip else o
            outs[i] = o if scale == 1 else nn.functional.interpolate(o, size=(h, w), mode="bilinear",
                                                                     align_corners=False)
    return torch.stack(outs, 1)


@torch.no_grad()
def test_tta_on_a_segmenter_equals_the_views_composed_by_hand():
    """``TTA(net, policy, aggregate, task="segmentation")``: the views' de-augmented logits are the flips,
    shifts and scales composed by hand, bit for bit, and every dense aggregate is its formula on them — for
    a plain segmenter and around a wrapped one (whose task the TTA takes: no task= needed)."""
    net = conv_net()
    policies = {"flip": [(False, 1.0, (0, 0)), (True, 1.0, (0, 0))],
                "flip,shift": [(False, 1.0, (0, 0)), (True, 1.0, (0, 0)), (False, 1.0, (2, 2)), (True, 1.0, (2, 2))],
                "multiscale": [(False, 0.75, (0, 0)), (False, 1.0, (0, 0)), (False, 1.25, (0, 0))]}
    for policy, views in policies.items():
        want = _by_hand(net, X, views)
        assert torch.equal(SegTTA(net, policy).view_logits(X), want)
        logp = torch.log_softmax(want, 2)
        formulas = {"mean": torch.logsumexp(logp, 1) - math.log(len(views)), "logits": want.mean(1),
                    "gmean": torch.log_softmax(logp.mean(1), 1), "max": torch.log_softmax(logp.amax(1), 1)}
        for aggregate, formula in formulas.items():
            tta = SegTTA(net, policy, aggregate)
            assert torch.equal(tta(X), formula), (policy, aggregate)
            assert tta.task == "segmentation" and tta.last_cost == pytest.approx(
                sum((1 if s == 1 else round(20 * s) * round(24 * s) / (20 * 24)) for _, s, _ in views), rel=0.05)
    assert torch.allclose(formulas["mean"].exp(), want.softmax(2).mean(1), atol=1e-6)  # probabilities averaged
    wrapped = undiscard.wrap(net, budget=1, task="segmentation")
    around = TTA(wrapped, "flip")  # the wrapped model's task
    assert around.task == "segmentation" and torch.equal(around(X), SegTTA(net, "flip")(X))
    assert TTA(undiscard.wrap(net, budget=1), "flip").task == "classification"  # task=None: classification
    with pytest.raises(UndiscardError, match="size_divisor and pad_value are for task='segmentation'"):
        TTA(net, "flip", size_divisor=32)
