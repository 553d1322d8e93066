"""How far perfect masks and a classifier's labels get on the segmentation test split (a ceiling for the zoo).

    python scripts/seg_ceiling.py [--models resnet_basic,convnext,...] [--out results/segmentation/ceiling]

Every object of the 2,000 bundled test canvases is painted with its true mask, in its true place and
paint order, but labelled with what a classification-zoo model predicts for its source image; the
canvases' label maps are then scored against the true ones (mIoU over background + 10 classes). Two
views of an object per classifier:

* ``native``: the 28x28 Fashion-MNIST test image, as the classifier was trained to see it;
* ``as pasted``: the image resized to the object's side on the canvas (20-44 px, what a segmenter sees)
  and resized back to 28x28, so the detail lost at small sides is lost here too.

Occlusion and the border crop are not seen by the classifier (it always gets the whole object), and the
masks are perfect, so these are upper bounds on what a segmenter whose recognition is as good as the
classifier's could reach, not predictions of it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from undiscard import zoo
from undiscard.data import load_fashion_mnist, preprocess
from undiscard.data import segmentation as segdata
from undiscard.evaluation.report import stamp
from undiscard.metrics.segmentation import confusion_matrix, iou_per_class
from undiscard.zoo import segmentation as segzoo


def object_rows(layouts: np.ndarray) -> np.ndarray:
    """The objects of padded layouts (N, max_objects, 5) (padding rows are -1), canvas by canvas: (n, 5)."""
    return np.concatenate([lay[lay[:, 0] >= 0] for lay in layouts])


@torch.no_grad()
def predict(name: str, net: torch.nn.Module, images: np.ndarray, batch: int = 500) -> np.ndarray:
    """Class (0..9) that zoo classifier ``name`` (loaded as ``net``) predicts for each uint8 (N, 28, 28) image."""
    spec = zoo.model_config(name)
    out = [net(preprocess(images[i:i + batch], input_size=spec["input_size"][-1], in_chans=spec["in_chans"])).argmax(1)
           for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()


def as_pasted(images: np.ndarray, sides: np.ndarray) -> np.ndarray:
    """Each image resized to its side (as the canvas generator pastes it) and back to 28x28 (uint8)."""
    out = np.empty_like(images)
    for i, (img, side) in enumerate(zip(images, sides)):
        x = torch.from_numpy(img.astype(np.float32))[None, None]
        y = F.interpolate(x, size=(int(side),) * 2, mode="bilinear", align_corners=False, antialias=True).round()
        z = F.interpolate(y, size=img.shape, mode="bilinear", align_corners=False, antialias=int(side) > img.shape[0])
        out[i] = z[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def score(gen: segdata.CanvasGenerator, layouts: np.ndarray, labels: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per-class IoU (11,) of the canvases repainted with object labels ``labels`` (one per layout row)."""
    cm = torch.zeros(segdata.NUM_CLASSES, segdata.NUM_CLASSES, dtype=torch.int64)
    k = 0
    for i, lay in enumerate(layouts):
        lay = lay[lay[:, 0] >= 0].copy()
        lay[:, 1] = labels[k:k + len(lay)] + 1
        k += len(lay)
        pred = gen.render(lay)[1]
        cm += confusion_matrix(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(masks[i].astype(np.int64)),
                               segdata.NUM_CLASSES)
    return iou_per_class(cm).numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(zoo.list_models()), help="classification zoo models")
    ap.add_argument("--out", default=None, help="folder for ceiling.json and ceiling.md (default: print only)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    _, masks = segdata.load_seg_test()
    info = segdata.seg_test_info()
    gen = segdata.canvas_generator("test", seed=info["seed"])
    layouts = info["layouts"]
    rows = object_rows(layouts)
    sources, true = rows[:, 0], rows[:, 1] - 1
    test_images, test_labels = load_fashion_mnist("test")
    assert np.array_equal(test_labels[sources], true), "layouts do not match the Fashion-MNIST test labels"
    views = {"native": test_images[sources], "as pasted": as_pasted(test_images[sources], rows[:, 4])}
    results = []
    oracle = score(gen, layouts, true, masks)
    results.append({"classifier": "true labels", "view": "-", "object_acc": 1.0, "miou": float(oracle.mean()),
                    "iou": oracle.tolist()})
    for name in args.models.split(","):
        net = zoo.create_model(name)
        for view, imgs in views.items():
            pred = predict(name, net, imgs)
            iou = score(gen, layouts, pred, masks)
            results.append({"classifier": name, "view": view, "object_acc": float((pred == true).mean()),
                            "miou": float(iou.mean()), "iou": iou.tolist()})
            print(f"{name:14s} {view:9s} object acc {100 * results[-1]['object_acc']:.2f}  mIoU {100 * iou.mean():.2f}",
                  flush=True)
    seg = [{"classifier": f"zoo:{m} (segmenter)", "view": "canvas", "object_acc": None,
            "miou": zoo_log["test_miou"], "iou": zoo_log["test_iou"]}
           for m in segzoo.list_models()
           if (zoo_log := segzoo.training_log(m))]
    names = segdata.CLASS_NAMES
    lines = ["| labels from | view | objects right | mIoU | " + " | ".join(names) + " |",
             "|---|---|--:|--:|" + "--:|" * len(names)]
    for r in results + seg:
        acc = "-" if r["object_acc"] is None else f"{100 * r['object_acc']:.1f}"
        lines.append(f"| {r['classifier']} | {r['view']} | {acc} | {100 * r['miou']:.2f} | "
                     + " | ".join(f"{100 * v:.1f}" for v in r["iou"]) + " |")
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        cmd = "python scripts/seg_ceiling.py" + ("" if args.models == ap.get_default("models") else f" --models {args.models}")
        (out / "ceiling.json").write_text(json.dumps(stamp({"command": cmd + f" --out {args.out}", "objects": int(len(rows)),
                                                            "canvases": int(len(layouts)), "class_names": names,
                                                            "rows": results + seg}), indent=1))
        (out / "ceiling.md").write_text(f"`{cmd} --out {args.out}` ({len(rows)} objects on {len(layouts)} canvases)\n\n"
                                        + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
