"""Calibrated state orders for every zoo model (``criterion="calibrated"``), written to undiscard/zoo/orders/.

Each model's states are ranked by ``undiscard calibrate`` on a seeded subset of the held-out validation part
of the Fashion-MNIST training split (never the test set), for the default aggregation (entropy, aligned):

    python scripts/calibrate_zoo.py [--limit 2000] [--seed 0] [--data /usr/share/datasets/fashion-mnist]
"""
from __future__ import annotations

import argparse
import sys

from undiscard import zoo
from undiscard.calibration import zoo_order_path
from undiscard.cli import main


def run(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default=",".join(zoo.list_models()))
    args = ap.parse_args(argv)
    for name in args.models.split(","):
        rc = main(["calibrate", "--model", f"zoo:{name}", "--data", args.data, "--limit", str(args.limit),
                   "--seed", str(args.seed), "--threads", str(args.threads), "--out", str(zoo_order_path(name)),
                   "--quiet"])
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(run())
