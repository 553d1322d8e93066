"""The ranking loss that teaches ``criterion="learned"`` to order states (attention_training)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from undiscard import wrap, zoo
from undiscard.data import load_fashion_mnist, preprocess
from undiscard.errors import UndiscardError
from undiscard.fitting.aggregator import (
    TrainConfig,
    rank_loss,
    state_scores,
    train_aggregator,
)
from undiscard.tasks.attention import AttentionAggregator

from .reference_search import ref_lazy

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = "resnet_basic"
images, labels = load_fashion_mnist("test")
X = preprocess(images[:6])
Y = torch.as_tensor(labels[:6])


def _logits_and_ce(n: int, b: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, b, k, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, k, (n,), generator=g)
    ce = F.cross_entropy(logits.flatten(0, 1), y.repeat_interleave(b), reduction="none").view(n, b)
    return logits, y, ce


@pytest.mark.parametrize("temperature", [0.1, 0.25, 2.0])
def test_scores_equal_to_the_target_logits_are_the_loss_minimum(temperature):
    logits, y, ce = _logits_and_ce(4, 7, 5, seed=1)
    best = (-ce / temperature).clone().requires_grad_(True)
    loss = rank_loss(best, logits, y, temperature)
    loss.backward()
    # ListNet's gradient is softmax(scores) - target: zero exactly at the target's own logits
    assert best.grad.abs().max() < 1e-6
    target = torch.softmax(-ce / temperature, 1)
    assert loss.item() == pytest.approx(float(-(target * target.log()).sum(1).mean()), rel=1e-5)
    for seed in range(3):  # and every other score vector does worse
        other = torch.randn(4, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        assert rank_loss(other, logits, y, temperature) > loss


def test_the_right_order_beats_the_reversed_one():
    logits, y, ce = _logits_and_ce(8, 6, 4, seed=2)
    ranks = ce.argsort(1).argsort(1).double()  # 0 = the state with the lowest cross-entropy
    assert rank_loss(-ranks, logits, y, 0.25) < rank_loss(ranks, logits, y, 0.25)


def test_dense_logits_average_the_per_pixel_cross_entropy():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, 5, 6, generator=g)
    y = torch.randint(0, 4, (2, 5, 6), generator=g)
    scores = torch.randn(2, 3, generator=g)
    ce = torch.stack([torch.stack([F.cross_entropy(logits[i, b][None], y[i][None]) for b in range(3)])
                      for i in range(2)])
    target = torch.softmax(-ce / 0.5, 1)
    expected = -(target * torch.log_softmax(scores, 1)).sum(1).mean()
    assert torch.allclose(rank_loss(scores, logits, y, 0.5), expected, atol=1e-6)


def test_state_scores_are_what_the_learned_criterion_ranks_by():
    """The loss trains the very scores the search reads: the learned criterion's states at budget 6 are
    those the lazy search takes when it reads minus state_scores of its candidates (replayed by the
    reference, which asks only for the scores of evaluated states)."""
    net, units = zoo.create_model(MODEL), zoo.search_units(MODEL)
    agg = AttentionAggregator(256, 4)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in agg.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    agg.eval()
    model = wrap(net, budget=6, criterion="learned", aggregate="attention", units=units, aggregator=agg)
    with torch.no_grad():
        cands = model.candidates(X)
        scores = state_scores(model, cands)
    assert scores.shape == (len(X), 6)
    for i, per in enumerate(cands):
        minus = {c.state: -float(s) for c, s in zip(per, scores[i].double())}
        assert [c.state for c in per] == ref_lazy(lambda s: minus[s], [2, 2], 6)


@pytest.mark.filterwarnings("ignore:aggregate='attention'")
def test_bad_rank_settings_are_one_line():
    net = zoo.create_model(MODEL)
    model = wrap(net, budget=1, aggregate="attention", units=zoo.search_units(MODEL))
    for config in (TrainConfig(rank_weight=-1.0), TrainConfig(rank_weight=1.0, rank_temperature=0.0)):
        with pytest.raises(UndiscardError, match="rank_weight must be >= 0"):
            train_aggregator(model, X, Y, config)
