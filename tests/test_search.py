"""The search (docs/semantics.md, "Search") against an independent brute-force reference (``tests/reference_search.py``).

The reference never calls the library's search: it computes every state's logits with
``model.run_state`` (one fixed state for the whole batch; images do not interact, and float64 makes the
result independent of batch composition to far below the gaps between scores), scores them itself, and
replays the rule with heaps of ``(score, insertion order)``: the lazy search for ``entropy`` (the
frontier holds evaluated states; popping one evaluates its next successor in coarse-to-fine prior order),
the static order for ``offset``, ``grid`` and ``random`` (states in order of score, each after its parent).

Scores: ``entropy`` is the normalised entropy of the state's softmax (computed here in float64 from
``log_softmax``); ``offset`` is dy² + dx² of the mixed-radix offset; ``grid`` is (sub-grid level,
dy² + dx²); ``random`` uses the library's seeded hash of (seed, state, depth), since random scores have
no other definition — the heap replay is still independent.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import pytest
import torch
from torch import Tensor, nn

import undiscard
from undiscard.search._best_first import state_offset
from undiscard.search.criteria import random_score as _random_score

from .reference_search import ref_depth, ref_grid, ref_lazy, ref_offset, ref_static

pytestmark = pytest.mark.usefixtures("one_thread")


State = tuple[int, ...]


# --------------------------------------------------------------------------- models


def tiny_cnn(rates: Sequence[int] = (2, 2, 2), seed: int = 0, head_scale: float = 30.0) -> nn.Module:
    """Strided convs (one unit each) + ReLU, then global average pool + Linear.

    Input 16x16. ``head_scale`` spreads the random logits so that states' entropies are well apart.
    """
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    cin = 3
    for i, r in enumerate(rates):
        cout = 8 if i < len(rates) - 1 else 16
        layers += [nn.Conv2d(cin, cout, 3, stride=r, padding=1), nn.ReLU()]
        cin = cout
    head = nn.Linear(cin, 10)
    with torch.no_grad():
        head.weight.mul_(head_scale)
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    return net.eval()


class TinyUnchained(nn.Module):
    """Three strided convs called from one forward (no module chain): expansion recomputes from the input."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)
        with torch.no_grad():
            self.fc.weight.mul_(30.0)

    def features(self, x: Tensor) -> Tensor:
        return torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))

    def head(self, f: Tensor) -> Tensor:
        return self.fc(f.mean((2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def wrap_unchained(net: nn.Module, **kw) -> undiscard.Undiscard:
    return undiscard.wrap(net, features=lambda m, x: m.features(x), head=lambda m, f: m.head(f), **kw)


def resnet18() -> nn.Module:
    try:
        from undiscard._compat import import_torchvision

        tv = import_torchvision()
    except Exception as exc:  # optional extra
        pytest.skip(f"torchvision unavailable: {exc}")
    torch.manual_seed(0)
    net = tv.models.resnet18(num_classes=10).eval()
    with torch.no_grad():
        net.fc.weight.mul_(20.0)  # random-init logits are tiny: spread the entropies
    return net


def images(n: int, size: int, seed: int = 1, dtype: torch.dtype = torch.float64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g).to(dtype)


# --------------------------------------------------------------------------- reference


def all_states(rates: Sequence[int]) -> list[State]:
    return list(itertools.product(*[range(r * r) for r in rates]))


def ref_entropy(logits: Tensor) -> float:
    logp = torch.log_softmax(logits.double(), -1)
    return float(-(logp.exp() * logp).sum() / math.log(logits.shape[-1]))


def state_table(model: undiscard.Undiscard, x: Tensor) -> dict[State, Tensor]:
    """Every state's logits (N, K), from ``run_state``."""
    rates = [u.rate for u in model.search_units]
    with torch.no_grad():
        return {s: model.run_state(x, s) for s in all_states(rates)}


def reference_search(model: undiscard.Undiscard, table: dict[State, Tensor], i: int, budget: int,
                     criterion: str, seed: int = 0) -> list[State]:
    """The rule for image i, from the precomputed table of every state's logits."""
    rates = [u.rate for u in model.search_units]
    spatial = [u.spatial for u in model.search_units]
    if criterion == "entropy":
        return ref_lazy(lambda s: ref_entropy(table[s][i]), rates, budget)
    if criterion == "offset":
        def score(state: State) -> object:
            dy, dx = ref_offset(state, rates, spatial)
            return float(dy * dy + dx * dx)
    elif criterion == "grid":
        def score(state: State) -> object:
            return ref_grid(state, rates, spatial)
    elif criterion == "random":
        def score(state: State) -> object:
            return _random_score(seed, state, ref_depth(state))
    else:
        raise AssertionError(criterion)
    return ref_static(score, rates, budget)


# --------------------------------------------------------------------------- reference comparison


BUDGETS = (2, 5, 8, 16, "all")
CRITERIA = (("entropy", 0), ("offset", 0), ("grid", 0), ("random", 0), ("random", 7))

CASES: dict[str, Callable[[], tuple[nn.Module, Callable[..., undiscard.Undiscard], Tensor]]] = {
    "tiny-2-2-2": lambda: (tiny_cnn((2, 2, 2)).double(),
                           lambda net, **kw: undiscard.wrap(net, units=[0, 1, 2], **kw), images(3, 16)),
    "tiny-4-2": lambda: (tiny_cnn((4, 2)).double(), lambda net, **kw: undiscard.wrap(net, **kw), images(3, 16)),
    "tiny-unchained": lambda: (TinyUnchained().double(),
                               lambda net, **kw: wrap_unchained(net, units=[0, 1, 2], **kw), images(2, 16)),
    "resnet18": lambda: (resnet18().double(), lambda net, **kw: undiscard.wrap(net, **kw), images(2, 32)),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    net, make, x = CASES[request.param]()
    probe = make(net, budget=1, example_input=x[:1])
    table = state_table(probe, x)
    return request.param, net, make, x, probe, table


def test_reference_search(case) -> None:
    name, net, make, x, probe, table = case
    n_states = probe.num_states
    assert n_states == len(table) == 64, name
    budgets = [n_states if b == "all" else b for b in BUDGETS]
    # resnet18 builds are slow: run the library directly at two budgets; a smaller budget is the same
    # process stopped earlier, so the other budgets are checked as prefixes of the full search
    direct = budgets if name.startswith("tiny") else [5, n_states]
    for criterion, seed in CRITERIA:
        got = {b: make(net, budget=b, criterion=criterion, seed=seed).search(x) for b in direct}
        for b in budgets:
            for i in range(x.shape[0]):
                want = reference_search(probe, table, i, b, criterion, seed)
                assert len(want) == b
                assert got[n_states][i][:b] == want, (name, criterion, seed, b, i)
                if b in got:
                    assert got[b][i] == want, (name, criterion, seed, b, i)


@pytest.mark.parametrize("budget", [2, 5, 8, 16])
def test_reference_search_tiny_each_budget(budget: int) -> None:
    net = tiny_cnn((2, 2, 2)).double()
    x = images(4, 16, seed=3)
    for criterion in ("entropy", "offset", "grid", "random"):
        model = undiscard.wrap(net, budget=budget, criterion=criterion, units=[0, 1, 2])
        got = model.search(x)
        table = state_table(model, x)
        for i in range(x.shape[0]):
            assert got[i] == reference_search(model, table, i, budget, criterion), (criterion, i)
            assert len(got[i]) == budget and len(set(got[i])) == budget


def test_full_budget_returns_every_state_once() -> None:
    net = tiny_cnn((2, 2, 2)).double()
    x = images(2, 16)
    model = undiscard.wrap(net, budget=64, units=[0, 1, 2])
    for per in model.search(x):
        assert per[0] == (0, 0, 0)
        assert len(per) == 64 and set(per) == set(all_states([2, 2, 2]))


def test_default_units_resnet18() -> None:
    net = resnet18()
    model = undiscard.wrap(net, budget=2)
    x = images(1, 32, dtype=torch.float32)
    model(x)
    assert [u.name for u in model.units] == ["conv1", "maxpool", "layer2.0", "layer3.0", "layer4.0"]
    assert [u.name for u in model.search_units] == ["maxpool", "layer2.0", "layer3.0"]
    assert model.num_states == 64


# --------------------------------------------------------------------------- budget errors


def test_budget_larger_than_state_space_raises() -> None:
    net = tiny_cnn((2, 2, 2))
    x = images(2, 16, dtype=torch.float32)
    model = undiscard.wrap(net, budget=65, units=[0, 1, 2])
    with pytest.raises(undiscard.PhaseError, match=r"budget 65\b.*\b64 states"):
        model(x)
    with pytest.raises(undiscard.PhaseError, match=r"budget 65\b.*\b64 states"):
        undiscard.wrap(net, budget=65, units=[0, 1, 2]).search(x)
    with pytest.raises(undiscard.PhaseError, match=r"budget 5\b.*\b4 states"):  # default: middle unit only
        undiscard.wrap(net, budget=5).search(x)
    with pytest.raises(undiscard.PhaseError, match=r"budget 65\b.*\b64 states"):
        undiscard.wrap(net, budget=65, units=[0, 1, 2], example_input=x)


def test_budget_error_is_not_forgotten_on_retry() -> None:
    net = tiny_cnn((2, 2, 2))
    x = images(1, 16, dtype=torch.float32)
    model = undiscard.wrap(net, budget=65, units=[0, 1, 2])
    with pytest.raises(undiscard.PhaseError):
        model.search(x)
    with pytest.raises(undiscard.PhaseError):
        model.search(x)


@pytest.mark.parametrize("budget", [0, -1, True, 2.0])
def test_bad_budget_rejected(budget) -> None:
    with pytest.raises(undiscard.PhaseError, match="budget"):
        undiscard.wrap(tiny_cnn(), budget=budget)


# --------------------------------------------------------------------------- determinism


def test_same_result_across_runs() -> None:
    net = tiny_cnn((2, 2, 2))
    x = images(5, 16, dtype=torch.float32)
    a = undiscard.wrap(net, budget=8, units=[0, 1, 2])
    b = undiscard.wrap(net, budget=8, units=[0, 1, 2])
    sa, sb, sa2 = a.search(x), b.search(x), a.search(x)
    assert sa == sb == sa2
    ya, yb, ya2 = a(x), b(x), a(x)
    assert torch.equal(ya, yb) and torch.equal(ya, ya2)


def _candidates(model: undiscard.Undiscard, x: Tensor):
    return model.candidates(x)


@pytest.mark.parametrize("make", [lambda net: undiscard.wrap(net, budget=8, units=[0, 1, 2]),
                                  lambda net: undiscard.wrap(net, budget=8, units=[0, 1, 2], chunk_size=1)],
                         ids=["chunk256", "chunk1"])
def test_batch_composition_does_not_matter(make) -> None:
    net = tiny_cnn((2, 2, 2)).double()
    x = images(5, 16, seed=11)
    model = make(net)
    batch = _candidates(model, x)
    perm = torch.tensor([3, 0, 4, 2, 1])
    shuffled = _candidates(model, x[perm])
    for i in range(5):
        alone = _candidates(model, x[i:i + 1])[0]
        in_shuffled = shuffled[int((perm == i).nonzero())]
        for other in (batch[i], in_shuffled):
            assert [c.state for c in other] == [c.state for c in alone]
            for c, d in zip(other, alone):
                torch.testing.assert_close(c.logits, d.logits, rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(c.features, d.features, rtol=1e-12, atol=1e-12)
    # forward too: per-image outputs do not depend on the batch
    y = model(x)
    y_shuffled = model(x[perm])
    torch.testing.assert_close(y[perm], y_shuffled, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y[2:3], model(x[2:3]), rtol=1e-12, atol=1e-12)


def test_chunk_size_does_not_matter() -> None:
    net = tiny_cnn((2, 2, 2)).double()
    x = images(5, 16, seed=5)
    ref = undiscard.wrap(net, budget=16, units=[0, 1, 2]).search(x)
    for chunk in (1, 4, 7):
        assert undiscard.wrap(net, budget=16, units=[0, 1, 2], chunk_size=chunk).search(x) == ref


def test_batch_of_one() -> None:
    net = tiny_cnn((2, 2, 2))
    x = images(1, 16, dtype=torch.float32)
    model = undiscard.wrap(net, budget=8, units=[0, 1, 2])
    states = model.search(x)
    assert len(states) == 1 and len(states[0]) == 8 and states[0][0] == (0, 0, 0)
    assert model(x).shape == (1, 10)


# --------------------------------------------------------------------------- cached path == recompute path


@pytest.mark.parametrize("which", ["tiny", "unchained", "resnet18"])
def test_candidate_logits_equal_run_state(which: str) -> None:
    if which == "tiny":
        net, x = tiny_cnn((2, 2, 2)).double(), images(3, 16)
        model = undiscard.wrap(net, budget=16, units=[0, 1, 2])
    elif which == "unchained":
        net, x = TinyUnchained().double(), images(3, 16)
        model = wrap_unchained(net, budget=16, units=[0, 1, 2])
    else:
        net, x = resnet18().double(), images(2, 32)
        model = undiscard.wrap(net, budget=12)
    engine = model.prepare(x)
    # the paths covered: a cut before every unit (cached activations), or none (recompute from the input)
    cuts = engine.cut
    assert len(set(cuts)) == len(cuts) if which != "unchained" else cuts == [0, 0, 0], cuts
    cands = _candidates(model, x)
    with torch.no_grad():
        root = net(x)
        for i, per in enumerate(cands):
            assert len(per) == model.budget
            torch.testing.assert_close(per[0].logits, root[i], rtol=1e-10, atol=1e-10)
            for c in per:
                want = model.run_state(x[i:i + 1], c.state)[0]
                torch.testing.assert_close(c.logits, want, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- criteria


def test_random_seed_changes_order() -> None:
    net = tiny_cnn((2, 2, 2))
    x = images(2, 16, dtype=torch.float32)

    def run(seed: int) -> list[list[State]]:
        return undiscard.wrap(net, budget=16, criterion="random", units=[0, 1, 2], seed=seed).search(x)

    first = run(0)
    assert run(0) == first
    others = [run(seed) for seed in (1, 2, 3)]
    assert any(o != first for o in others)
    for per in first:
        assert per[0] == (0, 0, 0) and len(set(per)) == 16


def test_offset_order_by_hand() -> None:
    """Rates (4, 2): unit 0's phase s is offset divmod(s, 4), unit 1's phase p is 4 * divmod(p, 2). States
    in order of dy² + dx², each after its parent, ties by insertion (unit, then phase)."""
    net = tiny_cnn((4, 2)).double()
    x = images(2, 16)
    model = undiscard.wrap(net, budget=20, criterion="offset", example_input=x[:1])
    assert [u.rate for u in model.search_units] == [4, 2]
    # 1: (0,1) s=1, (1,0) s=4; 2: (1,1) s=5; 4: s=2, s=8; 5: s=6, s=9; 8: s=10; 9: s=3, s=12; 10: s=7, s=13;
    # 13: s=11, s=14; 16: unit 1 at (0,4) p=1 and (4,0) p=2; 17: (1,2) = (4,1), pushed when s=1 was popped,
    # before (4,1) = (1,4); 18: s=15
    want = [(0, 0), (1, 0), (4, 0), (5, 0), (2, 0), (8, 0), (6, 0), (9, 0), (10, 0), (3, 0), (12, 0), (7, 0),
            (13, 0), (11, 0), (14, 0), (0, 1), (0, 2), (1, 2), (4, 1), (15, 0)]
    assert model.search(x) == [want, want]  # static: the same for every image
    # R = 2 first unit: (0,1), (1,0), (1,1)
    tiny = undiscard.wrap(tiny_cnn((2, 2, 2)), budget=4, criterion="offset", units=[0, 1, 2])
    assert tiny.search(images(1, 16, dtype=torch.float32))[0] == [(0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0, 0)]


def test_grid_order_by_hand() -> None:
    """Rates (4, 2), coarse to fine: level 1 is unit 0's (0,2) s=2, (2,0) s=8, (2,2) s=10 and every phase of
    the rate-2 unit; then small offsets first. Level-1 states: s=2, s=8 (4), s=10 (8), unit 1's p=1, p=2
    (16), (2,2) = (4,2) and (8,1) = (2,4) (20; s=2 was popped first), p=3 (32)."""
    net = tiny_cnn((4, 2)).double()
    model = undiscard.wrap(net, budget=8, criterion="grid")
    assert model.search(images(1, 16))[0] == [(0, 0), (2, 0), (8, 0), (10, 0), (0, 1), (0, 2), (2, 2), (8, 1)]


def _strided(rate: int) -> nn.Module:
    """One patch embedding of ``rate`` (a ViT's, as a conv) and a linear head."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, rate, stride=rate), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5)).eval().double()


def test_grid_rate_16_starts_with_the_half_patch_shifts() -> None:
    from undiscard.analysis.geometry import phase_level

    model = undiscard.wrap(_strided(16), budget=16, criterion="grid")
    x = images(1, 32)
    states = [s[0] for s in model.search(x)[0]]
    assert [divmod(s, 16) for s in states[1:4]] == [(0, 8), (8, 0), (8, 8)]  # the half-patch shifts
    # then the quarter-patch ones by length, ties by phase: (0,4) (4,0) (4,4) (4,8) (8,4) (0,12) (12,0) (4,12)
    # (12,4) (8,12) (12,8) (12,12)
    assert [divmod(s, 16) for s in states[4:16]] == [(0, 4), (4, 0), (4, 4), (4, 8), (8, 4), (0, 12), (12, 0),
                                                      (4, 12), (12, 4), (8, 12), (12, 8), (12, 12)]
    assert [phase_level(s, 16) for s in (0, 8, 4, 2, 1, 17)] == [0, 1, 2, 3, 4, 4]
    assert [phase_level(s, 3) for s in (0, 1, 4, 8)] == [0, 1, 1, 1]  # no sub-grid: offset order
    # entropy tries a rate-16 unit's successors coarse to fine too: its first state after the root
    assert undiscard.wrap(_strided(16), budget=2).search(x)[0][1] == (8,)


def test_grid_is_offset_on_rate_2_units() -> None:
    net = tiny_cnn((2, 2, 2)).double()
    x = images(2, 16)
    grid = undiscard.wrap(net, budget=64, criterion="grid", units=[0, 1, 2]).search(x)
    assert grid == undiscard.wrap(net, budget=64, criterion="offset", units=[0, 1, 2]).search(x)
    one = undiscard.wrap(_strided(2), budget=4, criterion="grid").search(images(1, 8))
    assert one == undiscard.wrap(_strided(2), budget=4, criterion="offset").search(images(1, 8)) == [[(0,), (1,), (2,), (3,)]]


def test_lazy_search_by_hand(monkeypatch) -> None:
    """An output-scored search on rates (2, 2), scores set by hand (a criterion reading a table; others 1.0).
    Prior (offsets): the root's successors (1,0) (2,0) (3,0) (0,1) (0,2) (0,3); (2,0)'s (2,1) (2,2) (2,3);
    (3,0)'s (3,1) (3,2) (3,3) (lengths 10, 10, 18); (1,0)'s (1,2) (1,1) (1,3) (lengths 5, 9, 13).

    root (0.5) gives (1,0) (0.7: behind the root), then (2,0) (0.2: ahead of it), whose three successors
    follow (depth 2: none is pushed); the root gives (3,0) (0.6), then, still ahead of both, (0,1) (0,2)
    (0,3); then (3,0) at 0.6 gives its three, and (1,0) at 0.7 its three, last."""
    from undiscard.search import criteria

    table = {(0, 0): 0.5, (1, 0): 0.7, (2, 0): 0.2, (3, 0): 0.6}

    class Table(criteria.Criterion):
        def score(self, ctx, images, features, logits, states, depth):
            return [table.get(s, 1.0) for s in states]

    monkeypatch.setitem(criteria._CRITERIA.entries, "_table", Table)
    want = [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2), (2, 3), (3, 0), (0, 1), (0, 2), (0, 3), (3, 1), (3, 2), (3, 3),
            (1, 2), (1, 1), (1, 3)]
    net, x = tiny_cnn((2, 2)).double(), images(2, 16)
    for budget in (2, 5, 11, 16):
        got = undiscard.wrap(net, budget=budget, criterion="_table", units=[0, 1]).search(x)
        assert got == [want[:budget]] * 2
    assert want == ref_lazy(lambda s: table.get(s, 1.0), [2, 2], 16)


def test_a_criterion_prior_orders_the_successors(monkeypatch) -> None:
    """An output-scored criterion tries successors in the order of its prior: here largest offset first, so
    the first state after the root is the last unit's (4,4) (phase 3), whatever the scores say."""
    from undiscard.search import criteria

    class FarFirst(type(criteria.get_criterion("entropy"))):
        def prior(self, ctx, states):
            return [-float(dy * dy + dx * dx) for dy, dx in (state_offset(s, ctx.rates, ctx.spatial) for s in states)]

    monkeypatch.setitem(criteria._CRITERIA.entries, "_far_first", FarFirst)
    net, x = tiny_cnn((2, 2, 2)).double(), images(3, 16)
    model = undiscard.wrap(net, budget=8, criterion="_far_first", units=[0, 1, 2])
    got = model.search(x)
    assert all(per[1] == (0, 0, 3) for per in got)
    table = state_table(model, x)
    for i, per in enumerate(got):
        want = ref_lazy(lambda s: ref_entropy(table[s][i]), [2, 2, 2], 8,
                        prior=lambda s: -sum(v * v for v in ref_offset(s, [2, 2, 2])))
        assert per == want


def test_unknown_criterion() -> None:
    with pytest.raises(undiscard.UndiscardError, match="criterion"):
        undiscard.wrap(tiny_cnn(), criterion="nope")


# --------------------------------------------------------------------------- state_offset


@pytest.mark.parametrize("state, rates, spatial, want", [
    ((0, 0, 0), (2, 2, 2), None, (0, 0)),
    ((1, 0, 0), (2, 2, 2), None, (0, 1)),
    ((2, 0, 0), (2, 2, 2), None, (1, 0)),
    ((3, 1, 2), (2, 2, 2), None, (1 + 0 + 4, 1 + 2 + 0)),  # (1,1) + 2*(0,1) + 4*(1,0) = (5, 3)
    ((3, 3, 3), (2, 2, 2), None, (7, 7)),
    ((6, 3), (4, 2), None, (1 + 4, 2 + 4)),  # s=6 at R=4: (1,2); s=3 at R=2: (1,1)*4
    ((15, 3), (4, 2), None, (3 + 4, 3 + 4)),
    ((0, 2), (4, 2), None, (4, 0)),
    ((1, 5, 3), (2, 3, 2), (True, False, True), (0 + 2, 1 + 2)),  # side unit adds nothing, no scale
    ((0, 8, 0), (2, 3, 2), (True, False, True), (0, 0)),
    ((5, 2), (3, 2), (True, True), (1 + 3, 2 + 0)),  # s=5 at R=3: (1,2); s=2 at R=2: (1,0)*3
])
def test_state_offset(state, rates, spatial, want) -> None:
    assert state_offset(state, rates, spatial) == want
    sp = spatial if spatial is not None else [True] * len(rates)
    assert ref_offset(state, rates, sp) == want


def test_evaluate_states_scores_every_state_alone() -> None:
    """evaluate_states: one row per state in state-space order, top-1 of run_state, offsets, deltas."""
    from undiscard.evaluation.runner import evaluate_states

    net = tiny_cnn((2, 2)).double()
    x = images(10, 16)
    model = undiscard.wrap(net, budget=1, units=[0, 1])
    rows_before_prepare = evaluate_states(model, x, torch.zeros(10, dtype=torch.long))  # prepares itself
    assert len(rows_before_prepare) == 16
    table = state_table(model, x)
    labels = table[(1, 2)].argmax(-1)  # state (1, 2) is right on every image
    rows = evaluate_states(model, x, labels, batch_size=3)
    assert [r["state"] for r in rows] == all_states([2, 2])
    for r in rows:
        want = 100.0 * (table[r["state"]].argmax(-1) == labels).double().mean().item()
        assert r["top1"] == pytest.approx(want)
        assert (r["dy"], r["dx"]) == ref_offset(r["state"], [2, 2], [True, True])
        assert r["delta"] == pytest.approx(r["top1"] - rows[0]["top1"])
    assert rows[6]["state"] == (1, 2) and rows[6]["top1"] == 100.0
    plain = (net(x).argmax(-1) == labels).double().mean().item() * 100
    assert rows[0]["top1"] == pytest.approx(plain)  # state 0 is the original model
