"""criterion="calibrated" for segmentation: states ranked by the aggregate's mIoU on labelled canvases
(undiscard.fitting.calibration with the segmentation task's score), the shipped seg zoo orders, the CLI."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import undiscard
from undiscard.fitting.calibration import calibrate
from undiscard.metrics.segmentation import ConfusionMatrix
from undiscard.search.orders import StateOrder, load_order, zoo_order_path

pytestmark = pytest.mark.usefixtures("one_thread")
HAS_SMP = importlib.util.find_spec("segmentation_models_pytorch") is not None
needs_smp = pytest.mark.skipif(not HAS_SMP, reason="segmentation_models_pytorch (undiscard[seg]) not installed")


def seg_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 5, 3, 2, 1),
                         nn.Upsample(scale_factor=4, mode="bilinear")).eval()


X = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def labels(ignore: int = 255) -> torch.Tensor:
    # labels that depend on the image (so that states differ in quality), some pixels unlabelled
    y = (X[:, 0] > 0).long() + 2 * (X[:, 1] > 0.5).long()
    y[:, :2, :2] = ignore
    return y


def test_score_is_miou_and_pixel_nll_ignoring_non_classes() -> None:
    task = undiscard.wrap(seg_net(), task="segmentation").task
    logits = torch.randn(6, 5, 16, 16, generator=torch.Generator().manual_seed(2))
    y = labels()
    quality, nll = task.calibration_score(logits, y)
    cm = ConfusionMatrix(5, ignore_index=255).update(logits.argmax(1), y)
    assert quality == pytest.approx(cm.miou, abs=1e-12)
    assert nll == pytest.approx(float(F.cross_entropy(logits, y, ignore_index=255)), rel=1e-6)
    assert task.calibration_score(logits, torch.where(y == 255, -1, y)) == (quality, nll)  # any non-class label


def test_greedy_curve_is_what_the_calibrated_search_scores() -> None:
    # the aggregate calibration scores for a prefix is the output wrap(criterion="calibrated") gives at that budget
    y = labels()
    m = undiscard.wrap(seg_net(), budget=1, task="segmentation", units=[0, 1])
    order = calibrate(m, X, y, greedy=4, batch_size=4)
    assert order.states[0] == (0, 0) and len(set(order.states)) == 16 and order.meta["task"] == "segmentation"
    curve = order.meta["greedy_accuracy"]
    assert order.stop == 1 + curve.index(max(curve))
    for b in range(1, 6):
        prefix = StateOrder(order.states[:b], order.units)
        search = undiscard.wrap(seg_net(), budget=b, task="segmentation", units=[0, 1], criterion="calibrated",
                                order=prefix)
        with torch.no_grad():
            out = search(X)
        assert m.task.calibration_score(out, y)[0] == pytest.approx(curve[b - 1], abs=1e-9)
    assert len(set(curve)) > 1  # the states differ: the test is not vacuous


def test_calibrated_search_uses_the_units_its_order_names() -> None:
    y = labels()
    m = undiscard.wrap(seg_net(), budget=1, task="segmentation", units=[0])  # the first unit: not a default
    order = calibrate(m, X, y, greedy=2)
    assert order.units == [m.all_units[0].name]
    searched = undiscard.wrap(seg_net(), budget=3, task="segmentation", criterion="calibrated", order=order)
    searched.prepare(X[:1])
    assert [u.name for u in searched.search_units] == order.units
    assert undiscard.wrap(seg_net(), task="segmentation").prepare(X[:1]).search_units != searched.search_units
    with pytest.raises(undiscard.UndiscardError, match="made for units"):
        undiscard.wrap(seg_net(), budget=3, task="segmentation", criterion="calibrated", order=order,
                       units=[1]).search(X)


def test_half_storage_ranks_alike() -> None:
    y = labels()
    m = undiscard.wrap(seg_net(), budget=1, task="segmentation", units=[0, 1])
    full = calibrate(m, X, y, greedy=3)
    half = calibrate(m, X, y, greedy=3, dtype=torch.float16)
    assert half.states[0] == (0, 0)
    assert half.meta["greedy_accuracy"] == pytest.approx(full.meta["greedy_accuracy"], abs=5e-3)


@needs_smp
@pytest.mark.parametrize("name", ["seg_deeplabv3plus", "seg_fpn", "seg_segformer"])
def test_shipped_seg_orders_fit_their_models(name: str) -> None:
    from undiscard.data import segmentation as segdata

    seg = undiscard.load_model(f"zoo:{name}")
    assert seg.task == "segmentation" and seg.order == str(zoo_order_path(name))
    order = load_order(seg.order)
    # wrap(criterion="calibrated") searches the units the order names
    m = undiscard.wrap(seg.model, budget=1, task="segmentation", criterion="calibrated", order=order)
    order.check(m.prepare(segdata.to_input(segdata.load_seg_test()[0][:1])).search_units)
    assert order.meta["task"] == "segmentation" and order.meta["images"] >= 300
    assert "val" in order.meta["data"] and "test" not in order.meta["data"]
    curve = order.meta["greedy_accuracy"]
    assert order.stop is not None and curve[order.stop - 1] == max(curve)


@needs_smp
def test_cli_calibrate_then_eval_with_the_order(tmp_path, capsys) -> None:
    from undiscard.cli import main
    from undiscard.data import segmentation as segdata
    from undiscard.data.seg_folder import write_seg_folder

    images, masks = segdata.load_seg_test()
    write_seg_folder(tmp_path / "seg", images[:3], masks[:3])
    out = tmp_path / "order.json"
    assert main(["calibrate", "--task", "segmentation", "--model", "zoo:seg_deeplabv3plus", "--data",
                 str(tmp_path / "seg"), "--greedy", "2", "--out", str(out), "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["task"] == "segmentation" and summary["images"] == 3 and len(summary["greedy_accuracy"]) == 3
    order = load_order(out)
    assert order.units == ["encoder.model.maxpool", "encoder.model.layer2.0"] and order.stop is not None

    def evaluate(*extra: str) -> list[dict]:
        assert main(["eval", "--task", "segmentation", "--model", "zoo:seg_deeplabv3plus", "--data",
                     str(tmp_path / "seg"), "--budget", "1,2,3", "--json", "--quiet", *extra]) == 0
        rows = json.loads(capsys.readouterr().out)["results"]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # all but the timing

    rows = evaluate("--order", str(out))
    assert [r["budget"] for r in rows] == [1, 2, 3]
    # budget b scores what calibration's curve says (its first min(b, stop) states), up to float16 storage
    for r in rows:
        want = order.meta["greedy_accuracy"][min(r["budget"], order.stop) - 1]
        assert r["miou"] == pytest.approx(100 * want, abs=0.05)
    shipped = evaluate("--order", str(zoo_order_path("seg_deeplabv3plus")))
    assert evaluate("--criterion", "calibrated") == shipped  # a zoo segmenter's shipped order by default


def test_demo_segmentation_rows_follow_the_demo_criterion(tmp_path, monkeypatch) -> None:
    import argparse

    from undiscard.cli import common
    from undiscard.cli.common import CLIError
    from undiscard.cli.demo import _search_options

    args = argparse.Namespace(criterion="calibrated")
    if zoo_order_path("seg_fpn").is_file():
        assert _search_options(args, "seg_fpn") == {"criterion": "calibrated", "order": str(zoo_order_path("seg_fpn"))}
    assert _search_options(argparse.Namespace(criterion="learned"), "seg_fpn") == {"criterion": "entropy"}
    assert _search_options(argparse.Namespace(criterion="offset"), "seg_fpn") == {"criterion": "offset"}
    monkeypatch.setattr("undiscard.search.orders.zoo_order_path", lambda name: tmp_path / f"{name}.json")
    with pytest.raises(CLIError, match="has no shipped state order"):
        common.shipped_order("seg_fpn", "calibrated")
