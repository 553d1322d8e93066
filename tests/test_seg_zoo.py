"""The segmentation zoo: registry, architectures, committed weights and logs (evaluated, never trained)."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from undiscard.data import segmentation as seg
from undiscard.metrics import segmentation as sm
from undiscard.zoo import segmentation as segzoo

pytestmark = pytest.mark.skipif(importlib.util.find_spec("segmentation_models_pytorch") is None,
                                reason="segmentation_models_pytorch (undiscard[seg]) not installed")
MODELS = segzoo.list_models()
SLICE = 120  # bundled test canvases evaluated per model


def _strided(model):
    out = []
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.MaxPool2d, torch.nn.AvgPool2d)):
            s = m.stride if isinstance(m.stride, int) else max(m.stride)
            if s > 1:
                out.append(name)
    return out


def test_registry_and_errors(tmp_path, monkeypatch):
    assert MODELS[:3] == ["seg_deeplabv3plus", "seg_fpn", "seg_segformer"]
    with pytest.raises(segzoo.UnknownModelError, match="nope"):
        segzoo.create_model("nope")
    cfg = segzoo.model_config("zoo:seg_fpn")
    assert cfg["input_size"] == (1, 96, 96) and cfg["num_classes"] == 11 and cfg["class_names"][0] == "background"
    assert cfg["mean"] == (seg.MEAN,) and cfg["ignore_index"] == 255
    monkeypatch.setattr(segzoo.CATALOG, "weights_dir", tmp_path)
    with pytest.raises(segzoo.MissingWeightsError, match="seg_fpn.pt"):
        segzoo.create_model("seg_fpn")


def test_load_model_knows_the_segmentation_zoo(one_thread):
    """``undiscard.load_model("zoo:seg_*")`` from plain Python: the shipped weights in eval mode, the canvases'
    preprocessing, the class names, the shipped order, ``task="segmentation"`` — one LoadedModel type for
    both zoos (the classifiers' stay ``task="classification"``)."""
    import subprocess
    import sys

    import undiscard
    from undiscard.errors import UndiscardError
    from undiscard.models import LoadedModel
    from undiscard.search.orders import zoo_order_path

    for name in MODELS:
        loaded = undiscard.load_model(f"zoo:{name}")
        assert isinstance(loaded, LoadedModel) and loaded.task == "segmentation" and loaded.name == f"zoo:{name}"
        pre = loaded.preprocess
        assert (pre.input_size, pre.in_chans, pre.mean, pre.std) == (96, 1, (seg.MEAN,), (seg.STD,))
        assert loaded.classes == list(seg.CLASS_NAMES) and not loaded.model.training
        order = zoo_order_path(name)
        assert loaded.order == (str(order) if order.exists() else None)
        x = seg.to_input(seg.load_seg_test()[0][:2])
        with torch.no_grad():
            assert torch.equal(loaded.model(x), segzoo.create_model(name)(x))
    assert undiscard.load_model("zoo:resnet_basic").task == "classification"
    with pytest.raises(UndiscardError, match="seg_fpn"):  # an unknown zoo name lists both catalogs
        undiscard.load_model("zoo:nope")
    with pytest.raises(UndiscardError, match="11 classes"):
        undiscard.load_model("zoo:seg_fpn", num_classes=3)
    script = ("import undiscard; m = undiscard.load_model('zoo:seg_fpn'); "
              "print(m.task, m.preprocess.input_size, len(m.classes))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["segmentation", "96", "11"]


def test_missing_smp_is_one_clear_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "segmentation_models_pytorch" else real(name, *a))
    with pytest.raises(segzoo.MissingDependencyError, match=r"undiscard\[seg\]") as e:
        segzoo.create_model("seg_segformer", pretrained=False)
    assert "\n" not in str(e.value) and isinstance(e.value, ImportError)


@pytest.mark.parametrize("name", MODELS)
def test_builds_dense_logits_with_strided_layers(name, one_thread):
    torch.manual_seed(0)
    model = segzoo.create_model(name, pretrained=False)
    assert not model.training
    with torch.no_grad():
        out = model(torch.randn(2, 1, 96, 96))
    assert out.shape == (2, seg.NUM_CLASSES, 96, 96)
    assert len(_strided(model)) >= 4
    assert sum(p.numel() for p in model.parameters()) < 5_000_000  # < 10 MB in fp16


@pytest.mark.parametrize("name", MODELS)
def test_committed_weights_reach_the_logged_miou(name, one_thread):
    path, log = segzoo.weights_path(name), segzoo.training_log(name)
    if not path.is_file() or log is None:
        pytest.skip(f"{name} not trained yet (python scripts/train_segzoo.py --model {name})")
    assert path.stat().st_size < 10_000_000 and log["weights_bytes"] == path.stat().st_size
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    model = segzoo.create_model(name)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert log["params"] == sum(p.numel() for p in model.parameters())
    images, masks = seg.load_seg_test()
    cm = sm.ConfusionMatrix(seg.NUM_CLASSES, seg.IGNORE_INDEX)
    with torch.no_grad():
        for i in range(0, SLICE, 40):
            cm.update(model(seg.to_input(images[i:i + 40])).argmax(1), torch.as_tensor(masks[i:i + 40]))
    # a 120-canvas slice of the 2,000 the log was measured on: the same model, so close (not equal)
    assert abs(cm.miou - log["test_miou"]) < 0.05, (cm.miou, log["test_miou"])
    assert abs(cm.acc - log["test_pixel_acc"]) < 0.01, (cm.acc, log["test_pixel_acc"])


@pytest.mark.parametrize("name", MODELS)
def test_training_log_matches_recipe(name):
    log = segzoo.training_log(name)
    if log is None or not segzoo.weights_path(name).is_file():
        pytest.skip(f"{name} not trained yet")
    assert log["recipe"] == segzoo.train_recipe(name)
    assert len(log["history"]) == log["recipe"]["epochs"]
    assert all({"val_miou", "seconds", "cpu_seconds", "load_avg_1min"} <= set(h) for h in log["history"])
    assert log["data"]["test_canvases"] == 2000 and log["data"]["test_seed"] == seg.seg_test_info()["seed"]
    assert len(log["test_iou"]) == seg.NUM_CLASSES
