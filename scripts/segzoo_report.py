"""The README table of the segmentation zoo, from the committed logs, plus an object-level diagnostic.

    python scripts/segzoo_report.py [--objects 300]

For each trained model: family, parameters, epochs, test mIoU / pixel accuracy / boundary F1 (from its
log, 2,000 bundled test canvases), training time (wall and process CPU, with the mean 1-minute load
average during training). ``--objects N`` also evaluates the first N test canvases and reports the
*object accuracy*: each object's visible pixels (its mask minus what later objects cover, >= 20 px)
vote with the predicted foreground labels, and the vote is compared with the object's class. It tells
classification errors (the whole object labelled as another garment) from boundary errors.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from undiscard.data import segmentation as segdata
from undiscard.zoo import segmentation as segzoo


@torch.no_grad()
def object_accuracy(model: torch.nn.Module, n: int, min_pixels: int = 20) -> tuple[float, int]:
    """(share of objects whose visible pixels' majority foreground prediction is their class, objects)."""
    images, _ = segdata.load_seg_test()
    gen = segdata.canvas_generator("test", seed=segdata.seg_test_info()["seed"])
    pred = torch.cat([model(segdata.to_input(images[i:min(i + 50, n)])).argmax(1) for i in range(0, n, 50)]).numpy()
    ok = total = 0
    for i in range(n):
        lay = gen.layout(i)
        solo = [gen.render(row[None])[1] > 0 for row in lay]
        for j, row in enumerate(lay):
            visible = solo[j] & ~np.any(solo[j + 1:], axis=0) if j + 1 < len(lay) else solo[j]
            if visible.sum() < min_pixels:
                continue
            fg = pred[i][visible]
            fg = fg[fg > 0]
            vote = np.bincount(fg, minlength=segdata.NUM_CLASSES).argmax() if len(fg) else 0
            ok += int(vote == row[1])
            total += 1
    return ok / max(total, 1), total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=0, help="test canvases for the object accuracy (0: skip)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    head = "| model | family | params | epochs | test mIoU | pixel acc | boundary F1 | training: CPU time (1 thread) | wall (mean load) |"
    if args.objects:
        head = head[:-1] + f"| object acc ({args.objects} canvases) |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name in segzoo.list_models():
        log = segzoo.training_log(name)
        if log is None:
            continue
        row = (f"| `zoo:{name}` | {log['family']} | {log['params'] / 1e6:.2f} M | {log['recipe']['epochs']} "
               f"| {100 * log['test_miou']:.2f} | {100 * log['test_pixel_acc']:.2f} | {100 * log['test_boundary_f1']:.2f} "
               f"| {log['cpu_seconds'] / 60:.1f} min | {log['wall_seconds'] / 60:.1f} min ({log['load_avg_1min_mean_epochs']:.1f}) |")
        if args.objects:
            acc, n = object_accuracy(segzoo.create_model(name), args.objects)
            row += f" {100 * acc:.1f} ({n} objects) |"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
