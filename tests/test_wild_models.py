"""Models written the ways people write them: budget 1 is the model; budget 4 equals an independent
reference, or raises the documented error.

References (float64, aggregate="mean", align=False, so the aggregate is the plain mean of the chosen
states' feature maps):
- ``affine``: the head after the feature map is affine (pooling/flatten + Linear), so the aggregated
  logits are the mean over the chosen states of ``run_state`` logits;
- ``hook``: the model's own head code, written out here, applied to the mean of the feature maps that a
  forward hook on the named module captured while ``run_state`` ran each chosen state.
"""
from __future__ import annotations

import collections
import dataclasses
import warnings
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import undiscard
from undiscard import PhaseError, UndiscardError
from undiscard.analysis.outputs import OutputError
from undiscard.analysis.split import SplitError


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]


class ViewSequentialFC(nn.Module):
    """The PyTorch-tutorial CNN: conv/ReLU/MaxPool blocks, ``x.view(x.size(0), -1)``, Sequential FC."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(*_block(3, 4), *_block(4, 6), *_block(6, 6))
        self.classifier = nn.Sequential(nn.Linear(6 * 2 * 2, 8), nn.ReLU(), nn.Linear(8, 5))

    def forward(self, x):
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)


def _view_fc_head(net: nn.Module, f: Tensor) -> Tensor:
    return net.classifier(f.view(f.size(0), -1))


def flatten_module() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, 2, 1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 4 * 4, 5))


class TorchFlatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 6, 3, 2, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class MeanHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3, 2, 1))
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(F.relu(self.body(x)).mean((2, 3)))


class AdaptiveSqueeze(nn.Module):
    def __init__(self, squeeze_all: bool = False):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 6, 3, 2, 1)
        self.fc = nn.Linear(6, 5)
        self.squeeze_all = squeeze_all

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = F.adaptive_avg_pool2d(x, 1)
        x = x.squeeze() if self.squeeze_all else x.squeeze(-1).squeeze(-1)
        return self.fc(x)


class FunctionalPool(nn.Module):
    """A strided conv module (searchable) and an ``F.max_pool2d`` in forward (reported, left at phase 0)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, 1, 1), nn.Conv2d(4, 6, 3, 2, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        return self.fc(F.relu(self.conv2(x)).mean((2, 3)))


class DictOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        pooled = self.body(x).mean((2, 3))
        return {"logits": self.fc(pooled), "pooled": pooled}


class TupleOutput(nn.Module):
    """GoogLeNet-style: (logits, aux logits), the auxiliary classifier reading an earlier activation."""

    def __init__(self):
        super().__init__()
        self.stem, self.stage = nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 6, 3, 2, 1)
        self.fc, self.aux = nn.Linear(6, 5), nn.Linear(4, 5)

    def forward(self, x):
        mid = F.relu(self.stem(x))
        f = F.relu(self.stage(mid))
        return self.fc(f.mean((2, 3))), self.aux(mid.mean((2, 3)))


Outputs = collections.namedtuple("Outputs", ["aux", "logits"])


class NamedTupleOutput(TupleOutput):
    def forward(self, x):
        logits, aux = super().forward(x)
        return Outputs(aux, logits)


@dataclasses.dataclass
class ModelOutput:  # Hugging Face style: an object with .logits (fx cannot trace its construction)
    logits: Tensor
    hidden: Tensor


class ObjectOutput(MeanHead):
    def forward(self, x):
        hidden = F.relu(self.body(x))
        return ModelOutput(self.fc(hidden.mean((2, 3))), hidden)


class NoStride(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


class ConvClassifier(nn.Module):
    """SqueezeNet-style: a 1x1-conv classifier, ReLU, global pooling. Its class-score maps are the last
    spatial activation, so they are the features; the head (pool + flatten) is affine."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, 2, 1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(6, 5, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class PooledConvHead(nn.Module):
    """MobileNetV3-style: global pooling, then a 1x1 conv + Hardswish + Linear head (a conv in the head)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, 2, 1), nn.ReLU())
        self.conv_head, self.act, self.fc = nn.Conv2d(6, 8, 1), nn.Hardswish(), nn.Linear(8, 5)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.fc(self.act(self.conv_head(x)).flatten(1))


