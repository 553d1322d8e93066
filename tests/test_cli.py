"""The command line: listing, the demo on a small slice, output files, and one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import undiscard
from undiscard import zoo
from undiscard.cli import main
from undiscard.data import load_fashion_mnist, normalize, resize, to_float

TRAINED = [n for n in zoo.list_models() if zoo.weights_path(n).exists()]
needs_weights = pytest.mark.skipif(not TRAINED, reason="no trained zoo weights in this checkout")


def test_models_lists_zoo_names(capsys):
    """Both zoos: the classifiers, then the segmenters."""
    from undiscard.zoo import segmentation as segzoo

    assert main(["models"]) == 0
    out = capsys.readouterr().out.split()
    expected = [f"zoo:{n}" for n in zoo.list_models() + segzoo.list_models()]
    assert [n for n in out if n.startswith("zoo:")] == expected
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["models"]
    assert [r["model"] for r in rows if r["model"].startswith("zoo:")] == expected
    assert {r["task"] for r in rows if r["model"].startswith("zoo:seg_")} == {"segmentation"}


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "undiscard", "models"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split()[0].startswith("zoo:")


@needs_weights
def test_demo_json_rows_and_files(capsys, tmp_path):
    name = TRAINED[0]
    code = main(["demo", "--models", name, "--limit", "40", "--budget", "1,4", "--no-lite0", "--quiet", "--json",
                 "--out", str(tmp_path)])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    rows = payload["results"]
    ours = [r for r in rows if r["tta"] is None]
    aggregates = ["entropy", "attention"] if zoo.aggregator_path(name).is_file() else ["entropy"]
    assert [(r["model"], r["budget"], r["aggregate"]) for r in ours] == \
        [(f"zoo:{name}", b, a) for b in (1, 4) for a in aggregates]
    for r in rows:
        for key in ("top1", "top1_shifted", "consistency", "cost"):
            assert isinstance(r[key], float)
        assert r["n"] == 40
    assert ours[0]["cost"] == 1.0 and ours[-1]["cost"] > 1.0
    # budget 1 is the plain model: its accuracy recomputed here without undiscard
    images, labels = load_fashion_mnist("test")
    cfg = zoo.model_config(name)
    x = normalize(resize(to_float(images[:40]), cfg["input_size"][-1]), cfg["in_chans"])
    with torch.no_grad():
        pred = zoo.create_model(name)(x).argmax(-1)
    assert ours[0]["top1"] == pytest.approx(100.0 * (pred == torch.as_tensor(labels[:40])).float().mean().item())
    # TTA alone with 4 views and flip x 2 states: the same total budget, cost counted over all views
    tta = [(r["tta"], r["budget"], r["tta_views"], r["total_budget"]) for r in rows if r["tta"]]
    assert tta == [("standard/mean", 1, 4, 4), ("flip/mean", 2, 2, 4)]
    assert [r["cost"] for r in rows if r["tta"]][0] == 4.0
    for f in ("results.json", "results.csv", "metrics_vs_budget.png", "accuracy_vs_cost.png", "tta_comparison.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["results"] == rows


def test_demo_aps_rows_are_the_aps_search_at_budget_two(capsys):
    name = TRAINED[0]
    assert main(["demo", "--models", name, "--limit", "24", "--budget", "1,2", "--no-lite0", "--quiet",
                 "--aggregate", "entropy", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    aps = [r for r in rows if r["criterion"] == "aps"]
    assert [(r["budget"], r["tta"], r["tta_views"]) for r in aps] == [(2, None, 1), (2, "flip/mean", 2)]
    # the row is what wrap(criterion="aps") at budget 2 predicts, at what it costs
    images, labels = load_fashion_mnist("test")
    cfg = zoo.model_config(name)
    x = normalize(resize(to_float(images[:24]), cfg["input_size"][-1]), cfg["in_chans"])
    model = undiscard.wrap(zoo.create_model(name), budget=2, criterion="aps")
    with torch.no_grad():
        pred = model(x).argmax(-1)
    assert aps[0]["top1"] == pytest.approx(100.0 * (pred == torch.as_tensor(labels[:24])).float().mean().item())
    assert aps[0]["cost"] == pytest.approx(model.last_cost) and 1.0 < aps[0]["cost"] < 2.5
    assert not any(r["criterion"] == "aps" for r in json.loads(_demo_json(capsys, name, "--no-aps"))["results"])


def _demo_json(capsys, name: str, *extra: str) -> str:
    assert main(["demo", "--models", name, "--limit", "8", "--budget", "1,2", "--no-lite0", "--quiet",
                 "--aggregate", "entropy", "--json", *extra]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["demo", "--models", "nope", "--no-lite0"], "unknown zoo model(s) nope"),
    (["demo", "--budget", "0"], "budgets must be positive"),
    (["demo", "--budget", "a,b"], "comma-separated integers"),
    (["demo", "--limit", "0", "--no-lite0"], "--limit must be positive"),
    (["demo", "--photo-pairs", "0"], "--photo-pairs must be positive"),
    (["demo", "--max-shift", "0"], "--max-shift must be >= 1"),
    (["demo", "--aggregate", "median", "--no-lite0"], "--aggregate must list some of"),
    (["demo", "--aggregator", "x.pt", "--no-lite0"], "fits one model"),
    (["train-aggregator", "--model", "zoo:resnext", "--data", "/nonexistent", "--out", "x.pt"], "not a directory"),
    (["fit-tta", "--model", "zoo:resnext", "--data", ".", "--aggregate", "mean", "--out", "x.pt"],
     "need no fitting"),
    (["demo", "--device", "cuda:0"] if not torch.cuda.is_available() else ["demo", "--device", "nope"], "device"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    assert main(argv + ["--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
