"""Exactness on real architectures (random weights, small inputs; EfficientNet-Lite0 with real weights).

For every architecture:
- the discovered units equal the pinned expectation;
- budget 1 reproduces ``net(x)`` bit for bit;
- ``run_state`` for random states equals an independent reference: a deep copy of the network in which
  each unit layer is *replaced* (plain module surgery, none of undiscard's execution machinery) by a
  module that returns ``polyphase(layer, x)[:, s]`` (the all-phases dense path, itself checked against a
  dense-then-slice reference in test_polyphase);
- the search's cached, batched expansion path gives the same logits as ``run_state`` for the chosen states.
"""
from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

import undiscard
from undiscard.layers import polyphase

from .archs import ARCHS, build


class _RefPhase(nn.Module):
    """A unit layer replaced by one of its phases from the all-phases path; other attributes read through
    to the layer (models that read their layers' weight dtype or stride: Hugging Face ViT, MobileNet)."""

    def __init__(self, layer: nn.Module, phase: int):
        super().__init__()
        self.layer = layer
        self.phase = phase

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["layer"], name)

    def forward(self, x: torch.Tensor, *args: object) -> torch.Tensor:
        return polyphase(self.layer, x, args=args)[:, self.phase]


def reference_logits(net: nn.Module, units: list[undiscard.Unit], state: dict[int, int], x: torch.Tensor) -> torch.Tensor:
    ref = copy.deepcopy(net)
    for u, phase in state.items():
        for name in units[u].layers:
            parent_name, _, child = name.rpartition(".")
            parent = ref.get_submodule(parent_name) if parent_name else ref
            setattr(parent, child, _RefPhase(getattr(parent, child), phase))
    with torch.no_grad():
        return ref(x)


# vit_b_16 has one unit of rate 16: any search computes all 256 phases of an 86M-parameter network;
# its search path is the same replicate-mode path that tv_vit_tiny exercises.
NO_SEARCH = {"tv_vit_b_16"}
TOL = dict(rtol=1e-4, atol=1e-4)  # float32: a dense conv and a strided conv round differently


@pytest.fixture(scope="module", params=sorted(ARCHS))
def arch(request):
    net, x = build(request.param)
    model = undiscard.wrap(net, budget=3, example_input=x)
    return request.param, net, x, model


def test_units_are_pinned(arch):
    name, net, x, model = arch
    found = [(u.name, u.rate, len(u.layers), u.spatial) for u in model.units]
    assert found == ARCHS[name][2]
    # find_units (the public function) agrees with what the wrapper found
    assert [u.layers for u in undiscard.find_units(net, x[:1])] == [u.layers for u in model.units]


def test_budget_one_is_bit_exact(arch):
    _, net, x, model = arch
    model.budget = 1
    try:
        with torch.no_grad():
            assert torch.equal(model(x), net(x))
    finally:
        model.budget = 3


def test_run_state_matches_module_surgery_reference(arch):
    # the reference extends past the edge with the pad value: extend="zero"
    name, net, x, _ = arch
    model = undiscard.wrap(net, budget=3, example_input=x, extend="zero")
    rng = random.Random(name)
    searched = [model.units.index(u) for u in model.search_units]
    for _ in range(2):
        state = tuple(rng.randrange(1, u.num_phases) for u in model.search_units)
        with torch.no_grad():
            ours = model.run_state(x, state)
        ref = reference_logits(net, model.units, dict(zip(searched, state)), x)
        torch.testing.assert_close(ours, ref, **TOL)


def test_search_path_matches_run_state(arch):
    name, net, x, model = arch
    if name in NO_SEARCH:
        pytest.skip("one rate-16 unit: 256 full forwards; tv_vit_tiny covers this path")
    engine = model.prepare(x)
    with torch.no_grad():
        cands = model.candidates(x)
        for i, per_image in enumerate(cands):
            assert len(per_image) == 3 and len({c.state for c in per_image}) == 3
            for c in per_image[1:]:
                direct = model.run_state(x[i:i + 1], c.state)[0]
                torch.testing.assert_close(c.logits, direct, **TOL)
        logits = model(x)
    assert logits.shape == net(x).shape and torch.isfinite(logits).all()
    assert 1.0 < model.last_cost < 3 * max(u.num_phases for u in model.search_units) + 1