def _pooled_conv_head(net: nn.Module, f: Tensor) -> Tensor:
    return net.fc(net.act(net.conv_head(F.adaptive_avg_pool2d(f, 1))).flatten(1))


class Nested(nn.Module):
    """A model saved from ``nn.DataParallel``-style code: the network lives in ``self.module``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.module = net

    def forward(self, x):
        return self.module(x)


class Guarded(MeanHead):
    """Python control flow on the input's shape: torch.fx cannot trace it (the hook fallback splits it)."""

    def forward(self, x):
        if x.shape[1] != 3:
            raise ValueError("expected RGB images")
        return super().forward(x)


class SkipToLogits(MeanHead):
    """Logits read the input image directly (a bias from its mean colour): no split reproduces it."""

    def __init__(self):
        super().__init__()
        self.colour = nn.Linear(3, 5)

    def forward(self, x):
        return super().forward(x) + self.colour(x.mean((2, 3)))


def _seed(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return factory().eval().double()

    return make


# name: (factory, input (C, H, W), reference ("affine" | ("hook", module name, head) | error class), match)
MODELS = {
    "view+sequential-fc": (ViewSequentialFC, (3, 16, 16), ("hook", "features", _view_fc_head), None),
    "nn.Flatten": (flatten_module, (3, 16, 16), ("hook", "3", lambda n, f: n[5](n[4](f))), None),
    "torch.flatten": (TorchFlatten, (3, 16, 16), "affine", None),
    "mean((2, 3))": (MeanHead, (3, 16, 16), "affine", None),
    "adaptive_avg_pool2d+squeeze(-1)": (AdaptiveSqueeze, (3, 16, 16), "affine", None),
    "adaptive_avg_pool2d+squeeze()": (lambda: AdaptiveSqueeze(squeeze_all=True), (3, 16, 16), SplitError,
                                      "keep the batch dimension"),
    "functional max_pool2d": (FunctionalPool, (3, 16, 16), "affine", None),
    "dict output": (DictOutput, (3, 16, 16), "affine", None),
    "tuple output": (TupleOutput, (3, 16, 16), "affine", None),
    "namedtuple output": (NamedTupleOutput, (3, 16, 16), "affine", None),
    "object with .logits": (ObjectOutput, (3, 16, 16), "affine", None),
    "no strided layer": (NoStride, (3, 8, 8), PhaseError, r"budget 4 exceeds the 1 states .*\(none\)"),
    "1x1-conv classifier": (ConvClassifier, (3, 16, 16), "affine", None),
    "pooled 1x1-conv head": (PooledConvHead, (3, 16, 16), ("hook", "features", _pooled_conv_head), None),
    "self.module nesting": (lambda: Nested(ViewSequentialFC()), (3, 16, 16),
                            ("hook", "module.features", lambda n, f: _view_fc_head(n.module, f)), None),
    "nn.DataParallel": (lambda: nn.DataParallel(MeanHead()), (3, 16, 16), "affine", None),
    # the hook fallback's features end at the last *module* (body); the functional ReLU is in the head
    "control flow (hook fallback)": (Guarded, (3, 16, 16),
                                     ("hook", "body", lambda n, f: n.fc(F.relu(f).mean((2, 3)))), None),
    "logits read the input": (SkipToLogits, (3, 16, 16), SplitError, "cannot split .*features=.*head="),
}


FORMED = {"namedtuple output", "object with .logits"}  # logits in a field: the wrapped model returns the type


def _values(out) -> list:
    """The fields of a namedtuple or dataclass output, in order."""
    return list(out) if isinstance(out, tuple) else [getattr(out, f.name) for f in dataclasses.fields(out)]


def _inputs(shape: tuple[int, int, int], n: int = 2) -> Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _quiet_wrap(net: nn.Module, **kw) -> undiscard.Undiscard:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # functional max_pool2d is reported: tested below
        return undiscard.wrap(net, **kw)


@pytest.mark.parametrize("name", list(MODELS))
def test_budget_1_is_the_model(name, one_thread):
    factory, shape, _, _ = MODELS[name]
    net = _seed(factory)()
    x = _inputs(shape)
    with torch.no_grad():
        raw = net(x)
        model = undiscard.wrap(net, budget=1)
        out = model(x)
    # a namedtuple with a logits field comes back as the network's own output (undiscard.analysis.outputs.present)
    if name in FORMED:
        assert type(out) is type(raw) and all(torch.equal(a, b) for a, b in zip(_values(out), _values(raw)))
    else:
        assert torch.equal(out, undiscard.analysis.outputs.select_output(raw))
    assert model.last_cost == 1.0


def _reference(model: undiscard.Undiscard, x: Tensor, reference) -> Tensor:
    states = model.search(x)
    rows = []
    for i, per_image in enumerate(states):
        xi = x[i:i + 1]
        if reference == "affine":
            rows.append(torch.stack([model.run_state(xi, s)[0] for s in per_image]).mean(0))
            continue
        _, module_name, head = reference
        maps: list[Tensor] = []
        hook = model.net.get_submodule(module_name).register_forward_hook(lambda m, a, o: maps.append(o))
        try:
            for s in per_image:
                model.run_state(xi, s)
        finally:
            hook.remove()
        rows.append(head(model.net, torch.stack(maps).mean(0))[0])
    return torch.stack(rows)


@pytest.mark.filterwarnings("ignore:strided layers left at phase 0")  # reported: tested below
@pytest.mark.parametrize("name", list(MODELS))
def test_budget_4_equals_a_reference_or_refuses(name, one_thread):
    factory, shape, reference, match = MODELS[name]
    net = _seed(factory)()
    x = _inputs(shape)
    if isinstance(reference, type):
        model = _quiet_wrap(net, budget=4, aggregate="mean", align=False)
        with pytest.raises(reference, match=match) as err, torch.no_grad():
            model(x)
        assert "\n" not in str(err.value)  # one line
        return
    model = _quiet_wrap(net, budget=4, aggregate="mean", align=False)
    with torch.no_grad():
        out = model(x)
        if name in FORMED:  # the aggregate in the network's own type, its other fields None
            assert type(out) is type(net(x)) and [v is None for v in _values(out)].count(False) == 1
            out = out.logits
        assert model.num_states >= 4 and all(len(per) == 4 for per in model.search(x))
        torch.testing.assert_close(out, _reference(model, x, reference))


def test_channels_last_input(one_thread):
    """(``x.view(x.size(0), -1)`` itself fails on channels-last maps; nn.Flatten reshapes.)"""
    net = _seed(flatten_module)()
    x = _inputs((3, 16, 16)).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(undiscard.wrap(net, budget=1)(x), net(x))
        model = undiscard.wrap(net, budget=4, aggregate="mean", align=False)
        torch.testing.assert_close(model(x), _reference(model, x, MODELS["nn.Flatten"][2]))


def test_functional_strided_op_is_reported_and_left_at_phase_0(one_thread):
    net = _seed(FunctionalPool)()
    with pytest.warns(UserWarning, match=r"left at phase 0: forward \(FunctionalPool\): F\.max_pool2d with stride "
                                         r"\(2, 2\).*nn\.MaxPool2d"):
        model = undiscard.wrap(net, budget=4, example_input=_inputs((3, 16, 16), 1))
    assert [u.name for u in model.units] == ["conv2"]


def test_which_split_is_used(one_thread):
    x = _inputs((3, 16, 16), 1)
    methods = {name: _quiet_wrap(_seed(MODELS[name][0])(), budget=2, example_input=x).split_method
               for name in ("view+sequential-fc", "object with .logits", "control flow (hook fallback)")}
    assert methods == {"view+sequential-fc": "graph capture", "object with .logits": "graph capture",
                       "control flow (hook fallback)":
                           "hook fallback (cached at 1 of 1 cuts before phased layers, head from the features)"}


def test_hook_fallback_caches_before_each_unit(one_thread):
    """The hook fallback resumes the model's own forward at a cut before each unit, and its head runs from the
    features: the same network costs what graph capture costs (one forward at the root), and a state costs
    the network from its unit on (what the engine counts as the ideal), not a forward from the input."""
    x = _inputs((3, 16, 16))
    costs, engines = {}, {}
    for factory in (MeanHead, Guarded):  # the same network; fx cannot trace Guarded
        model = undiscard.wrap(_seed(factory)(), budget=4)
        with torch.no_grad():
            model(x)
        engine = engines[model.split_method.split(" (")[0]] = next(iter(model._engines.values()))
        costs[model.split_method.split(" (")[0]] = (model.last_cost, engine.flops.root / engine.flops.baseline)
    assert costs["graph capture"][1] == 1.0 and costs["hook fallback"][1] == pytest.approx(1.0)
    assert costs["hook fallback"][0] == pytest.approx(costs["graph capture"][0])
    hook = engines["hook fallback"]
    f = hook.flops
    assert len(set(hook.cut)) == len(hook.cut) == 2
    for d, k in enumerate(hook.cut):  # a state from this unit: its segment on, and the head
        assert sum(f.segment[k:]) + f.head == pytest.approx(f.tail[d])


def test_hook_fallback_drops_a_cut_the_model_reads_across(one_thread):
    """A residual read from before a cut: resuming there would see zeros, so that cut is not kept (and
    the search is still exact: budget 4 equals the reference)."""
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.c0, self.c1 = nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 2, 1)
            self.c2, self.fc = nn.Conv2d(4, 6, 1), nn.Linear(6, 5)

        def forward(self, x):
            if x.shape[1] != 3:
                raise ValueError("expected RGB images")
            a = F.relu(self.c0(x))
            return self.fc(F.relu(self.c2(self.c1(a) + a[:, :, ::2, ::2])).mean((2, 3)))

    net = _seed(Residual)()
    x = _inputs((3, 16, 16))
    model = undiscard.wrap(net, budget=4, aggregate="mean", align=False)
    with torch.no_grad():
        out = model(x)
        ref = _reference(model, x, ("hook", "c2", lambda n, f: n.fc(F.relu(f).mean((2, 3)))))
    assert model.split_method == "hook fallback (cached at 0 of 1 cuts before phased layers, head from the features)"
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("when", ["budget 1", "before setup"])
def test_units_before_setup_say_how_to_get_them(when, one_thread):
    model = undiscard.wrap(_seed(MeanHead)(), budget=4)
    if when == "budget 1":
        model(_inputs((3, 16, 16)), budget=1)  # budget 1 runs the network only: nothing is set up
    for attr in ("units", "search_units", "num_states", "split_method"):
        with pytest.raises(UndiscardError, match=r"known once the model is set up.*prepare\(x\).*example_input=x"):
            getattr(model, attr)
    model.prepare(_inputs((3, 16, 16), 1))
    assert model.num_states == 16 and [u.name for u in model.search_units] == ["body.0", "body.3"]


