"""The budget is the cost: ``wrap(net, budget=B)`` evaluates at most B states per image, the root included,
so a call costs at most B plain forwards, and ``last_cost`` says what it cost.

Checked against work counted independently of the library's own bookkeeping: every FLOP a wrapped call
runs (``torch.utils.flop_counter.FlopCounterMode`` around ``model(x)``, set up beforehand) over the FLOPs
of the user's ``net(x)``. For every kind of split — a built-in registry split (torchvision ResNet), timm's
``forward_features``, graph capture (torch.fx), the hook fallback (a model fx cannot trace),
``features=``/``head=``, the dense output split (``task="segmentation"``) — and a model whose code fixes the
batch size (torchvision's ViT); for every criterion; at B = 2, 4, 8:

- the states found number B, the counted cost is at most B plus one run of the head (aggregating the
  states runs it on their combined features: a classifier's pooling and linear layer, under 1% of a
  forward here; nothing for the output split), and ``last_cost`` equals it;
- ``candidates_cost(cands, b)`` of one budget-8 search prices every smaller budget b as a search at b
  costs (``last_cost``), and the first b states are those of that search (the prefix property);
- budget 1 is the network, bit for bit, at one forward.

The hook fallback obeys the same bound: it resumes the model's own forward at a cut before each unit,
and its head runs from the feature map alone (``split_method`` says which cuts were kept).
"""
from __future__ import annotations

import warnings
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import undiscard
from undiscard.search import criteria as C

from . import archs
from .test_memory_chunks import (
    TinySeg,  # three strided convs, logits upsampled to the input
)

pytestmark = pytest.mark.usefixtures("one_thread")
BUDGETS = (2, 4, 8)
REL = 1e-6  # FLOPs are integers per layer: the counts agree to float rounding


class Body(nn.Module):
    """Three strided convs and a linear head, written as one forward (fx traces it)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 2, 1), nn.Conv2d(8, 16, 3, 2, 1)
        self.fc = nn.Linear(16, 10)

    def features(self, x: Tensor) -> Tensor:
        return F.relu(self.c3(F.relu(self.c2(F.relu(self.c1(x))))))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class Guarded(Body):
    """Python control flow on the input's shape: torch.fx cannot trace it (the hook fallback splits it)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != 3:
            raise ValueError("expected RGB images")
        return super().forward(x)


# name: (builder, input size, wrap arguments, the split the library must choose)
SPLITS: dict[str, tuple[Callable[[], nn.Module], int, dict, str]] = {
    "registry": (archs.ARCHS["tv_resnet18"][0], 32, {}, "registry"),
    "timm": (archs.ARCHS["timm_convnext_atto"][0], 32, {}, "timm"),
    "graph": (Body, 32, {"units": [0, 1, 2]}, "graph capture"),
    "hook": (Guarded, 32, {"units": [0, 1, 2]}, "hook fallback"),
    "features/head": (Body, 32, {"units": [0, 1, 2], "features": lambda m, x: m.features(x),
                                 "head": lambda m, f: m.fc(f.mean((2, 3)))}, "features=/head="),
    "output": (TinySeg, 32, {"units": [0, 1, 2], "task": "segmentation"}, "output"),
    "fixed batch (tv ViT)": (archs.ARCHS["tv_vit_tiny"][0], 16, {}, "registry"),
}
CRITERIA = ("entropy", "learned", "offset", "grid", "random", "calibrated", "aps")


def _order(model: undiscard.Undiscard) -> list[tuple[int, ...]]:
    """A calibrated order that is no tree order: deep states first, so many run from the first cut."""
    import itertools

    states = list(itertools.product(*[range(u.num_phases) for u in model.search_units]))
    return states[:1] + states[:0:-1]


@pytest.fixture(scope="module", params=list(SPLITS))
def setup(request):
    build, size, kw, method = SPLITS[request.param]
    torch.manual_seed(0)
    net = build().eval()
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        probe = undiscard.wrap(net, budget=1, example_input=x[:1], **kw)
    assert probe.split_method.startswith(method), probe.split_method
    # under no_grad, as the wrapped call runs (torch's fused attention path is not counted by the
    # FLOP counter: counted alike on both sides)
    with torch.no_grad(), FlopCounterMode(display=False) as plain:
        net(x)
    return request.param, net, x, kw, _order(probe), float(plain.get_total_flops())


