"""`eval --extend/--order` and `demo --extend` reach ``undiscard.wrap`` (a spy around the real wrap),
and what the model built from them does: the extension mode set, the calibrated order's states searched."""
from __future__ import annotations

import json

import pytest
import torch

import undiscard
from undiscard import zoo
from undiscard.cli import main

MODEL = next((n for n in zoo.list_models() if zoo.weights_path(n).exists()), None)
pytestmark = pytest.mark.skipif(MODEL is None, reason="no trained zoo weights in this checkout")


class Spy:
    """Records every wrap() call's keyword arguments and the model it returned."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict, object]] = []

    def __call__(self, net, **kwargs):
        model = undiscard.wrap(net, **kwargs)
        self.calls.append((kwargs, model))
        return model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    from undiscard.data import load_fashion_mnist

    root = tmp_path_factory.mktemp("wrap_options") / "data"
    images, labels = load_fashion_mnist("test")
    for i in range(6):
        d = root / f"c{labels[i]}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def order_file(tmp_path_factory):
    """A valid calibrated order for MODEL's default searched units: the original model, then the last state."""
    size = zoo.model_config(MODEL)["input_size"][-1]
    chans = zoo.model_config(MODEL)["in_chans"]
    model = undiscard.wrap(zoo.create_model(MODEL), budget=1, units=zoo.search_units(MODEL),
                           example_input=torch.zeros(1, chans, size, size))
    units = model.search_units
    last = tuple(u.num_phases - 1 for u in units)
    path = tmp_path_factory.mktemp("order") / "order.json"
    path.write_text(json.dumps({"format": "undiscard-state-order", "version": 1, "units": [u.name for u in units],
                                "states": [[0] * len(units), list(last)]}))
    return path, last


def test_eval_passes_extend_and_order_to_wrap(capsys, monkeypatch, folder, order_file):
    path, last = order_file
    spy = Spy()
    monkeypatch.setattr("undiscard.cli.eval.wrap", spy)
    assert main(["eval", "--model", f"zoo:{MODEL}", "--data", str(folder), "--budget", "1,2", "--extend", "replicate",
                 "--order", str(path), "--workers", "0", "--quiet", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    [(kwargs, model)] = spy.calls
    assert kwargs["extend"] == "replicate" and kwargs["order"] == str(path) and kwargs["criterion"] == "calibrated"
    assert model.extend == "replicate"
    x = torch.zeros(2, zoo.model_config(MODEL)["in_chans"], *zoo.model_config(MODEL)["input_size"][-2:])
    model.budget = 2
    assert [list(map(tuple, s)) for s in model.search(x)] == [[(0,) * len(last), last]] * 2
    assert [r["criterion"] for r in rows] == ["calibrated", "calibrated"]
    assert all(isinstance(r["cost"], float) and r["family"] in ("plain", "ours alone") for r in rows)


def test_eval_without_the_options_gives_wrap_defaults_and_the_shipped_order(capsys, monkeypatch, folder):
    """Unset options are wrap's defaults, except the search: a model's shipped state order is its default."""
    spy = Spy()
    monkeypatch.setattr("undiscard.cli.eval.wrap", spy)
    assert main(["eval", "--model", f"zoo:{MODEL}", "--data", str(folder), "--budget", "1", "--workers", "0",
                 "--quiet", "--json"]) == 0
    [(kwargs, _)] = spy.calls
    from undiscard.settings import DEFAULTS

    from undiscard.search.orders import zoo_order_path

    assert kwargs["extend"] == DEFAULTS.extend
    assert kwargs["criterion"] == "calibrated" and kwargs["order"] == str(zoo_order_path(MODEL))
    assert kwargs["chunk_size"] == DEFAULTS.chunk_size and kwargs["align"] == DEFAULTS.align


def test_eval_order_with_another_criterion_is_one_line(capsys, folder, order_file):
    code = main(["eval", "--model", f"zoo:{MODEL}", "--data", str(folder), "--criterion", "entropy",
                 "--order", str(order_file[0]), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--order is the state order of --criterion calibrated" in err and "\n" not in err


def test_demo_passes_extend_to_every_searched_model(capsys, monkeypatch):
    spy = Spy()
    monkeypatch.setattr("undiscard.cli.demo.wrap", spy)
    assert main(["demo", "--models", MODEL, "--limit", "8", "--budget", "1,2", "--no-lite0", "--no-tta",
                 "--no-segmentation", "--extend", "background", "--quiet", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert spy.calls and all(kw["extend"] == "background" and m.extend == "background" for kw, m in spy.calls)
    assert payload["settings"]["extend"] == "background"
    assert payload["summary"]["groups"][0]["name"] == f"zoo:{MODEL}"


def test_demo_has_no_order_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--order", "x.json"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --order" in capsys.readouterr().err


def test_demo_help_shows_no_raw_markup(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "``" not in text and ":mod:" not in text and "--extend" in text and "`undiscard.evaluation.summary`" in text


def test_eval_calibrated_without_order_uses_the_shipped_one(capsys, monkeypatch, folder):
    from undiscard.search.orders import load_order, zoo_order_path

    if not zoo_order_path(MODEL).is_file():
        pytest.skip(f"no shipped order for {MODEL}")
    spy = Spy()
    monkeypatch.setattr("undiscard.cli.eval.wrap", spy)
    assert main(["eval", "--model", f"zoo:{MODEL}", "--data", str(folder), "--budget", "1,16", "--criterion",
                 "calibrated", "--workers", "0", "--quiet", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    [(kwargs, model)] = spy.calls
    shipped = load_order(zoo_order_path(MODEL))
    assert kwargs["order"] == str(zoo_order_path(MODEL)) and model.order.searched == shipped.searched
    x = torch.zeros(2, zoo.model_config(MODEL)["in_chans"], *zoo.model_config(MODEL)["input_size"][-2:])
    model.budget = 16  # capped at the order's stop
    assert [list(map(tuple, s)) for s in model.search(x)] == [shipped.searched] * 2
    assert [r["criterion"] for r in rows] == ["calibrated", "calibrated"]


def test_demo_calibrated_uses_each_models_shipped_order(capsys, monkeypatch):
    from undiscard.search.orders import zoo_order_path

    spy = Spy()
    monkeypatch.setattr("undiscard.cli.demo.wrap", spy)
    assert main(["demo", "--models", MODEL, "--limit", "8", "--budget", "1,2", "--no-lite0", "--no-tta",
                 "--no-segmentation", "--criterion", "calibrated", "--quiet", "--json"]) == 0
    json.loads(capsys.readouterr().out)
    [(kwargs, model)] = [(k, m) for k, m in spy.calls if k.get("criterion") == "calibrated"]
    assert kwargs["order"] == str(zoo_order_path(MODEL)) and model.criterion == "calibrated"