def test_units_known_from_example_input(one_thread):
    model = undiscard.wrap(_seed(MeanHead)(), budget=4, example_input=_inputs((3, 16, 16), 1))
    assert [u.name for u in model.units] == ["body.0", "body.3"]
    assert model.num_states == 16


# --- output= -------------------------------------------------------------------------------------
class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU())
        self.a, self.b = nn.Linear(4, 5), nn.Linear(4, 3)

    def forward(self, x):
        f = self.body(x).mean((2, 3))
        return {"scores": self.a(f), "extra": self.b(f)}


def test_an_ambiguous_output_names_its_keys(one_thread):
    net = _seed(TwoHeads)()
    with pytest.raises(OutputError, match=r"keys 'scores', 'extra'.*output="):
        undiscard.wrap(net, budget=1)(_inputs((3, 16, 16)))


@pytest.mark.parametrize("output, key", [("scores", "scores"), ("extra", "extra"),
                                         (lambda out: out["extra"], "extra")])
def test_output_selects_the_logits(output, key, one_thread):
    net = _seed(TwoHeads)()
    x = _inputs((3, 16, 16))
    with torch.no_grad():
        assert torch.equal(undiscard.wrap(net, budget=1, output=output)(x), net(x)[key])
        model = undiscard.wrap(net, budget=4, output=output, aggregate="mean", align=False)
        torch.testing.assert_close(model(x), _reference(model, x, "affine"))
        assert model(x).shape == net(x)[key].shape


