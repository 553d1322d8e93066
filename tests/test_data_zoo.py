"""Fashion-MNIST reader, bundled test set, shifts, preprocessing, and the bundled model zoo (no training)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from undiscard import data, zoo
from undiscard.data import fashion_mnist as fm

# ---------------------------------------------------------------------------------------------- idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, suffix, dtype):
    arr = (np.arange(2 * 3 * 5) * 7 % 251).astype(dtype).reshape(2, 3, 5)
    path = tmp_path / f"a-idx3{suffix}"
    data.write_idx(path, arr)
    out = data.read_idx(path)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_idx_header_is_standard(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    data.write_idx(path, np.array([3, 1, 4], dtype=np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])


def test_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"PK\x03\x04junk")
    with pytest.raises(ValueError, match="not an idx file"):
        data.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(short)


def _write_fake_set(root, n_train=6, n_test=4):
    rng = np.random.default_rng(0)
    sets = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        img_name, lab_name = fm._FILES[split]
        data.write_idx(root / (img_name + ".gz"), images)
        data.write_idx(root / lab_name, labels)  # one compressed, one not: both are found
        sets[split] = (images, labels)
    return sets


def test_load_from_directory(tmp_path):
    sets = _write_fake_set(tmp_path)
    for split in ("train", "test"):
        images, labels = data.load_fashion_mnist(split, root=tmp_path)
        assert images.dtype == np.uint8 and labels.dtype == np.int64
        np.testing.assert_array_equal(images, sets[split][0])
        np.testing.assert_array_equal(labels, sets[split][1])


def test_missing_files_give_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)) as e:
        data.load_fashion_mnist("train", root=tmp_path)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(fm, "DEBIAN_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
        data.load_fashion_mnist("train")
    assert str(tmp_path / "nowhere") in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="split"):
        data.load_fashion_mnist("val")


def test_bundled_test_set():
    assert data.BUNDLED_TEST.is_file() and data.BUNDLED_TEST.stat().st_size < 6_000_000
    images, labels = data.load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert labels.min() == 0 and labels.max() == 9
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 1000))
    assert len(data.CLASS_NAMES) == 10 and data.CLASS_NAMES[9] == "Ankle boot"


def test_train_val_split():
    tr, va = data.train_val_split(100, val_size=20, seed=3)
    assert len(tr) == 80 and len(va) == 20
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(100))
    tr2, va2 = data.train_val_split(100, val_size=20, seed=3)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    assert not np.array_equal(va, data.train_val_split(100, val_size=20, seed=4)[1])


# -------------------------------------------------------------------------------------------- shift


def _reference_shift(img, dy, dx):
    """Pad by the largest shift, then crop: an independent way to translate with zero fill."""
    m = 8
    p = torch.nn.functional.pad(img, (m, m, m, m))
    h, w = img.shape[-2:]
    return p[..., m - dy:m - dy + h, m - dx:m - dx + w]


@pytest.mark.parametrize("max_shift,min_shift", [(1, 1), (4, 1), (3, 2), (2, 0)])
def test_shift_images_properties(max_shift, min_shift):
    x = torch.rand(64, 2, 9, 11) + 0.5  # strictly positive, so zero marks the fill
    shifted, offsets = data.shift_images(x, max_shift=max_shift, seed=7, min_shift=min_shift)
    assert shifted.shape == x.shape and offsets.shape == (64, 2) and offsets.dtype == torch.int64
    cheb = offsets.abs().amax(dim=1)
    assert int(cheb.min()) >= min_shift and int(cheb.max()) <= max_shift
    for k, (dy, dx) in enumerate(offsets.tolist()):
        torch.testing.assert_close(shifted[k], _reference_shift(x[k], dy, dx), rtol=0, atol=0)
        # content moved exactly by the offset ...
        h, w = x.shape[-2:]
        src = x[k, :, max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
        dst = shifted[k, :, max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
        assert torch.equal(src, dst)
        # ... and exactly the uncovered rows/columns are zero
        assert int((shifted[k] == 0).sum()) == x.shape[1] * (h * w - (h - abs(dy)) * (w - abs(dx)))
    again, offsets2 = data.shift_images(x, max_shift=max_shift, seed=7, min_shift=min_shift)
    assert torch.equal(again, shifted) and torch.equal(offsets2, offsets)


def test_shift_images_seed_and_coverage():
    x = torch.rand(2000, 1, 6, 6)
    _, a = data.shift_images(x, max_shift=2, seed=0)
    _, b = data.shift_images(x, max_shift=2, seed=1)
    assert not torch.equal(a, b)
    assert len({tuple(o) for o in a.tolist()}) == 24  # every offset with 1 <= max(|dy|,|dx|) <= 2 occurs
    with pytest.raises(ValueError):
        data.shift_images(x, max_shift=1, seed=0, min_shift=2)
    with pytest.raises(ValueError):
        data.shift_images(x[0], max_shift=1, seed=0)


def test_preprocess():
    images, _ = data.load_fashion_mnist("test")
    x = data.preprocess(images[:4])
    assert x.shape == (4, 1, 32, 32) and x.dtype == torch.float32
    border = (0.0 - data.MEAN) / data.STD
    assert torch.allclose(x[:, :, :2, :], torch.full_like(x[:, :, :2, :], border))
    inner = torch.as_tensor(images[:4]).float().div(255).sub(data.MEAN).div(data.STD)
    torch.testing.assert_close(x[:, 0, 2:30, 2:30], inner)
    assert data.preprocess(images[:2], input_size=64, in_chans=3).shape == (2, 3, 64, 64)


# ---------------------------------------------------------------------------------------------- zoo

MODELS = zoo.list_models()
STRIDED_NAMES = ("PatchMerging",)


def _strided_layers(model):
    out = []
    for name, m in model.named_modules():
        stride = getattr(m, "stride", None)
        if isinstance(m, (torch.nn.Conv2d, torch.nn.MaxPool2d, torch.nn.AvgPool2d)):
            s = stride if isinstance(stride, int) else max(stride)
            if s > 1:
                out.append(name)
        elif type(m).__name__ in STRIDED_NAMES:
            out.append(name)
    return out


def test_zoo_registry():
    assert len(MODELS) >= 6
    assert {"resnet_basic", "resnext", "mobilenetv2", "convnext", "swin", "pvtv2"} <= set(MODELS)
    with pytest.raises(zoo.UnknownModelError, match="nope"):
        zoo.create_model("nope")
    cfg = zoo.model_config("zoo:resnet_basic")
    assert cfg["input_size"] == (1, 32, 32) and cfg["num_classes"] == 10 and len(cfg["class_names"]) == 10
    assert cfg["mean"] == (data.MEAN,) and cfg["std"] == (data.STD,)


def test_missing_weights_named(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo.CATALOG, "weights_dir", tmp_path)
    with pytest.raises(zoo.MissingWeightsError, match="convnext.pt"):
        zoo.create_model("convnext")


@pytest.mark.parametrize("name", MODELS)
def test_zoo_model_builds(name):
    torch.manual_seed(0)
    model = zoo.create_model(name, pretrained=False)
    assert not model.training
    c, h, w = zoo.model_config(name)["input_size"]
    x = torch.randn(2, c, h, w)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 10)
        if hasattr(model, "forward_features"):
            feats = model.forward_features(x)
            assert (2, 2) in {tuple(feats.shape[1:3]), tuple(feats.shape[2:4])}  # NHWC (Swin) or NCHW
            torch.testing.assert_close(model.forward_head(feats), logits)
    assert len(_strided_layers(model)) >= 3


@pytest.mark.parametrize("name", MODELS)
def test_zoo_weights(name):
    path = zoo.weights_path(name)
    if not path.is_file():
        pytest.skip(f"{path} not trained yet (python scripts/train_zoo.py --model {name})")
    assert path.stat().st_size < 5_000_000
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    model = zoo.create_model(name)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    images, labels = data.load_fashion_mnist("test")
    x = data.preprocess(images[:256], input_size=zoo.model_config(name)["input_size"][-1])
    with torch.no_grad():
        acc = (model(x).argmax(1).numpy() == labels[:256]).mean()
    assert acc > 0.85, f"{name}: {acc:.3f} on 256 test images"


@pytest.mark.parametrize("name", MODELS)
def test_zoo_training_log_matches_recipe(name):
    """The committed log belongs to the committed recipe and meets the zoo's bar (>= 90% test top-1)."""
    log = zoo.training_log(name)
    if log is None or not zoo.weights_path(name).is_file():
        pytest.skip(f"{name} not trained yet")
    recorded = {"amp": "fp32", **log["recipe"]}  # logs written before `amp` existed trained in fp32
    assert recorded == zoo.train_recipe(name)
    assert len(log["history"]) == log["recipe"]["epochs"]
    assert log["test_acc"] >= 0.90, f"{name}: {log['test_acc']:.4f}"
    assert log["weights_bytes"] == zoo.weights_path(name).stat().st_size