def _wrap(net: nn.Module, x: Tensor, budget: int, criterion: str, kw: dict, order) -> undiscard.Undiscard:
    if criterion == "aps" and "units" not in kw:  # aps searches only the first unit by default: 4 states
        kw = {**kw, "units": [0, 1, 2] if len(undiscard.find_units(net, x[:1])) >= 3 else [0]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a train-mode ViT, an untrained aggregator
        model = undiscard.wrap(net, budget=budget, criterion=criterion, aggregate="mean", seed=3,
                               order=order if criterion == "calibrated" else None, **kw)
        model.prepare(x)  # setup is not part of a call's cost
        with torch.no_grad():
            model(x)  # nor what a first call sets up (a dense task traces which units move its output)
    return model


def _counted(model: undiscard.Undiscard, x: Tensor) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


@pytest.mark.parametrize("criterion", CRITERIA)
def test_last_cost_is_the_counted_work_and_at_most_the_budget(setup, criterion):
    name, net, x, kw, order, plain = setup
    for budget in BUDGETS:
        model = _wrap(net, x, budget, criterion, kw, order)
        spent = _counted(model, x) / plain
        assert model.last_cost == pytest.approx(spent, rel=REL), (name, criterion, budget)
        assert all(len(per) == budget for per in model.search(x))
        flops = model.prepare(x).flops
        head = flops.head / flops.baseline  # aggregating runs the head once more on the combined features
        with torch.no_grad():
            cands = model.candidates(x)
        # the learned criterion's attention scores (counted above, in last_cost) are the aggregator's work
        network = spent - sum(c.score_flops for per in cands for c in per[:-1]) / plain
        # aps: its selected state also computes the selected units' first layers densely, counted here
        dense = sum(c.extra_flops for per in cands for c in per) / plain
        assert dense == 0 or criterion == "aps"
        assert head < 0.01 and network <= budget + head + dense + 1e-9, (name, criterion, budget, spent)
        assert model.last_cost_ideal <= model.last_cost + 1e-9


@pytest.mark.parametrize("criterion", CRITERIA)
def test_one_search_prices_every_smaller_budget(setup, criterion):
    name, net, x, kw, order, plain = setup
    big = _wrap(net, x, 8, criterion, kw, order)
    with torch.no_grad():
        cands = big.candidates(x)
    assert big.candidates_cost(cands, 8)[0] == pytest.approx(big.last_cost, rel=1e-12)
    for b in (1, 2, 3, 5, 8):
        small = _wrap(net, x, b, criterion, kw, order)
        with torch.no_grad():
            found = small.candidates(x)
            small(x)  # what a call at b costs (budget 1: the network itself, not the split's root pass)
        assert [[c.state for c in per] for per in found] == [[c.state for c in per[:b]] for per in cands]
        assert big.candidates_cost(cands, b)[0] == pytest.approx(small.last_cost, rel=1e-9), (name, criterion, b)
        assert big.candidates_cost(cands, b)[1] == pytest.approx(small.last_cost_ideal, rel=1e-9)


def test_budget_one_is_the_network_at_one_forward(setup):
    name, net, x, kw, order, plain = setup
    model = _wrap(net, x, 1, "entropy", kw, order)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    assert model.last_cost == 1.0
    assert _counted(model, x) == plain


def test_cost_hooks_add_up_to_last_cost():
    torch.manual_seed(0)
    net, x = Body().eval(), torch.randn(3, 3, 32, 32)
    for criterion in ("entropy", "offset"):
        model = _wrap(net, x, 5, criterion, {"units": [0, 1, 2]}, None)
        engine = model.prepare(x)
        calls = []
        handle = engine.register_cost_hook(lambda *a: calls.append(a))
        with torch.no_grad():
            model(x)
        handle.remove()
        assert calls[0][:2] == calls[-1][:2] == (None, 3)  # the root; the head on the aggregated features
        assert sum(c[1] for c in calls if c[0] is not None) == 3 * 4  # four states evaluated per image after the root
        assert sum(c[2] for c in calls) / (engine.flops.baseline * 3) == pytest.approx(model.last_cost, rel=1e-12)


def test_criteria_declare_whether_their_order_is_static() -> None:
    static = {name: C.get_criterion(name).static for name in C.CRITERIA}
    assert static == {"entropy": False, "random": True, "offset": True, "grid": True, "learned": False,
                      "calibrated": True, "aps": False}
