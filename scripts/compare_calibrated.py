"""Calibrated vs entropy vs learned vs random vs offset search on the zoo, at budgets 1, 2, 4, with cost.

First ``--limit`` test images (bundled Fashion-MNIST test set), clean top-1, top-1 on copies shifted by
1-4 px (seed 0) and consistency (same top-1 for the image and its shifted copy), entropy aggregation,
each model's default units (``learned``: most attention first, from the model's shipped aggregator); the calibrated order of model NAME is ``--orders``/NAME.json (default: the
shipped ones, scripts/calibrate_zoo.py), or ``--orders DIR --suffix _val1000`` for DIR/NAME_val1000.json:

    python scripts/compare_calibrated.py [--limit 2000] [--models resnet_basic,swin] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from undiscard import zoo
from undiscard.data import load_fashion_mnist, normalize, resize, shift_images, to_float
from undiscard.evaluation.report import stamp
from undiscard.evaluation.runner import evaluate
from undiscard.models.loading import load_model
from undiscard.search.orders import zoo_order_path

CRITERIA = ("entropy", "learned", "random", "offset", "calibrated")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--models", default=",".join(zoo.list_models()))
    ap.add_argument("--budgets", default="1,2,4")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--orders", default=None, help="directory of order files (default: undiscard/zoo/orders)")
    ap.add_argument("--prefix", default="", help="order file name prefix, e.g. order_")
    ap.add_argument("--suffix", default="", help="order file name suffix, e.g. _val1000")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    budgets = [int(b) for b in args.budgets.split(",")]
    images, labels = load_fashion_mnist("test")
    rows = []
    print("| model | criterion | B | top-1 | top-1 shifted | consistency | cost x |\n|---|---|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        loaded = load_model(f"zoo:{name}")
        size, chans = loaded.preprocess.input_size, loaded.preprocess.in_chans
        padded = resize(to_float(images[:args.limit]), size)
        x, xs = normalize(padded, chans), normalize(shift_images(padded, 4, 0)[0], chans)
        y = torch.as_tensor(labels[:args.limit])
        for crit in CRITERIA:
            path = (zoo_order_path(name) if args.orders is None
                    else Path(args.orders) / f"{args.prefix}{name}{args.suffix}.json")
            kw = {"order": path} if crit == "calibrated" else {"aggregator": loaded.aggregator} if crit == "learned" else {}
            for r in evaluate(name, loaded.model, x, y, budgets, shifted=xs, criterion=crit, units=loaded.units, **kw):
                d = r if isinstance(r, dict) else r.__dict__
                rows.append({"model": name, "criterion": crit, **{k: d.get(k) for k in
                             ("budget", "top1", "top1_shifted", "consistency", "cost")}})
                q = rows[-1]
                print(f"| {name} | {crit} | {q['budget']} | {q['top1']:.2f} | {q['top1_shifted']:.2f} | "
                      f"{q['consistency']:.2f} | {q['cost']:.2f} |", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(stamp({"settings": vars(args), "rows": rows}), f, indent=1, default=str)
    print("\nzoo average (models: " + ", ".join(sorted({r["model"] for r in rows})) + ")\n"
          "| criterion | B | top-1 | top-1 shifted | consistency | cost x |\n|---|---:|---:|---:|---:|---:|")
    for crit in CRITERIA:
        for b in budgets:
            rs = [r for r in rows if r["criterion"] == crit and r["budget"] == b]
            mean = {k: sum(r[k] for r in rs) / len(rs) for k in ("top1", "top1_shifted", "consistency", "cost")}
            print(f"| {crit} | {b} | {mean['top1']:.2f} | {mean['top1_shifted']:.2f} | {mean['consistency']:.2f} | "
                  f"{mean['cost']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
