"""What a careful user tries on a wrapped model: each works or is one clear error.

Copies (deepcopy, pickle, torch.save), a batch of 0, wrong dtype / channels / size, float16 and bfloat16
models, ``.to()``/``.half()`` of the wrapper, NaN/inf inputs, a model left in train mode,
``torch.compile`` and four threads at once. Tiny models, 16-32 px.
"""
from __future__ import annotations

import concurrent.futures
import copy
import io
import pickle
import threading
import warnings

import pytest
import torch
from torch import nn

import undiscard
from undiscard import PhaseError, UndiscardError

pytestmark = pytest.mark.usefixtures("one_thread")

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def tiny(batchnorm: bool = True) -> nn.Sequential:
    """Three stride-2 conv units (the middle one is searched: 4 states), global pooling, a linear head."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    c = 3
    for _ in range(3):
        layers += [nn.Conv2d(c, 8, 3, 2, 1), nn.BatchNorm2d(8) if batchnorm else nn.Identity(), nn.ReLU()]
        c = 8
    return nn.Sequential(*layers, nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


class ViewNet(nn.Module):
    """The tutorial pattern: features, ``x.view(x.size(0), -1)``, a linear head (fixed input size 32)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).view(x.size(0), -1))


def no_padding() -> nn.Sequential:
    """Needs at least 7x7 inputs: two unpadded 3x3 stride-2 convolutions."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 3, 3, 2), nn.Conv2d(3, 3, 3, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


# --- wrap() arguments -------------------------------------------------------------------------------
@pytest.mark.parametrize("net, match", [
    (None, "needs a torch.nn.Module, got NoneType"),
    ("resnet", r"got the string 'resnet': load it first"),
    (nn.Conv2d, "got the class Conv2d"),
    (3, "got int"),
    (undiscard.wrap(tiny(), budget=1), "already wrapped"),
])
def test_wrap_refuses_what_is_not_a_module(net, match):
    with pytest.raises(UndiscardError, match=match):
        undiscard.wrap(net, budget=2)


# --- copies ---------------------------------------------------------------------------------------
def _torch_save(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


COPIES = {"deepcopy": copy.deepcopy, "pickle": lambda m: pickle.loads(pickle.dumps(m)), "torch.save": _torch_save}


@pytest.mark.parametrize("how", list(COPIES))
@pytest.mark.parametrize("budget, aggregate, prepared", [(1, "entropy", False), (4, "entropy", True),
                                                         (4, "attention", True), (3, "mean", False)])
def test_copies_give_the_same_outputs(how, budget, aggregate, prepared):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the untrained attention aggregator says so
        model = undiscard.wrap(tiny(), budget=budget, aggregate=aggregate, example_input=X if prepared else None)
        with torch.no_grad():
            expected = model(X)
            twin = COPIES[how](model)
            got = twin(X)
    assert torch.equal(got, expected)
    if prepared or budget > 1:
        assert twin.search_units == model.search_units
    assert twin.budget == budget
    assert all(p is not q for p, q in zip(model.parameters(), twin.parameters()))
    if prepared:
        assert len(model._engines) == 1  # the original keeps its engine; the copy built its own


# --- a batch of 0 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("net", [tiny, ViewNet], ids=["sequential", "view"])
@pytest.mark.parametrize("budget", [1, 4])
@pytest.mark.parametrize("prepared", [False, True])
def test_empty_batch(net, budget, prepared):
    """The model's own output on 0 images, shape (0, K); no search; cost 0 (ViewNet cannot view 0 images:
    its output on one blank image, sliced to 0 rows)."""
    empty = X[:0]
    model = undiscard.wrap(net().eval(), budget=budget, example_input=X if prepared else None)
    k = model.net(X).shape[1]
    with torch.no_grad():
        model(X)  # a cost from a real call first: the empty call must reset it
        out = model(empty)
    assert out.shape == (0, k) and out.dtype == X.dtype
    assert model.last_cost == 0.0 and model.last_cost_ideal == 0.0
    assert model.search(empty) == []
    cands = model.candidates(empty)
    assert len(cands) == 0 and model.aggregate_candidates(cands).shape == (0, k)
    assert model.candidates_cost(cands) == (0.0, 0.0)
    searched = len(undiscard.wrap(net().eval(), budget=2, example_input=X).search_units)
    assert model.run_state(empty, (0,) * searched).shape == (0, k)


class DictNet(nn.Module):
    """Hugging Face style: returns {"logits": ..., "aux": ...}."""

    def __init__(self) -> None:
        super().__init__()
        self.body = tiny()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.body(x), "aux": x.mean()}


@pytest.mark.parametrize("net", [tiny, DictNet], ids=["tensor", "dict"])
@pytest.mark.parametrize("budget", [1, 4])
def test_batches_of_zero_and_one(net, budget):
    model = undiscard.wrap(net().eval(), budget=budget)
    with torch.no_grad():
        batch = model(X)
        one = model(X[:1])
        empty = model(X[:0])
    assert one.shape == (1, 5) and empty.shape == (0, 5)
    torch.testing.assert_close(one, batch[:1])  # each image has its own search


def test_prepare_needs_an_image():
    with pytest.raises(PhaseError, match="at least one example image"):
        undiscard.wrap(tiny(), budget=2, example_input=X[:0])


# --- inputs the model cannot take -------------------------------------------------------------------
@pytest.mark.parametrize("budget", [1, 4])
@pytest.mark.parametrize("net, x, match", [
    (tiny, X.half(), r"input dtype torch.float16 does not match the model's torch.float32"),
    (tiny, X.bfloat16(), r"input dtype torch.bfloat16 does not match the model's torch.float32"),
    (tiny, (X * 255).to(torch.uint8), r"input dtype torch.uint8 does not match the model's torch.float32"),
    (tiny, X[:, :1], r"it has 1 channel but the model's first convolution \(0\) expects 3"),
    (tiny, torch.cat([X, X[:, :1]], 1), r"it has 4 channels but the model's first convolution \(0\) expects 3"),
    (no_padding, X[..., :5, :5], r"5x5 pixels is too small; the smallest square input the model runs on is 7x7"),
    (ViewNet, torch.randn(2, 3, 64, 64), r"the model runs on 32x32 inputs but not on 64x64; does it need a fixed"),
], ids=["float16", "bfloat16", "uint8", "1-channel", "4-channel", "too-small", "fixed-size"])
def test_inputs_the_model_cannot_take(budget, net, x, match):
    model = undiscard.wrap(net().eval(), budget=budget)
    with pytest.raises(PhaseError, match=match) as info:
        model(x)
    assert str(info.value).startswith(f"the model cannot run on input of shape {tuple(x.shape[1:])}: ")
    assert "\n" not in str(info.value)


# --- float16 / bfloat16 models; .to() / .half() of the wrapper ---------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_models(dtype):
    net = tiny().to(dtype)
    x = X.to(dtype)
    with torch.no_grad():
        assert torch.equal(undiscard.wrap(net, budget=1)(x), net(x))
        model = undiscard.wrap(net, budget=4)
        out = model(x)
    assert out.dtype == dtype and out.shape == (3, 5) and bool(out.isfinite().all())
    assert model.last_cost > 1.0


@pytest.mark.parametrize("convert, dtype", [(lambda m: m.half(), torch.float16),
                                            (lambda m: m.to(torch.float64), torch.float64),
                                            (lambda m: m.double(), torch.float64),
                                            (lambda m: m.to("cpu"), torch.float32)],
                         ids=["half", "to-float64", "double", "to-cpu"])
def test_converting_the_wrapped_model(convert, dtype):
    """Engines are keyed by input dtype/device and dropped on conversion; the aggregator follows."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the untrained attention aggregator says so
        model = undiscard.wrap(tiny(), budget=4, aggregate="attention", example_input=X)
    assert convert(model) is model
    x = X.to(dtype)
    with torch.no_grad():
        out = model(x)
        model.budget = 1
        exact = model(x)
    assert out.dtype == dtype and bool(out.isfinite().all())
    assert torch.equal(exact, tiny().to(dtype)(x))
    assert {p.dtype for p in model.parameters()} == {dtype}  # backbone and aggregator alike
    if dtype != torch.float32:
        with pytest.raises(PhaseError, match=f"input dtype torch.float32 does not match the model's {dtype}"):
            model(X)


