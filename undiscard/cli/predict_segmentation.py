"""``undiscard predict --model zoo:seg_fpn img.png --mask-out mask.png``: label maps of images, written as
coloured palette PNGs (class index per pixel; :data:`undiscard.data.seg_folder.PALETTE`) and overlays.

With one image, ``--mask-out FILE`` is the mask and ``FILE``'s stem + ``.overlay.png`` the overlay; with
several, ``--mask-out DIR`` receives ``NAME.png`` and ``NAME.overlay.png`` per image. The masks come
from the phase search at ``--budget`` (1: the network itself). Text output: per image, the share of
pixels of each predicted class.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.folder import normalize_batch
from ..data.seg_folder import overlay, palette_image
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


def predict_segmentation(args: argparse.Namespace) -> int:
    """The segmentation branch of ``undiscard predict``."""
    if args.budget <= 0:
        raise CLIError(f"budget must be positive, got {args.budget}")
    device = resolve_device(args.device)
    paths = [Path(p) for p in args.images]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise CLIError(f"image not found: {missing[0]}")
    out = Path(args.mask_out) if args.mask_out else Path(".")
    if len(paths) > 1 or out.is_dir() or not args.mask_out:
        out.mkdir(parents=True, exist_ok=True)
        targets = [(out / f"{p.stem}.png", out / f"{p.stem}.overlay.png") for p in paths]
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        targets = [(out, out.with_name(out.stem + ".overlay.png"))]
    seg = load_seg_model(args.model, getattr(args, "weights", None))
    model = wrap(seg.model.to(device), budget=args.budget, task="segmentation")
    records = []
    for path, (mask_path, overlay_path) in zip(paths, targets):
        arr, x01 = _read(path, seg.in_chans, seg.input_size)
        with torch.no_grad():
            labels = model(normalize_batch(x01[None], seg.mean, seg.std).to(device)).argmax(1)[0].cpu().numpy()
        palette_image(labels).save(mask_path)
        Image.fromarray(overlay(arr, labels)).save(overlay_path)
        counts = np.bincount(labels.reshape(-1), minlength=len(seg.class_names) or 1)
        shares = {(seg.class_names[c] if c < len(seg.class_names) else str(c)): round(float(n) / labels.size, 4)
                  for c, n in enumerate(counts) if n}
        records.append({"image": str(path), "mask": str(mask_path), "overlay": str(overlay_path),
                        "classes": shares})
    if args.json:
        emit_json({"budget": args.budget, "cost": model.last_cost, "predictions": records})
        return 0
    for r in records:
        print(f"{r['image']} -> {r['mask']} (overlay {r['overlay']})")
        for name, share in sorted(r["classes"].items(), key=lambda kv: -kv[1]):
            print(f"  {100 * share:5.1f}%  {name}")
    return 0
