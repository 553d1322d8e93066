"""criterion="calibrated": a fixed ranked list of states (undiscard.fitting.calibration), its files, its errors."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import undiscard
from undiscard import zoo
from undiscard.data.store import StateStore
from undiscard.errors import UndiscardError
from undiscard.fitting._state_ranking import rank_states
from undiscard.fitting.calibration import calibrate
from undiscard.fitting.objectives import get_objective
from undiscard.search.orders import StateOrder, load_order, save_order
from undiscard.tasks.base import ClassificationTask

pytestmark = pytest.mark.usefixtures("one_thread")


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 10, 1), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten()).eval()


X = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
ORDER = [(0, 0, 0), (0, 0, 3), (0, 1, 0), (2, 0, 0), (1, 1, 0), (0, 2, 3)]


@pytest.mark.parametrize("budget", [1, 2, 4, 6])
def test_first_b_states_each_as_run_state(budget: int) -> None:
    m = undiscard.wrap(net(), budget=budget, criterion="calibrated", order=ORDER, units=[0, 1, 2])
    with torch.no_grad():
        cands = m.candidates(X)
        for i, per in enumerate(cands):
            assert [c.state for c in per] == ORDER[:budget]
            for c in per:
                torch.testing.assert_close(c.logits, m.run_state(X[i:i + 1], c.state)[0], rtol=1e-5, atol=1e-6)
        assert m.candidates_cost(cands, budget)[0] == pytest.approx(m.last_cost, rel=1e-12)
        if budget == 1:
            assert torch.equal(m(X), net()(X))
    big = undiscard.wrap(net(), budget=6, criterion="calibrated", order=ORDER, units=[0, 1, 2])
    with torch.no_grad():
        assert big.candidates_cost(big.candidates(X), budget)[0] == pytest.approx(m.last_cost, rel=1e-12)


def test_order_file_round_trip_and_units_checked(tmp_path) -> None:
    path = save_order(StateOrder(ORDER, ["a", "b", "c"], {"note": 1}), tmp_path / "o.json")
    assert json.loads(path.read_text())["format"] == "undiscard-state-order"
    assert load_order(path).states == ORDER
    m = undiscard.wrap(net(), budget=2, criterion="calibrated", order=path, units=[0, 1, 2])
    with pytest.raises(UndiscardError, match="made for units"):
        m(X)


@pytest.mark.parametrize("order,match", [
    (None, "needs a ranked list"), ([(0, 0, 1), (0, 0, 0)], "must come first"),
    ([(0, 0, 1), (0, 0, 1)], "twice"), ([(0, 0), (0, 1, 1)], "one phase per")])
def test_order_errors(order, match) -> None:
    with pytest.raises(UndiscardError, match=match):
        undiscard.wrap(net(), budget=2, criterion="calibrated", order=order)


def test_root_is_put_first_and_phase_range_checked() -> None:
    assert StateOrder([(0, 1)]).states == [(0, 0), (0, 1)]
    m = undiscard.wrap(net(), budget=2, criterion="calibrated", order=[(0, 0, 9)], units=[0, 1, 2])
    with pytest.raises(UndiscardError, match="out of range"):
        m(X)
    m = undiscard.wrap(net(), budget=4, criterion="calibrated", order=[(0, 0, 1)], units=[0, 1, 2])
    with torch.no_grad():  # a budget beyond the order evaluates the whole order, as a tree search that runs out
        assert [[c.state for c in per] for per in m.candidates(X)] == [[(0, 0, 0), (0, 0, 1)]] * len(X)


@pytest.mark.parametrize("budget", [1, 3, 6])
def test_stop_caps_every_budget(budget: int, tmp_path) -> None:
    order = StateOrder(ORDER, stop=3)
    path = save_order(order, tmp_path / "o.json")
    assert load_order(path).stop == 3 and load_order(path).searched == ORDER[:3]
    m = undiscard.wrap(net(), budget=budget, criterion="calibrated", order=path, units=[0, 1, 2])
    ref = undiscard.wrap(net(), budget=min(budget, 3), criterion="calibrated", order=ORDER, units=[0, 1, 2])
    with torch.no_grad():
        assert [c.state for c in m.candidates(X)[0]] == ORDER[:min(budget, 3)]
        assert torch.equal(m(X), ref(X)) and m.last_cost == pytest.approx(ref.last_cost, rel=1e-12)
        if budget == 1:
            assert torch.equal(m(X), net()(X))
    with pytest.raises(UndiscardError, match="stop must be"):
        StateOrder(ORDER, stop=7)
    with pytest.raises(UndiscardError, match="stop must be"):
        StateOrder(ORDER, stop=0)


def test_best_prefix_is_the_shortest_most_accurate() -> None:
    from undiscard.fitting.calibration import best_prefix

    assert best_prefix([0.5]) == 1  # nothing helped: the original model alone
    assert best_prefix([0.5, 0.4, 0.45]) == 1
    assert best_prefix([0.5, 0.6, 0.6, 0.55]) == 2  # ties: the cheaper prefix
    assert best_prefix([0.5, 0.4, 0.7]) == 3  # a greedy step may pay off one step later


def test_greedy_by_hand() -> None:
    # 4 images, 3 states; state 2 fixes images 2 and 3, state 1 only image 2: greedy takes 2 first
    labels = torch.tensor([0, 0, 1, 1])
    single = torch.tensor([[[5., 0], [5, 0], [5, 0]], [[5, 0], [5, 0], [5, 0]],
                           [[1, 0], [0, 1], [0, 9]], [[1, 0], [1, 0], [0, 9]]])
    with StateStore(4) as store:
        store.write(0, {"logits": single}, {})
        ranked = rank_states(store, lambda rows: (None, store.read("logits", rows), None),
                             lambda maps, logits, offsets, idx: logits[:, idx].mean(1), get_objective("accuracy"),
                             ClassificationTask(), labels, 3, greedy=1, rows=3)
    assert ranked.positions == [0, 2, 1] and ranked.curve == [0.5, 1.0]


def test_calibrate_ranks_every_state_deterministically() -> None:
    y = torch.tensor([0, 3, 7])
    m = undiscard.wrap(net(), budget=1, units=[0, 1])
    a, b = calibrate(m, X, y, greedy=3), calibrate(m, X, y, greedy=3)
    assert a.states == b.states and a.states[0] == (0, 0) and len(set(a.states)) == 16
    assert len(a.meta["greedy_accuracy"]) == 4
    curve = a.meta["greedy_accuracy"]
    assert a.stop == 1 + curve.index(max(curve)) and calibrate(m, X, y, greedy=3, stop=False).stop is None


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_combine_of_aligned_subsets_equals_combine(task: str) -> None:
    # calibration aligns every state once and combines subsets of them: the same as combining each subset
    from undiscard.search._candidates import find_candidates, stack_candidates
    from undiscard.search.criteria import SearchContext, get_criterion
    from undiscard.tasks.aggregation import get_aggregate

    seg = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 5, 3, 2, 1),
                        nn.Upsample(scale_factor=4, mode="bilinear"))
    m = undiscard.wrap(net() if task == "classification" else seg.eval(), budget=8, task=task, units=[0, 1])
    engine = m.prepare(X[:1])
    cands = find_candidates(engine, X, 8, get_criterion("entropy"), SearchContext.of(engine, m.task, 0, None),
                            chunk_size=256)
    f, lg, off = stack_candidates(cands, engine)
    aligned = m.task.aligned_states(engine, f, lg, off, m.align)
    for idx in ([0], [0, 3], [0, 5, 1, 7]):
        for how in ("entropy", "mean"):
            want = m.task.combine(engine, get_aggregate(how), f[:, idx], lg[:, idx], off[:, idx], m.align, None)
            got = m.task.combine_aligned(engine, get_aggregate(how), aligned.select(idx), lg[:, idx], off[:, idx], None)
            torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("name", zoo.list_models())
def test_shipped_zoo_orders_fit_their_models(name: str) -> None:
    # every zoo classifier ships an order made on validation images, for its default units, with a stop
    from undiscard.models.loading import load_model
    from undiscard.search.orders import zoo_order_path

    loaded = load_model(f"zoo:{name}")
    assert loaded.order == str(zoo_order_path(name))
    order = load_order(loaded.order)
    size = zoo.model_config(name)["input_size"]
    m = undiscard.wrap(loaded.model, budget=1, units=loaded.units, example_input=torch.zeros(1, *size))
    order.check(m.search_units)
    assert order.stop is not None and 1 <= order.stop <= len(order.states)
    assert order.meta["images"] == 5000 and "validation" in order.meta["data"]
    curve = order.meta["greedy_accuracy"]
    assert curve[order.stop - 1] == max(curve)


def test_calibrate_runs_without_autograd(monkeypatch) -> None:
    import undiscard.fitting.calibration as calibration

    seen = []
    real = calibration.rank_states

    def spy(store, chunk, combine, objective, task, targets, states, greedy, rows, progress=None):
        maps, logits, offsets = chunk(slice(0, 2))
        seen.append((torch.is_grad_enabled(), combine(maps, logits, offsets, [0, 1]).requires_grad,
                     maps.maps.requires_grad))
        return real(store, chunk, combine, objective, task, targets, states, greedy, rows, progress)

    monkeypatch.setattr("undiscard.fitting.calibration.rank_states", spy)  # calibration imports it by name
    calibrate(undiscard.wrap(net(), budget=1, units=[0, 1]), X, torch.tensor([0, 3, 7]), greedy=2)
    assert seen == [(False, False, False)]