"""Which units should a segmenter search by default? Measured on validation canvases (never the test split).

For every segmentation zoo model, at budget B (default 4) with the default label-free criterion
(``entropy``), compares the searched units ``default`` (all but the first and the last unit) with
``first`` (the same plus the first unit) and ``first only``: mIoU on clean canvases, mIoU on the same
canvases shifted by 1-4 px (zero fill: the background is 0, so a shifted canvas is again exactly labelled),
pixel shift consistency, and the measured cost in plain forwards. Writes JSON + markdown.

    python scripts/seg_units.py --limit 300 --out results/segmentation/units
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import undiscard
from undiscard.data.segmentation import NUM_CLASSES, canvas_generator, to_input
from undiscard.data.shift import random_offsets, shift_images
from undiscard.evaluation.report import stamp
from undiscard.metrics.segmentation import confusion_matrix, mean_iou, shift_consistency_counts

MODELS = ("seg_deeplabv3plus", "seg_fpn", "seg_segformer")


def measure(net: torch.nn.Module, units: object, budget: int, x: torch.Tensor, y: torch.Tensor, xs: torch.Tensor,
            ys: torch.Tensor, offsets: torch.Tensor, batch: int) -> dict:
    model = undiscard.wrap(net, budget=budget, task="segmentation", units=units)
    cm = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    cms = torch.zeros_like(cm)
    same = total = 0
    cost = 0.0
    names = None
    with torch.no_grad():
        for lo in range(0, x.shape[0], batch):
            sl = slice(lo, lo + batch)
            p, ps = model(x[sl]).argmax(1), None
            cost += model.last_cost * p.shape[0]
            ps = model(xs[sl]).argmax(1)
            cm += confusion_matrix(p, y[sl], NUM_CLASSES)
            cms += confusion_matrix(ps, ys[sl], NUM_CLASSES)
            s, t = shift_consistency_counts(p, ps, offsets[sl])
            same, total = same + int(s), total + int(t)
            names = [u.name for u in model.search_units] if budget > 1 else names
    return {"units": names, "miou": 100 * mean_iou(cm), "miou_shifted": 100 * mean_iou(cms),
            "pixel_consistency": 100 * same / max(total, 1), "cost": cost / x.shape[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=300, help="validation canvases")
    ap.add_argument("--budget", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", type=Path, default=Path("results/segmentation/units"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    images, labels = canvas_generator("val").batch(range(args.limit))
    y = torch.as_tensor(labels).long()
    offsets = random_offsets(args.limit, 4, seed=0)
    xs_u8, _ = shift_images(torch.as_tensor(images)[:, None], 4, 0, offsets=offsets)
    ys, _ = shift_images(y[:, None].to(torch.uint8), 4, 0, offsets=offsets)
    xs_u8, ys = xs_u8[:, 0], ys[:, 0].long()
    rows = []
    for name in args.models.split(","):
        loaded = undiscard.load_model(f"zoo:{name}")
        net = loaded.model.eval()
        x, xs = to_input(images), to_input(xs_u8)
        n_units = len(undiscard.find_units(net, x[:1]))
        variants = {"plain": (1, None), "default": (args.budget, None),
                    "first + default": (args.budget, list(range(0, n_units - 1))), "first only": (args.budget, [0])}
        for label, (b, units) in variants.items():
            row = {"model": name, "variant": label, "budget": b,
                   **measure(net, units, b, x, y, xs, ys, offsets, args.batch_size)}
            rows.append(row)
            print(f"{name:18s} {label:16s} B={b} mIoU {row['miou']:.2f} shifted {row['miou_shifted']:.2f} "
                  f"consistency {row['pixel_consistency']:.2f} cost {row['cost']:.2f} {row['units']}", flush=True)
    report = {"command": "python scripts/seg_units.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()), "canvases": args.limit, "split": "val",
        "seconds": time.time() - t0, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(stamp(report), indent=1) + "\n")
    lines = ["| model | units | B | mIoU | mIoU shifted | pixel consistency | cost |", "|---|---|--:|--:|--:|--:|--:|"]
    lines += [f"| {r['model']} | {r['variant']} ({', '.join(r['units'] or []) or '-'}) | {r['budget']} | {r['miou']:.2f} | "
              f"{r['miou_shifted']:.2f} | {r['pixel_consistency']:.2f} | {r['cost']:.2f} |" for r in rows]
    args.out.with_suffix(".md").write_text(f"Command: `{report['command']}`\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
