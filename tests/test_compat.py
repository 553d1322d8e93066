"""Importing the optional extras after ``import undiscard`` (issue: ``import undiscard, timm`` failed)."""
import subprocess
import sys

import pytest


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("extra", ["timm", "torchvision"])
def test_import_undiscard_then_extra_builds_a_model(extra):
    pytest.importorskip(extra)
    build = ("timm.create_model('resnet18', num_classes=3)" if extra == "timm"
             else "torchvision.models.resnet18(num_classes=3)")
    code = (f"import undiscard, {extra}, torch\n"
            f"m = {build}.eval()\n"
            "print(tuple(m(torch.zeros(1, 3, 32, 32)).shape))")
    done = _run(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(1, 3)"


def test_the_import_hook_steps_aside_after_first_use():
    code = ("import sys, undiscard, undiscard._compat as c\n"
            "before = c._FIX in sys.meta_path\n"
            "import torchvision\n"
            "print(before, c._FIX in sys.meta_path)")
    done = _run(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False"]


def test_random_weight_timm_and_torchvision_models_warn_once_each():
    from undiscard.models.loading import load_model

    for spec in ("timm:resnet18", "torchvision:resnet18"):
        with pytest.warns(UserWarning, match="random weights"):
            load_model(spec)


def test_a_text_file_as_weights_is_one_clear_line(tmp_path):
    from torch import nn

    from undiscard._files import load_weights
    from undiscard.errors import UndiscardError

    text = tmp_path / "w.txt"
    text.write_text("hello\n")
    with pytest.raises(UndiscardError, match="not a PyTorch state_dict or checkpoint"):
        load_weights(nn.Linear(1, 1), str(text))