def test_catalog_save_round_trips_fp16_weights_and_log(tmp_path, monkeypatch):
    """What the training scripts write (fp16 weights + log, atomically) is what create_model loads."""
    from undiscard.zoo.catalog import fp16_state

    monkeypatch.setattr(zoo.CATALOG, "weights_dir", tmp_path / "weights")
    monkeypatch.setattr(zoo.CATALOG, "logs_dir", tmp_path / "logs")
    torch.manual_seed(1)
    trained = zoo.build_model("resnext")
    state = fp16_state(trained)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    path = zoo.CATALOG.save("resnext", state, {"model": "resnext"})
    assert path == tmp_path / "weights" / "resnext.pt" and sorted(p.name for p in path.parent.iterdir()) == ["resnext.pt"]
    assert zoo.training_log("resnext") == {"model": "resnext", "weights_bytes": path.stat().st_size}
    loaded = zoo.create_model("resnext")
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k].to(v.dtype)), k


def test_run_record_says_how_and_where_training_ran():
    import time

    from undiscard._compat import import_timm
    from undiscard.zoo.catalog import run_record

    import_timm()
    rec = run_record(time.time() - 5.0, time.process_time(), 0.5, ("timm", "not_imported_pkg"))
    assert 5.0 <= rec["wall_seconds"] < 60 and rec["cpu_seconds"] >= 0 and rec["load_avg_1min_start"] == 0.5
    assert rec["torch"] == torch.__version__ and "timm" in rec and "not_imported_pkg" not in rec
    assert rec["threads"] == torch.get_num_threads()
