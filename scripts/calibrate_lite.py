"""Label-free state orders for EfficientNet-Lite0/1/2, written to undiscard/zoo/orders/efficientnet-liteK.json.

No labelled ImageNet images exist here, so each model's states (its default searched units) are ranked by
``undiscard calibrate --objective OBJECTIVE`` on pairs of views of the bundled *calibration* photos
(``undiscard/data/photos/calibration``, never the evaluation photos): per photo, ``--pairs`` crops and the
same scenes displaced by 1-16 px of real content. ``load_model("efficientnet-liteK").order`` then names the
file, as zoo models' orders do.

    python scripts/calibrate_lite.py [--objective agreement] [--pairs 4] [--units 1,2] [--models efficientnet-lite0,...]
    python scripts/calibrate_lite.py --objective consistency --out-dir /tmp/orders   # compare objectives
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from undiscard.cli import main
from undiscard.data.photos import PHOTO_DIR
from undiscard.models.loading import LITE_MODELS
from undiscard.search.orders import ORDERS_DIR, load_order, save_order


def run(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(LITE_MODELS))
    ap.add_argument("--objective", default="agreement", help="label-free objective (default: agreement)")
    ap.add_argument("--pairs", type=int, default=4, help="pairs of views per calibration photo (default 4)")
    ap.add_argument("--greedy", type=int, default=8, help="greedy steps (default 8)")
    ap.add_argument("--units", default="1,2", help="units to rank the states of, as indices or names (default 1,2: "
                                                   "the second and third strided layers, 16 states)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-dir", type=Path, default=ORDERS_DIR)
    args = ap.parse_args(argv)
    data = PHOTO_DIR / "calibration"
    for name in args.models.split(","):
        rc = main(["calibrate", "--model", name, "--objective", args.objective, "--data", str(data),
                   "--pairs-per-image", str(args.pairs), "--units", args.units, "--greedy", str(args.greedy), "--seed", str(args.seed),
                   "--threads", str(args.threads), "--out", str(args.out_dir / f"{name}.json"), "--quiet"])
        if rc:
            return rc
        out = args.out_dir / f"{name}.json"
        order = load_order(out)  # say which photos, not this checkout's path
        order.meta["data"] = order.meta["data"].replace(str(data), "undiscard/data/photos/calibration")
        order.meta["command"] = "python scripts/calibrate_lite.py " + " ".join(argv if argv is not None else sys.argv[1:])
        save_order(order, out)
    return 0


if __name__ == "__main__":
    sys.exit(run())
