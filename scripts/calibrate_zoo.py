"""Calibrated state orders for every zoo model (``criterion="calibrated"``), written to undiscard/zoo/orders/.

Each model's states are ranked by ``undiscard calibrate`` on a seeded subset of the held-out validation part
of the Fashion-MNIST training split (never the test set), for the default aggregation (entropy, aligned):

    python scripts/calibrate_zoo.py [--limit 2000] [--seed 0] [--data /usr/share/datasets/fashion-mnist]
    python scripts/calibrate_zoo.py --models seg_fpn --seg-limit 500 --greedy 8   # a segmentation zoo model

Segmentation zoo models (``seg_*``) are ranked by mIoU (``--task segmentation``) on the first ``--seg-limit``
canvases of the validation split (the 500 canvases their training validated on: objects from the 5,000
held-out train images), written to a temporary segmentation folder first.
"""
from __future__ import annotations

import argparse
import sys
import tempfile

from undiscard import zoo
from undiscard.cli import main
from undiscard.data import segmentation as segdata
from undiscard.data.seg_folder import write_seg_folder
from undiscard.search.orders import load_order, save_order, zoo_order_path


def run(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default=",".join(zoo.list_models()),
                    help="comma-separated zoo names (default: the classifiers; seg_* names are segmenters)")
    ap.add_argument("--seg-limit", type=int, default=500, help="validation canvases for a segmenter (default 500)")
    ap.add_argument("--greedy", type=int, default=None, help="greedy steps (default: undiscard calibrate's)")
    ap.add_argument("--units", default=None, help="comma-separated unit names to rank the states of (default: "
                                                  "each model's; one model per run)")
    args = ap.parse_args(argv)
    greedy = [] if args.greedy is None else ["--greedy", str(args.greedy)]
    if args.units is not None:
        if "," in args.models:
            ap.error("--units names one model's units: give one --models name")
        greedy += ["--units", args.units]
    for name in args.models.split(","):
        common = ["--model", f"zoo:{name}", "--seed", str(args.seed), "--threads", str(args.threads),
                  "--out", str(zoo_order_path(name)), "--quiet", *greedy]
        if name.startswith("seg_"):
            with tempfile.TemporaryDirectory() as tmp:
                images, masks = segdata.canvas_generator("val", seed=args.seed, root=args.data).batch(
                    range(args.seg_limit))
                write_seg_folder(tmp, images, masks)
                rc = main(["calibrate", "--task", "segmentation", "--data", tmp, *common])
            if not rc:  # say which canvases, not the temporary folder's name
                order = load_order(zoo_order_path(name))
                order.meta["data"] = (f"segmentation val split: canvases 0..{args.seg_limit - 1} of "
                                      f"canvas_generator('val', seed={args.seed}) (held-out Fashion-MNIST train images)")
                save_order(order, zoo_order_path(name))
        else:
            rc = main(["calibrate", "--data", args.data, "--limit", str(args.limit), *common])
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(run())
