"""Image-space TTA: views, policies, aggregators (fitted on synthetic logits), files, and `wrap` inside."""
from __future__ import annotations

import pytest
import torch

from undiscard import TTA, wrap, zoo
from undiscard.data import load_fashion_mnist, preprocess
from undiscard.errors import UndiscardError
from undiscard.tta import (
    POLICIES,
    TTAFileError,
    load_tta,
    make_aggregator,
    parse_view,
    policy_views,
)

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = "resnext"

images, labels = load_fashion_mnist("test")
X = preprocess(images[:8])


@pytest.fixture(scope="module")
def net():
    return zoo.create_model(MODEL)


# --- views ------------------------------------------------------------------------------------
def test_views_by_hand():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(parse_view("identity")(x), x)
    assert torch.equal(parse_view("hflip")(x), x.flip(-1))
    # content moves down 1, right 2; the edge pixels fill in
    expected = torch.tensor([[0., 0, 0, 1], [0, 0, 0, 1], [4, 4, 4, 5], [8, 8, 8, 9]])
    assert torch.equal(parse_view("shift:1,2")(x)[0, 0], expected)
    y = torch.randn(2, 3, 32, 32)
    # a real crop: the top-left 16 x 16 resized back (more in tests/test_tta_crops.py)
    assert torch.equal(parse_view("crop:tl,0.5")(y), torch.nn.functional.interpolate(
        y[..., :16, :16], size=(32, 32), mode="bilinear", antialias=True))
    assert torch.allclose(parse_view("scale:1")(y), y, atol=1e-6)
    assert torch.allclose(parse_view("rotate:0")(y), y, atol=1e-6)
    assert torch.allclose(parse_view("rotate:90")(y), y.rot90(1, (-2, -1)), atol=1e-5)  # counter-clockwise
    dot = torch.zeros(1, 1, 8, 8)
    dot[..., 3:5, 3:5] = 1.0
    assert parse_view("scale:2")(dot).sum() > 3 * dot.sum()  # F > 1 zooms in: the centre square grows
    assert torch.allclose(parse_view("brightness:0.5")(y), y + 0.5)
    c = parse_view("contrast:2")(y)
    assert torch.allclose(c.mean((1, 2, 3)), y.mean((1, 2, 3)), atol=1e-5)
    assert torch.equal(parse_view("hflip+shift:0,1")(x), parse_view("shift:0,1")(x.flip(-1)))


def test_policies():
    assert [len(policy_views(p)) for p in ("flip", "standard", "expanded")] == [2, 30, 21]
    for p in POLICIES:
        names = [v.name for v in policy_views(p)]
        assert names[0] == "identity" and len(set(names)) == len(names)
    custom = policy_views("identity,shift:1,-2,hflip+scale:1.1")
    assert [v.name for v in custom] == ["identity", "shift:1,-2", "hflip+scale:1.1"]


@pytest.mark.parametrize("bad, message", [
    ("nope", "unknown TTA policy"), ("shift:1", "takes 2 argument"), ("crop:middle", "crop corner"),
    ("scale:0", "scale must be positive"), ("hflip,hflip", "repeated views"), ("wobble:3", "unknown view op"),
])
def test_bad_policies(bad, message):
    with pytest.raises(UndiscardError, match=message):
        policy_views(bad)


# --- the module -------------------------------------------------------------------------------
def test_identity_policy_is_the_model_and_flip_mean_is_by_hand(net):
    with torch.no_grad():
        assert torch.equal(TTA(net, ["identity"])(X), net(X))
        flip = TTA(net, "flip", "mean")
        assert torch.allclose(flip(X), (net(X) + net(X.flip(-1))) / 2, atol=1e-5)
        assert flip.last_cost == 2.0
        assert torch.allclose(TTA(net, "flip", "max")(X), torch.maximum(net(X), net(X.flip(-1))))
        # budget: the first views only
        assert TTA(net, "standard", "mean", budget=4).view_logits(X).shape == (8, 4, 10)