def test_output_index_of_a_tuple(one_thread):
    net = _seed(TupleOutput)()
    x = _inputs((3, 16, 16))
    with torch.no_grad():
        assert torch.equal(undiscard.wrap(net, budget=1, output=1)(x), net(x)[1])
    with pytest.raises(OutputError, match="output=5"):
        undiscard.wrap(net, budget=1, output=5)(x)
    with pytest.raises(OutputError, match="output= must be"):
        undiscard.wrap(net, budget=1, output=2.5)


# --- flatten + FC heads under alignment --------------------------------------------------------------
def _aligned_by_hand(m: Tensor, dy: int, dx: int, stride: int) -> Tensor:
    """The documented alignment: upsample by the stride (nearest), shift by the offset (zero fill),
    average-pool back by the stride."""
    up = m.repeat_interleave(stride, 2).repeat_interleave(stride, 3)
    shifted = torch.zeros_like(up)
    h, w = up.shape[-2:]
    shifted[..., dy:, dx:] = up[..., :h - dy, :w - dx]
    return F.avg_pool2d(shifted, stride)


def test_flatten_fc_head_sees_aligned_maps(one_thread):
    """The middle unit is searched; budget 2 adds one nonzero-offset state; the FC reads the mean of the
    original map and that state's map moved back onto the original grid."""
    net = _seed(ViewSequentialFC)()
    x = _inputs((3, 16, 16), 1)
    model = undiscard.wrap(net, budget=2, aggregate="mean", align=True)
    with torch.no_grad():
        out = model(x)
        (_, state), = model.search(x)
        assert [u.name for u in model.search_units] == ["features.5"]
        dy, dx = divmod(state[0], 2)
        assert (dy, dx) != (0, 0)
        maps: list[Tensor] = []
        hook = model.net.features.register_forward_hook(lambda m, a, o: maps.append(o))
        try:
            model.run_state(x, (0,))
            model.run_state(x, state)
        finally:
            hook.remove()
        stride = 4  # from the searched unit's input (8 px) to the 2x2 feature map
        ref = _view_fc_head(model.net, (maps[0] + _aligned_by_hand(maps[1], dy, dx, stride)) / 2)
        torch.testing.assert_close(out, ref)
        unaligned = undiscard.wrap(net, budget=2, aggregate="mean", align=False)(x)
        torch.testing.assert_close(unaligned, _view_fc_head(model.net, (maps[0] + maps[1]) / 2))


