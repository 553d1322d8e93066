"""TorchScript and torch.compile with a wrapped model (results/compile/README.md).

- ``torch.jit.script(wrapped)`` is one UndiscardError, set up or not, at any budget (before TorchScript
  reads any code); the model stays usable.
- ``wrap(torch.compile(net))`` is one UndiscardError saying to compile the wrapped model instead.
- ``torch.compile(wrapped, backend="aot_eager")`` gives the eager outputs bit for bit (the eager backend:
  tests/test_probes.py); inductor is measured in results/compile/README.md, not tested (a minute of C++
  compilation on this machine).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import undiscard
from undiscard import UndiscardError

pytestmark = pytest.mark.usefixtures("one_thread")
X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    c = 3
    for _ in range(3):
        layers += [nn.Conv2d(c, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU()]
        c = 8
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


@pytest.mark.parametrize("budget", [1, 4])
@pytest.mark.parametrize("prepared", [False, True])
def test_torch_jit_script_is_refused_in_one_line(budget, prepared):
    model = undiscard.wrap(tiny(), budget=budget, example_input=X if prepared else None)
    with pytest.raises(UndiscardError, match="torch.jit.script cannot compile a wrapped model") as err:
        torch.jit.script(model)
    assert len(str(err.value).splitlines()) == 1 and "script the network itself" in str(err.value)
    with torch.no_grad():
        assert torch.equal(model(X), model(X))  # still usable eagerly


def test_the_network_itself_still_scripts():
    net = tiny()
    with torch.no_grad():
        assert torch.equal(torch.jit.script(net)(X), net(X))


def test_wrapping_a_compiled_module_is_refused_in_one_line():
    compiled = torch.compile(tiny(), backend="eager")
    with pytest.raises(UndiscardError, match=r"torch.compile'd module: wrap the original network") as err:
        undiscard.wrap(compiled, budget=4)
    assert "net._orig_mod" in str(err.value)


def test_compiled_wrapped_model_with_aot_eager_equals_eager():
    torch._dynamo.reset()
    net = tiny()
    try:
        with torch.no_grad():
            model = undiscard.wrap(net, budget=4)
            want = model(X)
            assert torch.equal(torch.compile(model, backend="aot_eager")(X), want)
            assert torch.equal(torch.compile(undiscard.wrap(net, budget=1), backend="aot_eager")(X), net(X))
    finally:
        torch._dynamo.reset()


def test_importing_undiscard_leaves_the_compiler_unloaded():
    """The eager-only functions disable compilation at their first call (undiscard/_eager.py), so
    ``import undiscard`` (and a command line that never compiles) does not pay for torch._dynamo."""
    import subprocess
    import sys

    code = "import sys, undiscard, undiscard.cli; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