def test_each_view_gets_its_own_phase_search(net):
    units = zoo.search_units(MODEL)
    with torch.no_grad():
        wrapped = wrap(net, budget=4, units=units)
        tta = TTA(wrapped, "flip", "mean", chunk_size=5)  # chunks cut across views
        logits = tta.view_logits(X)
        assert torch.allclose(logits[:, 0], wrapped(X), atol=1e-5)
        cost = wrapped.last_cost
        assert torch.allclose(logits[:, 1], wrapped(X.flip(-1)), atol=1e-5)
        cost += wrapped.last_cost  # per image: both views' searches
        assert tta.last_cost == pytest.approx(cost, rel=1e-9) and tta.last_cost > 2
        # budget 1 inside: exactly TTA of the plain network
        wrapped.budget = 1
        assert torch.equal(TTA(wrapped, "flip")(X), TTA(net, "flip")(X))


# --- fitted aggregators, on synthetic logits ---------------------------------------------------
def _synthetic(n: int = 600, k: int = 5, seed: int = 0):
    """Three views: 0 is noise, 1 is informative, 2 is informative but overconfident and worse."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    onehot = torch.nn.functional.one_hot(y, k).float()
    noise = torch.randn(n, 3, k, generator=g)
    logits = torch.stack([noise[:, 0], 3 * onehot + noise[:, 1], 8 * onehot + 6 * noise[:, 2]], 1)
    return logits, y


def test_unfitted_weights_are_the_mean_and_fitting_finds_the_informative_view():
    logits, y = _synthetic()
    for name in ("augtta", "classtta"):
        agg = make_aggregator(name, 3, num_classes=5)
        assert torch.allclose(agg(logits), logits.mean(1), atol=1e-6)
        before = torch.nn.functional.cross_entropy(agg(logits), y)
        agg.fit(logits, y)
        assert torch.nn.functional.cross_entropy(agg(logits), y) < before
        w = agg.weight.mean(1) if name == "classtta" else agg.weight[:, 0]
        assert int(w.argmax()) == 1 and abs(float(w[0])) < float(w[1])
    gps = make_aggregator("gps", 3, budget=2).fit(logits, y)
    assert gps.views()[0] == 1 or gps.counts[1] >= gps.counts.max()  # the informative view is picked
    assert 0 not in gps.views() and len(gps.views()) <= 2
    assert float(gps.temperature[2]) > float(gps.temperature[1])  # the overconfident view is cooled


def test_fitted_aggregator_needs_fitting_and_round_trips(net, tmp_path):
    tta = TTA(net, "flip", "augtta")
    with pytest.raises(UndiscardError, match="must be fitted"):
        tta(X)
    with torch.no_grad():
        tta.fit(X, torch.as_tensor(labels[:8]))
        out = tta(X)
    path = tta.save(tmp_path / "tta.pt")
    with torch.no_grad():
        assert torch.equal(TTA(net, "flip", path)(X), out)
    agg, views, _ = load_tta(path)
    assert views == ["identity", "hflip"] and agg.name == "augtta"
    with pytest.raises(TTAFileError, match="fitted for views"):
        TTA(net, "standard", path)
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(TTAFileError, match="cannot read"):
        TTA(net, "flip", tmp_path / "junk.pt")


def test_tta_grid_equals_separate_runs(net):
    """One search per view at the largest budget gives what a TTA run at each budget gives."""
    from undiscard.evaluation.runner import evaluate_tta, evaluate_tta_grid

    x = preprocess(images[:24])
    y = torch.as_tensor(labels[:24])
    xs = x.roll(1, -1)
    wrapped = wrap(net, budget=1, units=zoo.search_units(MODEL))
    views = policy_views("standard")
    grid = evaluate_tta_grid("m", wrapped, views, x, y, [(4, 1, "standard/mean"), (2, 2, "flip/mean"),
                                                         (2, 4, "flip/mean")], shifted=xs, batch_size=10)
    alone = evaluate_tta("m", TTA(net, "standard", "mean", budget=4), x, y, [1], shifted=xs, batch_size=10)
    both = evaluate_tta("m", TTA(wrapped, "flip", "mean"), x, y, [2, 4], shifted=xs, batch_size=10)
    assert len(grid) == len(alone + both) == 3
    for g, r in zip(grid, alone + both):
        assert (g.top1, g.top1_shifted, g.consistency, g.tta_views, g.total_budget) == \
            (r.top1, r.top1_shifted, r.consistency, r.tta_views, r.total_budget)
        assert g.cost == pytest.approx(r.cost, rel=1e-9)