# --- the engine still caches at cuts ------------------------------------------------------------------
def test_graph_split_keeps_the_search_cheap(one_thread):
    """Searching a late unit re-runs only what follows it: well below the 4x of recomputing each state."""
    net = _seed(ViewSequentialFC)()
    x = _inputs((3, 16, 16))
    model = _quiet_wrap(net, budget=4, units=["features.8"])
    with torch.no_grad():
        model(x)
    assert 1.0 < model.last_cost < 2.0


# --- real third-party models, installed from PyPI as a user would -----------------------------------
def test_minicnn_from_pypi(one_thread):
    """``minicnn`` (PyPI): TinyCNN (conv, F.relu, pool, ``x.view(-1, 16*14*14)``, Linear) is searched;
    SimpleCNN shares one MaxPool2d module between two calls: each call gets its own module
    (:mod:`undiscard.analysis._unshare`), so both are searched, and each state equals the network written out with
    the two pool calls at those phases."""
    mini = pytest.importorskip("MiniCNN")
    x = _inputs((1, 28, 28))
    torch.manual_seed(0)
    tiny = mini.TinyCNN().eval().double()
    with torch.no_grad():
        assert torch.equal(undiscard.wrap(tiny, budget=1)(x), tiny(x))
        model = undiscard.wrap(tiny, budget=4, aggregate="mean", align=False)
        ref = _reference(model, x, ("hook", "pool", lambda n, f: n.fc1(f.view(-1, 16 * 14 * 14))))
        torch.testing.assert_close(model(x), ref)
    simple = mini.SimpleCNN().eval().double()
    with torch.no_grad():
        assert torch.equal(undiscard.wrap(simple, budget=1)(x), simple(x))
        model = undiscard.wrap(simple, budget=4, example_input=x[:1], extend="zero")  # polyphase's semantics
        assert [u.name for u in model.search_units] == ["pool", "pool__1"] and model.num_states == 16
        assert model(x).shape == (x.shape[0], 10)
        for state in [(0, 0), (2, 1), (3, 3)]:
            h = undiscard.polyphase(simple.pool, F.relu(simple.conv1(x)), phase=state[0])
            h = undiscard.polyphase(simple.pool, F.relu(simple.conv2(h)), phase=state[1])
            ref = simple.fc2(F.relu(simple.fc1(h.view(-1, 64 * 7 * 7))))
            torch.testing.assert_close(model.run_state(x, state), ref)
