"""Shared subsampling layers (one ``self.pool`` called after every block) get one module per call."""
from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import undiscard
from undiscard.analysis._unshare import unshare_layers


class TutorialNet(nn.Module):
    """The network of PyTorch's "Training a classifier" (CIFAR-10) tutorial: one pool, called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class TiedConvNet(nn.Module):
    """One strided conv applied twice (weight tying), then a pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.down(torch.relu(self.down(torch.relu(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


def _net(cls):
    torch.manual_seed(0)
    return cls().eval()


@pytest.mark.parametrize("cls, size", [(TutorialNet, 32), (TiedConvNet, 16)])
def test_unshared_model_is_the_model(cls, size):
    net = _net(cls)
    x = torch.randn(3, 3, size, size)
    gm, clones = unshare_layers(net)
    assert gm is not net and len(clones) == 1
    (name, calls), = clones.items()
    assert calls == [name, f"{name}__1"]
    assert torch.equal(gm(x), net(x))
    # clones hold the very same parameter tensors: nothing copied, nothing re-initialised
    orig, clone = gm.get_submodule(name), gm.get_submodule(f"{name}__1")
    assert clone is not orig
    assert all(a is b for a, b in zip(orig.parameters(), clone.parameters()))
    assert [n for n, _ in net.named_modules()] == [n for n, _ in _net(cls).named_modules()]  # net untouched


def test_nothing_shared_returns_the_net_itself():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.LazyLinear(3))
    net(torch.randn(1, 3, 16, 16))
    assert unshare_layers(net.eval()) == (net, {})


def test_untraceable_model_is_returned_unchanged():
    class Branchy(TutorialNet):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                x = x * 1
            return super().forward(x)

    net = _net(Branchy)
    assert unshare_layers(net) == (net, {})


def test_tutorial_net_each_pool_call_is_a_unit():
    net = _net(TutorialNet)
    x = torch.randn(4, 3, 32, 32)
    model = undiscard.wrap(net, budget=4, example_input=x[:1], extend="zero")  # polyphase's semantics below
    assert [u.name for u in model.search_units] == ["pool", "pool__1"]
    assert model.num_states == 16
    assert torch.equal(undiscard.wrap(net, budget=1)(x), net(x))
    out = model(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    # every single state equals the network with the two pool calls at those phases, computed directly
    for state in [(0, 0), (3, 0), (1, 2), (3, 3)]:
        h = F.relu(net.conv1(x))
        h = undiscard.polyphase(net.pool, h, phase=state[0])
        h = F.relu(net.conv2(h))
        h = undiscard.polyphase(net.pool, h, phase=state[1])
        ref = net.fc3(F.relu(net.fc2(F.relu(net.fc1(torch.flatten(h, 1))))))
        assert torch.allclose(model.run_state(x, state), ref, atol=1e-6), state
    # the user's net is not modified, and the wrapped model survives pickling
    assert not hasattr(net, "pool__1")
    again = pickle.loads(pickle.dumps(model))
    assert torch.equal(again(x), out)
