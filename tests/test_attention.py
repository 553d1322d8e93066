"""The attention aggregator, the learned criterion, incremental search, and aggregator files."""
from __future__ import annotations

import warnings

import pytest
import torch

from undiscard import wrap, zoo
from undiscard.data import load_fashion_mnist, preprocess
from undiscard.errors import PhaseError, UndiscardError
from undiscard.fitting.aggregator import TrainConfig, train_aggregator
from undiscard.search._best_first import state_offset
from undiscard.tasks.aggregation import align_maps, uniform_weights, weighted_sum
from undiscard.tasks.attention import (
    AggregatorFileError,
    AttentionAggregator,
    load_aggregator,
    save_aggregator,
)

from .reference_search import ref_lazy

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = "resnet_basic"


def _quiet_wrap(net, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = wrap(net, **kw)
        model.prepare(X[:1])
    return model


images, labels = load_fashion_mnist("test")
X = preprocess(images[:12])
Y = torch.as_tensor(labels[:12])


@pytest.fixture(scope="module")
def net():
    return zoo.create_model(MODEL)


@pytest.fixture(scope="module")
def units():
    return zoo.search_units(MODEL)


def _perturbed(agg: AttentionAggregator, seed: int = 0) -> AttentionAggregator:
    """An aggregator with non-trivial (random) parameters, as training would leave it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in agg.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return agg


# --- the module -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_untrained_module_returns_the_mean_exactly(dtype):
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(3, 5, 8, 2, 3, generator=g, dtype=dtype) * 10
    offsets = torch.randint(0, 4, (3, 5, 2), generator=g)
    offsets[:, 0] = 0
    agg = AttentionAggregator(8, 4).train()  # dropout on: still exact, the scale is zero
    out, attn = agg(maps, offsets)
    assert torch.equal(out, weighted_sum(maps, uniform_weights(3, 5, dtype)))
    assert attn.shape == (3, 5, 2, 3) and torch.allclose(attn.sum(1), torch.ones(3, 2, 3))


def test_trained_module_is_an_attention_weighted_residual():
    g = torch.Generator().manual_seed(2)
    maps = torch.randn(2, 4, 6, 2, 2, generator=g)
    offsets = torch.randint(0, 4, (2, 4, 2), generator=g)
    agg = _perturbed(AttentionAggregator(6, 4)).eval()
    out, attn = agg(maps, offsets)
    mean = maps.mean(1)
    mixed = (attn[:, :, None] * maps).sum(1)
    expected = mean + agg.scale.view(1, -1, 1, 1) * (mixed - mean)
    assert torch.allclose(out, expected, atol=1e-6)
    # eval mode is deterministic; training mode drops attention weights
    assert torch.equal(agg(maps, offsets)[0], out)
    agg.train()
    torch.manual_seed(0)
    assert not torch.allclose(agg(maps, offsets)[0], out)
    # the learned criterion's score is the location-averaged attention logit q * k_b, the key reading the
    # layer-normalised map plus the offset encoding and the query the original (state 0) map
    scores = agg.eval().state_scores(maps, offsets, maps[:, 0])
    enc = agg.offset_y(offsets[..., 0]) + agg.offset_x(offsets[..., 1])
    keys = agg.key(agg.norm(maps.movedim(2, -1) + enc[:, :, None, None])).squeeze(-1)
    query = agg.query(agg.norm(maps[:, 0].movedim(1, -1))).squeeze(-1)
    assert torch.allclose(scores, (query[:, None] * keys).flatten(2).mean(-1), atol=1e-6)
    assert torch.allclose(attn, torch.softmax(query[:, None] * keys, dim=1), atol=1e-6)


def test_module_rejects_maps_and_offsets_that_do_not_fit():
    agg = AttentionAggregator(6, 4)
    with pytest.raises(ValueError, match="expects"):
        agg(torch.zeros(1, 2, 5, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(AggregatorFileError, match="offsets outside"):
        agg(torch.zeros(1, 2, 6, 2, 2), torch.full((1, 2, 2), 4, dtype=torch.long))


# --- in the wrapper ---------------------------------------------------------------------------
@pytest.mark.parametrize("align", [True, False])
def test_attention_at_initialisation_equals_mean_exactly(net, units, align):
    mean = wrap(net, budget=8, aggregate="mean", align=align, units=units)
    with pytest.warns(UserWarning, match="untrained attention aggregator"):
        attn = wrap(net, budget=8, aggregate="attention", align=align, units=units)
        with torch.no_grad():
            got = attn(X)
    with torch.no_grad():
        assert torch.equal(got, mean(X))


def test_attention_equals_mean_at_init_on_token_features():
    """A timm ViT: a prefix (class) token is aggregated with the same residual form."""
    from undiscard._compat import import_timm

    timm = import_timm()
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=1, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    mean = wrap(vit, budget=4, aggregate="mean")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        attn = wrap(vit, budget=4, aggregate="attention")
        with torch.no_grad():
            assert torch.equal(attn(x), mean(x))


def test_learned_criterion_expands_the_states_with_most_attention(net, units):
    """The learned criterion scores an evaluated state by minus its attention score (its aligned map
    against the root's): replayed by the reference lazy search from every state's score, computed here."""
    torch.manual_seed(0)  # the aggregator's initial parameters
    agg = _perturbed(AttentionAggregator(256, 4), seed=4).eval()
    model = wrap(net, budget=8, criterion="learned", aggregate="attention", units=units, aggregator=agg)
    full = wrap(net, budget=16, criterion="offset", aggregate="mean", units=units)  # all 16 states
    with torch.no_grad():
        chosen = model.search(X)
        cands = full.candidates(X)
    stride = model.prepare(X).feature_stride
    for i, per in enumerate(cands):
        assert len({c.state for c in per}) == 16
        maps = torch.stack([c.features for c in per])[None]
        offsets = torch.tensor([[state_offset(c.state, [2, 2]) for c in per]])
        with torch.no_grad():
            scores = agg.state_scores(align_maps(maps, offsets, stride), offsets, per[0].features[None])[0]
        minus = {c.state: -float(a) for c, a in zip(per, scores.double())}
        assert chosen[i] == ref_lazy(lambda s: minus[s], [2, 2], 8)
    assert len({tuple(per) for per in chosen}) > 1  # the scores, not the prior alone, chose: images differ


@pytest.mark.parametrize("criterion", ["entropy", "learned", "random"])
def test_search_is_incremental_and_prefix_costs_are_exact(net, units, criterion):
    agg = _perturbed(AttentionAggregator(256, 4), seed=4).eval()
    model = wrap(net, budget=16, criterion=criterion, aggregate="attention", units=units, aggregator=agg)
    with torch.no_grad():
        cands = model.candidates(X)
        for b in (1, 2, 5, 8, 16):
            model.budget = b
            assert [[c.state for c in per[:b]] for per in cands] == model.search(X)
            cost, ideal = model.candidates_cost(cands, b)
            logits = model(X)
            assert cost == pytest.approx(model.last_cost, rel=1e-9)
            assert ideal == pytest.approx(model.last_cost_ideal, rel=1e-9)
            assert torch.allclose(model.aggregate_candidates(cands, b), logits, atol=1e-5)
    assert model.aggregate_candidates(cands, 1).equal(net(X))


def test_learned_criterion_without_an_aggregator_is_seeded_and_leaves_the_rng_alone(net, units):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with pytest.warns(UserWarning, match="untrained"):
        model = wrap(net, budget=4, criterion="learned", units=units, seed=7)
        with torch.no_grad():
            states = model.search(X[:2])
    assert torch.equal(torch.rand(3), expected_next)  # the caller's random stream is untouched
    with pytest.warns(UserWarning, match="untrained"):
        again = wrap(net, budget=4, criterion="learned", units=units, seed=7)
        with torch.no_grad():
            assert again.search(X[:2]) == states  # the same seed, the same order
    assert all(len(s) == 4 for s in states)


def test_attention_variant_of_an_entropy_model_uses_the_checked_aggregator(net, units, tmp_path):
    """eval/demo wrap with aggregate='entropy' and ask for 'attention' as a variant: the file is still
    checked against the searched units and used."""
    from undiscard.evaluation.runner import evaluate

    agg = _perturbed(AttentionAggregator(256, 4), seed=5)
    path = save_aggregator(tmp_path / "a.pt", agg, model="m", units=units)
    with pytest.raises(AggregatorFileError, match="trained for units"):
        wrap(net, budget=4, aggregate="entropy", units=[units[0]], aggregator=path).prepare(X[:1])
    model = wrap(net, budget=1, aggregate="entropy", units=units, aggregator=path)
    rows = evaluate("m", model, X, Y, [4], variants=[("entropy", True), ("attention", True)])
    direct = wrap(net, budget=4, aggregate="attention", units=units, aggregator=path)
    with torch.no_grad():
        expected = (direct(X).argmax(-1) == Y).float().mean().item() * 100
    assert rows[1].aggregate == "attention" and rows[1].top1 == pytest.approx(expected)
    with pytest.raises(PhaseError, match="exceeds"):
        model.candidates(X, 17)
    with pytest.raises(UndiscardError, match="unknown aggregate"):
        model.aggregate_candidates(model.candidates(X[:2], 2), aggregate="median")


# --- training and files -------------------------------------------------------------------------
def test_one_training_step_moves_only_the_aggregator(net, units, tmp_path):
    model = _quiet_wrap(net, budget=1, aggregate="attention", units=units)
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    result = train_aggregator(model, X, Y, TrainConfig(epochs=1, budget=4, batch_size=12, lr=1e-2),
                              val=(X[:4], Y[:4]))
    assert all(torch.equal(before[k], v) for k, v in model.net.state_dict().items())
    assert all(p.requires_grad for p in model.net.parameters())  # unfrozen again
    assert float(model.aggregator.scale.detach().abs().sum()) > 0
    (entry,) = result.history
    assert set(entry["val"]) == {"mean", "entropy", "attention"} and result.budget == 4

    path = save_aggregator(tmp_path / "agg.pt", model.aggregator, model=f"zoo:{MODEL}", units=units)
    loaded = wrap(net, budget=8, aggregate="attention", units=units, aggregator=path)
    model.budget = 8
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))
    agg, info = load_aggregator(path)
    assert info.units == units and info.model == f"zoo:{MODEL}"


def test_aggregator_that_does_not_fit_the_model(net, units, tmp_path):
    path = save_aggregator(tmp_path / "agg.pt", AttentionAggregator(256, 4), model="x", units=units)
    with pytest.raises(AggregatorFileError, match="trained for units"):
        wrap(net, budget=4, aggregate="attention", units=[units[1]], aggregator=path).prepare(X[:1])
    other = save_aggregator(tmp_path / "other.pt", AttentionAggregator(17, 4), model="x", units=units)
    with pytest.raises(AggregatorFileError, match="17 channels"):
        wrap(net, budget=4, aggregate="attention", units=units, aggregator=other).prepare(X[:1])
    (tmp_path / "junk.pt").write_bytes(b"not a file")
    with pytest.raises(AggregatorFileError, match="cannot read"):
        wrap(net, aggregate="attention", aggregator=tmp_path / "junk.pt")
    with pytest.raises(AggregatorFileError, match="not found"):
        wrap(net, aggregate="attention", aggregator=tmp_path / "missing.pt")


@pytest.mark.parametrize("name", zoo.list_models())
def test_shipped_aggregators_fit_their_models_and_are_trained(name):
    agg, info = load_aggregator(zoo.aggregator_path(name))
    assert info.model == f"zoo:{name}" and info.units == zoo.search_units(name)
    assert float(agg.scale.detach().abs().max()) > 0  # trained: no longer the mean
    net = zoo.create_model(name)
    model = wrap(net, budget=4, aggregate="attention", units=info.units, aggregator=zoo.aggregator_path(name))
    with torch.no_grad():
        assert model(X).shape == (12, 10)
