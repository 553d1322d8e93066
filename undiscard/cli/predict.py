"""``undiscard predict``: the top-k classes of some images, by name, with and without the phase search.

Class names come with the model: the shipped ImageNet names for the EfficientNet-Lite models and for
timm/torchvision ImageNet architectures (1000 classes), the Fashion-MNIST names for the zoo; a model
without names (``--num-classes`` other than 1000) shows class indices. Text output, one line per class::

    photo.jpg
      baseline    37.6%  tiger cat
                  37.2%  Egyptian cat
      budget 8    40.3%  Egyptian cat
                  ...
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..analysis.outputs import select_output
from ..data.folder import ImageReadError, load_image, normalize_batch
from ..settings import DEFAULT_BUDGET
from ..wrapper import wrap
from .common import CLIError, add_model_args, emit_json, load_cli_model, resolve_device


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="top-k classes of images by name, baseline vs. undiscard")
    add_model_args(p)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--budget", type=int, default=DEFAULT_BUDGET,
                   help=f"states per image for undiscard (default: {DEFAULT_BUDGET})")
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image (default: 5)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="accepted for symmetry; predict shows no progress bar")
    p.add_argument("--mask-out", default=None, help="segmentation: write the label map as a palette PNG here (and "
                   "an overlay); one image: a file, several: a folder of NAME.png (zoo:seg_* models without it: "
                   "NAME.mask.png in the current directory). Never an input, a link, or a PNG undiscard did not write")
    return p


def check_image_files(images: list[str], model: str) -> None:
    """One :class:`CLIError` for the first of ``images`` that is not a regular file: a directory gets its
    own message (predict reads image files; ``undiscard eval --data DIR`` reads a folder), a FIFO, device
    or socket says what it is (it is never opened), a missing path is "image not found"."""
    from .._files import check_file

    for p in images:
        path = Path(p)
        if path.is_dir():
            raise CLIError(f"{p} is a directory, not an image file: predict takes image files; to run on a "
                           f"folder of images use: undiscard eval --model {model} --data {p}")
        check_file(path, "image", CLIError)


def run(args: argparse.Namespace) -> int:
    from .predict_segmentation import is_segmentation_model, predict_segmentation

    check_image_files(args.images, args.model)  # both branches, before any model is loaded
    if args.mask_out is not None or is_segmentation_model(args.model):
        return predict_segmentation(args)
    if args.budget <= 0:
        raise CLIError(f"budget must be positive, got {args.budget}")
    if args.top_k <= 0:
        raise CLIError(f"--top-k must be positive, got {args.top_k}")
    device = resolve_device(args.device)
    loaded = load_cli_model(args)
    pre = loaded.preprocess
    images = []
    for p in args.images:  # one unreadable image is the whole command's error, naming the file
        try:
            images.append(load_image(Path(p), **pre.image_kwargs()))
        except ImageReadError:
            raise
        except (OSError, ValueError) as err:
            raise CLIError(f"cannot read image {p}: {err}") from None
    x01 = torch.stack(images)
    x = normalize_batch(x01, pre.mean, pre.std).to(device)
    net = loaded.model.to(device)
    model = wrap(net, budget=args.budget, units=loaded.units)  # the model's default units, as eval and demo
    with torch.no_grad():
        base = select_output(net(x)).softmax(-1)
        ours = select_output(model(x)).softmax(-1)
    names = loaded.class_names

    def topk(p: torch.Tensor) -> list[dict]:
        v, i = p.topk(min(args.top_k, p.shape[-1]))
        return [{"class": int(c), "name": names[int(c)] if int(c) < len(names) else str(int(c)),
                 "prob": round(float(q), 4)} for q, c in zip(v, i)]

    out = [{"image": p, "baseline": topk(base[k]), "undiscard": topk(ours[k])} for k, p in enumerate(args.images)]
    if args.json:
        units = [u.name for u in model.search_units] if args.budget > 1 else []
        emit_json({"budget": args.budget, "cost": model.last_cost, "units": units, "predictions": out})
        return 0
    for rec in out:
        print(rec["image"])
        for label, key in (("baseline", "baseline"), (f"budget {args.budget}", "undiscard")):
            for r, t in enumerate(rec[key]):
                print(f"  {label if r == 0 else '':<10}  {100 * t['prob']:5.1f}%  {t['name']}")

    return 0