# --- NaN / inf ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_inputs(value):
    """Budget 1 is net(x) as is, silently; above 1 a warning, the search completes, and only the images
    with non-finite pixels get non-finite outputs."""
    net = tiny()
    x = X.clone()
    x[1, 0, 3, 4] = value
    with torch.no_grad():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            exact = undiscard.wrap(net, budget=1)(x)
        reference = net(x)
        model = undiscard.wrap(net, budget=4, criterion="entropy")
        with pytest.warns(UserWarning, match="1 of 3 input images have NaN or infinite values"):
            out = model(x)
        with pytest.warns(UserWarning, match="NaN or infinite"):
            states = model.search(x)
        clean = model(X[[0, 2]])
    torch.testing.assert_close(exact, reference, rtol=0, atol=0, equal_nan=True)
    assert [len(s) for s in states] == [4, 4, 4]
    assert bool(out[[0, 2]].isfinite().all()) and not bool(out[1].isfinite().any())
    torch.testing.assert_close(out[[0, 2]], clean)  # the other images' searches are not disturbed


# --- train mode -----------------------------------------------------------------------------------
def test_a_net_in_train_mode_runs_in_eval_mode():
    net = tiny().train()
    with pytest.warns(UserWarning, match="net is in train mode; undiscard runs a copy of it in eval mode"):
        model = undiscard.wrap(net, budget=1)
    assert net.training and all(m.training for m in net.modules())  # net itself is not changed
    assert not any(m.training for m in model.net.modules())
    running = model.net[1].running_mean.clone()
    with torch.no_grad():
        out = model(X)
    assert torch.equal(out, tiny()(X))  # eval mode: running statistics, no dropout
    assert torch.equal(model.net[1].running_mean, running)


