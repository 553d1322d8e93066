"""``undiscard predict --model zoo:seg_fpn img.png --mask-out mask.png``: label maps of images, written as
coloured palette PNGs (class index per pixel; :data:`undiscard.data.seg_folder.PALETTE`) and overlays.

With one image, ``--mask-out FILE`` is the mask and ``FILE``'s stem + ``.overlay.png`` the overlay; with
several, ``--mask-out DIR`` receives ``NAME.png`` and ``NAME.overlay.png`` per image (a folder laid out as
``DIR/masks`` of a segmentation folder). Without ``--mask-out`` (``zoo:seg_*`` models), the current
directory receives ``NAME.mask.png`` and ``NAME.overlay.png``. The masks come from the phase search at
``--budget`` (1: the network itself). Text output: per image, the share of pixels of each predicted class.

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
from ..data.folder import normalize_batch
from ..data.seg_folder import is_marked_png, overlay, palette_image, save_marked_png
from ..wrapper import wrap
from .common import CLIError, emit_json, resolve_device
from .seg_models import load_seg_model

__all__ = ["predict_segmentation", "is_segmentation_model"]


def is_segmentation_model(spec: str) -> bool:
    """Whether ``predict`` should write masks for ``--model spec`` without being asked (the seg zoo)."""
    return spec.startswith("zoo:seg_")


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


def predict_segmentation(args: argparse.Namespace) -> int:
    """The segmentation branch of ``undiscard predict``."""
    if args.budget <= 0:
        raise CLIError(f"budget must be positive, got {args.budget}")
    device = resolve_device(args.device)
    paths = [Path(p) for p in args.images]
    targets, outputs = _targets(paths, args.mask_out)  # every target checked before any work
    seg = load_seg_model(args.model, getattr(args, "weights", None))
    model = wrap(seg.model.to(device), budget=args.budget, task="segmentation")
    records, written = [], []
    for path, (mask_path, overlay_path) in zip(paths, targets):
        arr, x01 = _read(path, seg.in_chans, seg.input_size)
        with torch.no_grad():
            labels = model(normalize_batch(x01[None], seg.mean, seg.std).to(device)).argmax(1)[0].cpu().numpy()
        written.append((palette_image(labels), Image.fromarray(overlay(arr, labels))))
        counts = np.bincount(labels.reshape(-1), minlength=len(seg.class_names) or 1)
        shares = {(seg.class_names[c] if c < len(seg.class_names) else str(c)): round(float(n) / labels.size, 4)
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
