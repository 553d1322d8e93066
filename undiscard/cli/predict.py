"""``undiscard predict``: top-5 classes of some images, with and without the phase search."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..data.folder import load_image, normalize_batch
from ..wrapper import wrap
from .common import CLIError, add_model_args, emit_json, load_cli_model, resolve_device


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="top-5 classes of images, baseline vs. undiscard")
    add_model_args(p)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--budget", type=int, default=8, help="states per image for undiscard (default: 8)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="accepted for symmetry; predict shows no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    if args.budget <= 0:
        raise CLIError(f"budget must be positive, got {args.budget}")
    device = resolve_device(args.device)
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise CLIError(f"image not found: {missing[0]}")
    loaded = load_cli_model(args)
    pre = loaded.preprocess
    try:
        x01 = torch.stack([load_image(Path(p), pre.in_chans, pre.input_size, pre.crop_pct, pre.pad_to)
                           for p in args.images])
    except (OSError, ValueError) as err:
        raise CLIError(f"cannot read image: {err}") from None
    x = normalize_batch(x01, pre.mean, pre.std).to(device)
    net = loaded.model.to(device)
    model = wrap(net, budget=args.budget)
    with torch.no_grad():
        base = net(x).softmax(-1)
        ours = model(x).softmax(-1)
    names = loaded.class_names

    def top5(p: torch.Tensor) -> list[dict]:
        v, i = p.topk(min(5, p.shape[-1]))
        return [{"class": int(c), "name": names[int(c)] if int(c) < len(names) else str(int(c)),
                 "prob": round(float(q), 4)} for q, c in zip(v, i)]

    out = [{"image": p, "baseline": top5(base[k]), "undiscard": top5(ours[k])} for k, p in enumerate(args.images)]
    if args.json:
        emit_json({"budget": args.budget, "cost": model.last_cost, "predictions": out})
        return 0
    for rec in out:
        print(rec["image"])
        for label, key in (("  baseline ", "baseline"), (f"  budget {args.budget}", "undiscard")):
            print(label + ": " + ", ".join(f"{t['name']} {100 * t['prob']:.1f}%" for t in rec[key]))
    return 0
