"""``undiscard predict``: what a model predicts for some images, with and without the phase search.

``--task`` (default: ``segmentation`` with ``--mask-out`` or a ``zoo:seg_*`` model, else
``classification``) says what is shown:

- **classification**: the top-k classes by name. Class names come with the model: the shipped ImageNet
  names for the EfficientNet-Lite models and for timm/torchvision ImageNet architectures (1000 classes),
  the Fashion-MNIST names for the zoo; a model without names (``--num-classes`` other than 1000) shows
  class indices. Text output, one line per class::

      photo.jpg
        baseline    37.6%  tiger cat
                    37.2%  Egyptian cat
        budget 8    40.3%  Egyptian cat
                    ...

- **segmentation**: label maps, written as coloured palette PNGs (class index per pixel;
  :data:`undiscard.data.seg_folder.PALETTE`) and overlays. With one image, ``--mask-out FILE`` is the mask
  and ``FILE``'s stem + ``.overlay.png`` the overlay; with several, ``--mask-out DIR`` receives ``NAME.png``
  and ``NAME.overlay.png`` per image (a folder laid out as ``DIR/masks`` of a segmentation folder). Without
  ``--mask-out``, the current directory receives ``NAME.mask.png`` and ``NAME.overlay.png``. The masks come
  from the phase search at ``--budget`` (1: the network itself). Text output: per image, the share of
  pixels of each predicted class.

predict never touches a file it did not create, and says so when it refuses (before any image is
read): a target that is one of the input images, a symbolic link, a directory or other non-file, or an
existing PNG that undiscard did not write (its masks and overlays carry a ``Software: undiscard`` PNG
text chunk, so a re-run replaces its own earlier output); and two inputs whose outputs would have one
name (``a/x.png`` and ``b/x.png``). All masks and overlays of a run are written together
(:class:`undiscard._atomic.OutputSet`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .._atomic import OutputSet
from ..analysis.outputs import select_output
from ..data.folder import ImageReadError, load_image, normalize_batch
from ..data.seg_folder import is_marked_png, overlay, palette_image, save_marked_png
from ..settings import DEFAULT_BUDGET
from ..wrapper import wrap
from .common import (
    TASKS,
    CLIError,
    add_model_args,
    default_search,
    emit_json,
    load_cli_model,
    resolve_device,
    segmentation_input_size,
)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="what a model predicts for images (top-k classes or masks), baseline vs. "
                                       "undiscard")
    add_model_args(p)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--task", choices=TASKS, default=None,
                   help="classification (top-k classes) or segmentation (masks and overlays); default: segmentation "
                        "with --mask-out or a zoo:seg_* model, else classification")
    p.add_argument("--budget", type=int, default=DEFAULT_BUDGET,
                   help=f"states per image for undiscard (default: {DEFAULT_BUDGET})")
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image (default: 5)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="accepted for symmetry; predict shows no progress bar")
    p.add_argument("--mask-out", default=None, help="segmentation: write the label map as a palette PNG here (and "
                   "an overlay); one image: a file, several: a folder of NAME.png (without it: NAME.mask.png in the "
                   "current directory). Never an input, a link, or a PNG undiscard did not write")
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


def task_of(args: argparse.Namespace) -> str:
    """``--task``, or what it defaults to (see the module docstring), decided before any model is loaded."""
    if args.task is not None:
        return args.task
    return "segmentation" if args.mask_out is not None or args.model.startswith("zoo:seg_") else "classification"


def run(args: argparse.Namespace) -> int:
    check_image_files(args.images, args.model)  # both tasks, before any model is loaded
    if args.budget <= 0:
        raise CLIError(f"budget must be positive, got {args.budget}")
    if task_of(args) == "segmentation":
        return _predict_masks(args)
    if args.mask_out is not None:
        raise CLIError("--mask-out writes label maps: it is for --task segmentation")
    return _predict_classes(args)


def _predict_classes(args: argparse.Namespace) -> int:
    """``--task classification``: the top-k classes, baseline and undiscard."""
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
    model = wrap(net, budget=args.budget, units=loaded.units,  # the model's default units, as eval and demo
                 **default_search(None, loaded.order))  # its shipped state order where it has one
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


def _read(path: Path, in_chans: int, size: int | None) -> tuple[np.ndarray, torch.Tensor]:
    try:
        with Image.open(path) as im:
            im = im.convert("L" if in_chans == 1 else "RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.array(im, dtype=np.uint8)
    except (OSError, ValueError) as err:
        raise CLIError(f"cannot read image {path}: {err}") from None
    x = torch.from_numpy(arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1)))
    return arr, x.float().div(255.0)


def _targets(paths: list[Path], mask_out: str | None) -> tuple[list[tuple[Path, Path]], OutputSet]:
    """(mask, overlay) per image (see the module docstring) and the output set that checks and writes them;
    one :class:`CLIError` when two images would write one file."""
    out = Path(mask_out) if mask_out else Path(".")
    if mask_out is None:
        targets = [(out / f"{p.stem}.mask.png", out / f"{p.stem}.overlay.png") for p in paths]
    elif len(paths) > 1 or out.is_dir():
        targets = [(out / f"{p.stem}.png", out / f"{p.stem}.overlay.png") for p in paths]
    else:
        targets = [(out, out.with_name(out.stem + ".overlay.png"))]
    owner: dict[str, Path] = {}
    for p, pair in zip(paths, targets):
        for t in pair:
            if t.name in owner:
                raise CLIError(f"{owner[t.name]} and {p} would both write {t}: give images distinct names, or "
                               "predict them separately")
            owner[t.name] = p
    hint = "choose another --mask-out" if mask_out else "pass --mask-out DIR"
    outputs = OutputSet(targets[0][0].parent, [t.name for pair in targets for t in pair], replace=is_marked_png,
                        inputs=paths, hint=hint)
    return targets, outputs


def _predict_masks(args: argparse.Namespace) -> int:
    """``--task segmentation``: label maps written as masks and overlays."""
    device = resolve_device(args.device)
    paths = [Path(p) for p in args.images]
    targets, outputs = _targets(paths, args.mask_out)  # every target checked before any work
    loaded = load_cli_model(args)
    pre, names = loaded.preprocess, loaded.class_names
    size = segmentation_input_size(loaded, args)
    model = wrap(loaded.model.to(device), budget=args.budget, task="segmentation",
                 **default_search(None, loaded.order))  # its shipped state order where it has one
    records, written = [], []
    for path, (mask_path, overlay_path) in zip(paths, targets):
        arr, x01 = _read(path, pre.in_chans, size)
        with torch.no_grad():
            labels = model(normalize_batch(x01[None], pre.mean, pre.std).to(device)).argmax(1)[0].cpu().numpy()
        written.append((palette_image(labels), Image.fromarray(overlay(arr, labels))))
        counts = np.bincount(labels.reshape(-1), minlength=len(names) or 1)
        shares = {(names[c] if c < len(names) else str(c)): round(float(n) / labels.size, 4)
                  for c, n in enumerate(counts) if n}
        records.append({"image": str(path), "mask": str(mask_path), "overlay": str(overlay_path),
                        "classes": shares})
    with outputs as staging:  # all masks and overlays replace their targets together
        for (mask_path, overlay_path), images in zip(targets, written):
            for target, im in zip((mask_path, overlay_path), images):
                save_marked_png(im, staging / target.name)
    if args.json:
        emit_json({"budget": args.budget, "cost": model.last_cost, "predictions": records})
        return 0
    for r in records:
        print(f"{r['image']} -> {r['mask']} (overlay {r['overlay']})")
        for name, share in sorted(r["classes"].items(), key=lambda kv: -kv[1]):
            print(f"  {100 * share:5.1f}%  {name}")
    return 0
