"""The public contract of wrap(): selection of units, errors, no side effects, threads, dtypes."""
from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import undiscard
from undiscard import PhaseError, UndiscardError

from .test_discovery import ReducedAttention


def tiny(rates=(2, 2, 2, 2, 2)) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    c = 3
    for r in rates:
        layers += [nn.Conv2d(c, 8, r + 1, r, 1), nn.BatchNorm2d(8), nn.ReLU()]
        c = 8
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)]
    return nn.Sequential(*layers).eval()


X = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_default_search_units_are_all_but_first_and_last():
    model = undiscard.wrap(tiny(), budget=2, example_input=X)
    assert [u.name for u in model.units] == ["0", "3", "6", "9", "12"]
    assert [u.name for u in model.search_units] == ["3", "6", "9"]
    assert model.num_states == 64


def test_fewer_than_three_units_are_all_searched():
    model = undiscard.wrap(tiny((2, 2)), budget=2, example_input=X)
    assert [u.name for u in model.search_units] == ["0", "3"]


def test_side_units_are_not_searched_by_default():
    model = undiscard.wrap(nn.Sequential(ReducedAttention(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                         nn.Linear(8, 3)).eval(), budget=2, example_input=torch.randn(1, 3, 32, 32))
    assert [(u.name, u.spatial) for u in model.units] == [("0.embed", True), ("0.sr", False), ("0.down", True)]
    assert [u.name for u in model.search_units] == ["0.embed", "0.down"]


@pytest.mark.parametrize("selector, names", [([1, 3], ["3", "9"]), (["12", "0"], ["0", "12"]), ([-1], ["12"]),
                                             ("6", ["6"])])
def test_units_by_index_or_name(selector, names):
    model = undiscard.wrap(tiny(), budget=2, units=selector, example_input=X)
    assert [u.name for u in model.search_units] == names


@pytest.mark.parametrize("selector, match", [([7], "out of range"), (["nope"], "unknown unit 'nope'"),
                                             ([1, 1], "selected twice"), ([True], "index or a name")])
def test_bad_unit_selection(selector, match):
    with pytest.raises(PhaseError, match=match):
        undiscard.wrap(tiny(), budget=2, units=selector, example_input=X)


def test_run_state_errors():
    model = undiscard.wrap(tiny(), budget=2, example_input=X)
    with pytest.raises(PhaseError, match="state has 2 phases but 3 units"):
        model.run_state(X, (1, 2))
    with pytest.raises(PhaseError, match="phase 4 out of range for unit 6"):
        model.run_state(X, (0, 4, 0))
    with pytest.raises(PhaseError, match="out of range"):
        model.run_state(X, (0, -1, 0))
    with pytest.raises(PhaseError, match=r"\(N, C, H, W\)"):
        model(X[0])


@pytest.mark.parametrize("kwargs, match", [
    (dict(budget=0), "budget"), (dict(criterion="best"), "unknown criterion"),
    (dict(aggregate="median"), "unknown aggregate"), (dict(chunk_size=0), "chunk_size"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(UndiscardError, match=match):
        undiscard.wrap(tiny(), **kwargs)


def test_input_too_small_for_a_phase():
    model = undiscard.wrap(nn.Sequential(nn.Conv2d(3, 3, 3, 2), nn.Conv2d(3, 3, 3, 2), nn.AdaptiveAvgPool2d(1),
                                         nn.Flatten()).eval(), budget=2, units=[1], example_input=torch.randn(1, 3, 7, 7))
    with pytest.raises(PhaseError, match=r"cannot run on input of shape \(3, 5, 5\)"):
        model.run_state(torch.randn(1, 3, 5, 5), (1,))
    with pytest.raises(PhaseError, match=r"cannot run on input of shape \(1, 7, 7\)"):
        model(torch.randn(1, 1, 7, 7))


def test_unit_in_the_head_is_refused():
    net = nn.Sequential(nn.Conv2d(3, 3, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 15 * 15, 4)).eval()
    split = dict(features=lambda m, x: m[1](m[0](x)), head=lambda m, f: m[3](m[2](f)))
    with pytest.raises(UndiscardError, match="searched units 0 run in the model's head"):
        undiscard.wrap(net, budget=2, features=lambda m, x: x, head=lambda m, f: m(f),
                       example_input=torch.randn(1, 3, 32, 32))
    model = undiscard.wrap(net, budget=2, example_input=torch.randn(1, 3, 32, 32), **split)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_budget_larger_than_state_space():
    with pytest.raises(PhaseError, match="budget 65 exceeds the 64 states"):
        undiscard.wrap(tiny(), budget=65, example_input=X)


def test_net_is_never_modified():
    net = tiny()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model = undiscard.wrap(net, budget=4)
    model(X)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    for m in net.modules():
        assert "forward" not in vars(m) and not m._forward_hooks and not m._forward_pre_hooks
    assert all(p is not q for p, q in zip(net.parameters(), model.net.parameters()))


def test_no_module_attribute_changes_during_forward():
    model = undiscard.wrap(tiny(), budget=8, example_input=X)
    snapshot = {name: dict(vars(m)) for name, m in model.net.named_modules()}
    model(X)
    after = {name: dict(vars(m)) for name, m in model.net.named_modules()}
    for name, attrs in snapshot.items():
        for key, value in attrs.items():
            if key.startswith("_") and key not in ("_parameters", "_buffers", "_modules"):
                continue
            assert after[name][key] is value or after[name][key] == value, (name, key)


def test_threads_see_their_own_states():
    model = undiscard.wrap(tiny(), budget=2, example_input=X)
    states = [(1, 0, 3), (0, 2, 1), (3, 3, 3), (0, 0, 0)]
    with torch.no_grad():
        expected = [model.run_state(X, s) for s in states]
    results: dict[int, list[torch.Tensor]] = {}

    def work(i: int) -> None:
        with torch.no_grad():
            results[i] = [model.run_state(X, states[i]) for _ in range(5)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(states))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, outs in results.items():
        for out in outs:
            assert torch.equal(out, expected[i])


def test_float64_and_budget_one_cost():
    net = tiny().double()
    model = undiscard.wrap(net, budget=1)
    with torch.no_grad():
        assert torch.equal(model(X.double()), net(X.double()))
    assert model.last_cost == 1.0


def test_cost_is_reported_in_baseline_forwards():
    model = undiscard.wrap(tiny(), budget=4)
    with torch.no_grad():
        model(X)
    # the root (1) plus one expansion of the first searched unit: R² = 4 children from the cut on
    assert 1.0 < model.last_cost <= 5.0
    assert 1.0 < model.last_cost_ideal <= model.last_cost


def test_phase_plan_does_not_leak_out_of_a_failed_call():
    model = undiscard.wrap(tiny(), budget=2, example_input=X)
    with pytest.raises(PhaseError):
        model.run_state(X, (9, 0, 0))
    from undiscard.layers.plans import current_plan

    assert current_plan() is None
