"""Adaptive polyphase selection (undiscard.search.aps): the shift-invariance theorem on a circular network, the
phase chosen on hand-built inputs, ties, no units = the plain model, states that run_state reproduces,
units of two layers, and the cost counted."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from undiscard import wrap
from undiscard.errors import PhaseError, UndiscardError
from undiscard.search.aps import APSRule, phase_scores, rank_phases
from undiscard.selection import aggregate_states, aps


def circ(cin: int, cout: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, padding_mode="circular")


class Block(nn.Module):
    """A residual block with a strided 3x3 conv and a strided 1x1 shortcut: one unit of two layers."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.conv2 = circ(cin, cout, 2), circ(cout, cout, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=2)

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class CircularNet(nn.Module):
    """Strided convs with circular padding, pointwise ops and global average pooling: with APS at every
    strided layer its output is invariant to circular shifts of a 32x32 input by any integer."""

    def __init__(self):
        super().__init__()
        self.stem, self.body = circ(3, 8, 2), circ(8, 8, 1)
        self.block = Block(8, 16)
        self.down = circ(16, 16, 2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.body(F.relu(self.stem(x))))
        x = F.relu(self.down(self.block(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def circular():
    torch.manual_seed(0)
    net = CircularNet().eval()
    x = torch.randn(4, 3, 32, 32)
    model = wrap(net, budget=1, units=[0, 1, 2], example_input=x[:1])
    return net, model, x


def test_circular_network_is_shift_invariant_with_aps_everywhere(circular):
    net, model, x = circular
    assert [len(u.layers) for u in model.search_units] == [1, 2, 1]  # the block is one unit of two layers
    ref = aps(model, x, border=True).logits  # the whole map scores: no cell is special under circular padding
    plain_moved = 0.0
    for shift in [(1, 0), (0, 1), (1, 1), (3, 5), (2, 7), (8, 8), (31, 17)]:
        moved = torch.roll(x, shift, dims=(2, 3))
        out = aps(model, moved, border=True).logits
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        assert torch.equal(out.argmax(-1), ref.argmax(-1))
        with torch.no_grad():
            plain_moved = max(plain_moved, float((net(moved) - net(x)).abs().max()))
    assert plain_moved > 1e-2  # the plain network is not invariant: the test can fail


def test_invariance_needs_every_unit(circular):
    _, model, x = circular
    ref = aps(model, x, units=[0], border=True).logits
    out = aps(model, torch.roll(x, (1, 1), dims=(2, 3)), units=[0], border=True).logits
    assert float((out - ref).abs().max()) > 1e-3  # later plain units still see a half-cell shift


def test_constant_input_keeps_phase_zero(circular):
    _, model, _ = circular
    result = aps(model, torch.full((2, 3, 32, 32), 0.7))
    assert result.states == [(0, 0, 0), (0, 0, 0)]


def one_by_one(channels: int) -> nn.Module:
    """A 1x1 identity conv with stride 2: its phase s is the input subsampled at offset (s // 2, s % 2)."""
    conv = nn.Conv2d(channels, channels, 1, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
    return nn.Sequential(conv, nn.Flatten()).eval()


def put(x: torch.Tensor, channel: int, phase: int, values: list[float]) -> None:
    """Write ``values`` into the first cells of ``phase`` of ``channel`` of every image of x (N, C, 4, 4)."""
    dy, dx = divmod(phase, 2)
    cells = [(i, j) for i in range(2) for j in range(2)]
    for (i, j), v in zip(cells, values):
        x[:, channel, 2 * i + dy, 2 * j + dx] = v


@pytest.mark.parametrize("p, channel_norm, expected", [(1, False, 1), (2, False, 2), (math.inf, False, 2),
                                                        (2, True, 3)])
def test_hand_built_input_chooses_the_largest_norm(p, channel_norm, expected):
    # channel 0: phase 1 has four 1s (L1 4, L2² 4, Linf 1), phase 2 one 3 (L1 3, L2² 9, Linf 3);
    # channel 1 (tiny) lives at phase 3 only: per-channel normalised it votes 1 for phase 3 and outweighs
    # channel 0's split vote (4/13 and 9/13 at p=2)
    x = torch.zeros(1, 2, 4, 4)
    put(x, 0, 1, [1, 1, 1, 1])
    put(x, 0, 2, [3])
    put(x, 1, 3, [1e-3])
    net = one_by_one(2)
    model = wrap(net, budget=1, example_input=x)
    result = aps(model, x, p=p, channel_norm=channel_norm)
    assert result.states == [(expected,)]
    dy, dx = divmod(expected, 2)
    assert torch.equal(result.logits, x[:, :, dy::2, dx::2].flatten(1))


def test_scores_by_hand():
    maps = torch.zeros(1, 4, 2, 1, 2)  # (N, R², C, h, w)
    maps[0, 1, 0] = torch.tensor([[1.0, -1.0]])
    maps[0, 2, 0] = torch.tensor([[0.0, 3.0]])
    maps[0, 3, 1] = torch.tensor([[-2.0, 0.0]])
    assert phase_scores(maps, APSRule(1)).tolist() == [[0.0, 2.0, 3.0, 2.0]]
    assert phase_scores(maps, APSRule(2)).tolist() == [[0.0, 2.0, 9.0, 4.0]]
    assert phase_scores(maps, APSRule(math.inf)).tolist() == [[0.0, 1.0, 3.0, 2.0]]
    # channel 0: energies 0, 2, 9, 0 -> /11; channel 1: only phase 3 -> 1
    torch.testing.assert_close(phase_scores(maps, APSRule(2, True)),
                               torch.tensor([[0.0, 2 / 11, 9 / 11, 1.0]], dtype=torch.float64))


def test_border_cells_are_left_out_by_default():
    maps = torch.zeros(1, 4, 1, 4, 4)  # (N, R², C, h, w): phase 0 large on its border, phase 1 inside
    maps[0, 0, 0, 0, :] = 5.0
    maps[0, 1, 0, 1:3, 1:3] = 1.0
    assert rank_phases(phase_scores(maps, APSRule(2))).tolist() == [1]
    assert rank_phases(phase_scores(maps, APSRule(2, border=True))).tolist() == [0]
    assert phase_scores(maps, APSRule(1)).tolist() == [[0.0, 4.0, 0.0, 0.0]]


def test_rank_phases_ties_and_runner_up():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    assert rank_phases(scores).tolist() == [1, 0]
    assert rank_phases(scores, 1).tolist() == [2, 1]
    assert rank_phases(scores, 3).tolist() == [0, 3]
    with pytest.raises(PhaseError):
        rank_phases(scores, 4)


def test_runner_up_rank_keeps_the_second_largest():
    x = torch.zeros(1, 1, 4, 4)
    put(x, 0, 3, [5])
    put(x, 0, 1, [4])
    put(x, 0, 0, [1])
    model = wrap(one_by_one(1), budget=1, example_input=x)
    assert aps(model, x).states == [(3,)]
    assert aps(model, x, ranks={0: 1}).states == [(1,)]


def test_no_units_is_the_plain_model_bit_for_bit(circular):
    net, model, x = circular
    result = aps(model, x, units=[])
    with torch.no_grad():
        assert torch.equal(result.logits, net(x))
    assert result.states == [(0, 0, 0)] * len(x)
    assert result.cost == pytest.approx(1.0)


def test_states_run_through_run_state_to_the_same_logits(circular):
    _, model, x = circular
    for units in (None, [0], [1], ["down"]):
        result = aps(model, x, units=units)
        assert any(any(s) for s in result.states)
        for i, state in enumerate(result.states):
            with torch.no_grad():
                again = model.run_state(x[i:i + 1], state)
            torch.testing.assert_close(again[0], result.logits[i], rtol=1e-5, atol=1e-5)
            assert int(again.argmax()) == int(result.logits[i].argmax())


def test_selected_units_only_change(circular):
    _, model, x = circular
    states = aps(model, x, units=[1]).states
    assert all(s[0] == 0 and s[2] == 0 for s in states)
    assert any(s[1] for s in states)


def test_cost_is_one_forward_plus_the_dense_first_layers(circular):
    net, model, x = circular
    with FlopCounterMode(display=False) as c:
        with torch.no_grad():
            net(x[:1])
    total = c.get_total_flops()

    def flops(layer, inp):
        with FlopCounterMode(display=False) as c:
            with torch.no_grad():
                layer(inp)
        return c.get_total_flops()

    stem = flops(net.stem, x[:1])
    h = F.relu(net.body(F.relu(net.stem(x[:1]))))
    conv1 = flops(net.block.conv1, h)  # the block's selecting layer; the shortcut runs strided
    down = flops(net.down, net.block(h))
    expected = (total + 3 * (stem + conv1 + down)) / total
    assert aps(model, x).cost == pytest.approx(expected, rel=1e-9)
    assert aps(model, x, units=[0]).cost == pytest.approx((total + 3 * stem) / total, rel=1e-9)


def test_aggregating_aps_with_the_plain_state(circular):
    net, model, x = circular
    plain = aps(model, x, units=[], features=True)
    selected = aps(model, x, units=[0], features=True)
    both = aggregate_states(model, [plain, selected])
    assert both.shape == plain.logits.shape
    alone = aggregate_states(model, [plain])
    with torch.no_grad():
        torch.testing.assert_close(alone, net(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(UndiscardError):
        aggregate_states(model, [aps(model, x, units=[0])])  # no features


def test_bad_arguments(circular):
    _, model, x = circular
    with pytest.raises(UndiscardError):
        aps(model, x, p=3)
    with pytest.raises(PhaseError):
        aps(model, x, units=[5])
    with pytest.raises(PhaseError):
        aps(model, x, units=["nope"])
    with pytest.raises(PhaseError):
        aps(model, x, units=[0, 0])


# --- criterion="aps": the selection as a search under the budget ------------------------------------------


def _aps_model(net: nn.Module, budget: int, x: torch.Tensor):
    model = wrap(net, budget=budget, criterion="aps", aggregate="mean")
    model.prepare(x)
    return model


def test_aps_criterion_budget_one_is_the_network(circular):
    circular = circular[0]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    model = _aps_model(circular, 1, x)
    assert torch.equal(model(x), circular(x))


def test_aps_criterion_searches_the_first_unit_and_its_second_state_is_the_selection(circular):
    circular = circular[0]
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    model = _aps_model(circular, 2, x)
    assert [u.name for u in model.search_units] == [model.all_units[0].name]
    with torch.no_grad():
        cands = model.candidates(x)
        selected = aps(wrap(circular, budget=1, units=[0]), x)  # the same rule, as a single pass
    assert [per[1].state for per in cands] == selected.states
    torch.testing.assert_close(torch.stack([per[1].logits for per in cands]), selected.logits)


def test_aps_criterion_then_follows_the_grid_order_without_repeating_the_selection(circular):
    circular = circular[0]
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    model = _aps_model(circular, 4, x)
    with torch.no_grad():
        found = model.search(x)
        smaller = _aps_model(circular, 3, x).search(x)
    grid = [s for s in wrap(circular, budget=4, criterion="grid", units=[0]).search(x)[0]][1:]
    for per, small in zip(found, smaller):
        assert len(per) == 4 and per[0] == (0,) and per[1] not in per[2:]  # the selection may be the root's state
        assert (0,) not in per[2:] and len(set(per[2:])) == 2
        assert per[2:] == [s for s in grid if s != per[1]][:2]
        assert small == per[:3]  # the prefix property: one search prices every smaller budget


def test_aps_criterion_cost_is_the_counted_work_and_within_the_budget(circular):
    circular = circular[0]
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), FlopCounterMode(display=False) as plain:
        circular(x)
    for budget in (2, 3, 4):
        model = _aps_model(circular, budget, x)
        with torch.no_grad():
            model(x)
            with FlopCounterMode(display=False) as counter:
                model(x)
            cands = model.candidates(x)
        spent = counter.get_total_flops() / plain.get_total_flops()
        assert model.last_cost == pytest.approx(spent, rel=1e-9)
        assert model.candidates_cost(cands, budget)[0] == pytest.approx(model.last_cost, rel=1e-9)
        # a dense first layer is the one extra: at most what the selected unit's R² phases cost
        assert budget - 1 < model.last_cost <= budget + 0.5