def test_train_leaves_the_backbone_in_eval_mode():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an eval-mode net gets no train-mode warning
        model = undiscard.wrap(tiny(), budget=4, aggregate="attention", aggregator=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.prepare(X)
    assert not model.training and not model.aggregator.training
    assert model.train() is model
    assert model.training and model.aggregator.training  # the aggregator's dropout is on
    assert not any(m.training for m in model.net.modules())  # BatchNorm/Dropout of the backbone are not
    model.eval()
    assert not model.training and not model.aggregator.training
    with pytest.raises(UndiscardError, match="needs a bool"):
        model.train("yes")


# --- torch.compile --------------------------------------------------------------------------------
def test_torch_compile_eager_backend():
    """Works; budget 1 compiles the network itself, setup and search run eagerly (torch.compiler.disable)."""
    torch._dynamo.reset()
    net = tiny()
    try:
        with torch.no_grad():
            exact = torch.compile(undiscard.wrap(net, budget=1), backend="eager")(X)
            model = undiscard.wrap(net, budget=4)
            searched = torch.compile(model, backend="eager")(X)
            assert torch.equal(exact, net(X))
            assert torch.equal(searched, model(X))
    finally:
        torch._dynamo.reset()


# --- threads --------------------------------------------------------------------------------------
@pytest.mark.parametrize("prepared", [False, True])
def test_four_threads_at_once(prepared):
    """Same outputs and per-thread costs as serial calls; the first calls race to build the engine."""
    inputs = [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    budgets = [1, 2, 3, 4] * 2
    with torch.no_grad():
        serial_model = undiscard.wrap(tiny(), budget=4)
        serial = []
        for x, b in zip(inputs, budgets):
            out = serial_model(x, budget=b)
            serial.append((out, serial_model.search(x), serial_model.last_cost))
    model = undiscard.wrap(tiny(), budget=4, example_input=inputs[0] if prepared else None)

    def work(i: int):
        with torch.no_grad():
            out = model(inputs[i], budget=budgets[i])
            return out, model.search(inputs[i]), model.last_cost

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(work, range(len(inputs))))
    for (out, states, cost), (ref, ref_states, ref_cost) in zip(parallel, serial):
        assert torch.equal(out, ref)
        assert states == ref_states
        assert cost == ref_cost  # the cost of this thread's own last call (search at budget 4)
    assert len(model._engines) == 1



class Rendezvous(nn.Module):
    """Runs ``job`` on another thread, and waits for it, whenever its forward runs: while torch.fx traces
    the model (this module is not a leaf), that is in the middle of the trace."""

    def __init__(self, job) -> None:
        super().__init__()
        self.job = job

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        worker = threading.Thread(target=self.job)
        worker.start()
        worker.join()
        return x


def test_setting_up_one_model_does_not_disturb_forwards_in_other_threads():
    """torch.fx patches nn.Module.__call__/__getattr__ process-wide while it traces a split: forwards run
    by other threads meanwhile (a wrapped model's budget-1 path, any other module) must pass through."""
    other = tiny()
    busy = undiscard.wrap(other, budget=1)
    with torch.no_grad():
        expected = other(X)
    results: list[object] = []

    def job() -> None:
        try:
            with torch.no_grad():
                results.append(torch.equal(busy(X), expected) and torch.equal(other(X), expected))
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            results.append(err)

    net = tiny()
    net.insert(3, Rendezvous(job).eval())
    model = undiscard.wrap(net, budget=4, example_input=X)
    assert results and all(r is True for r in results), next(r for r in results if r is not True)
    with torch.no_grad():
        assert model(X).shape == (3, 5)


# --- torch.jit.trace ------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [1, 4])
def test_torch_jit_trace_is_refused_with_a_clear_error(budget):
    """A trace would freeze the searched states and the batch size: refused."""
    from undiscard.errors import UndiscardError

    model = undiscard.wrap(tiny(), budget=budget, example_input=X)  # set up (an unset-up one fails on `units`)
    with pytest.raises(UndiscardError, match="torch.jit.trace cannot record a wrapped model"):
        torch.jit.trace(model, X)
    with torch.no_grad():
        assert torch.equal(model(X), model(X))  # still usable eagerly afterwards
