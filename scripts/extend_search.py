"""The phase search with each ``extend=`` mode on the zoo test set: clean top-1, top-1 on shifted copies
and shift consistency at each budget, with cost (the demo's measures; seeded shifts of 1-4 px).

    python scripts/extend_search.py --limit 2000 --budgets 1,2,4,8 --extend zero,replicate,background [--out FILE]

Run from the checkout with the package installed (``pip install -e .``).
"""
from __future__ import annotations

import argparse
import json

import torch

from undiscard import wrap, zoo
from undiscard.data import load_fashion_mnist, normalize, resize, shift_images, to_float
from undiscard.evaluation.report import format_table, stamp
from undiscard.evaluation.runner import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=2000, help="first N test images (default: 2000)")
    ap.add_argument("--budgets", default="1,2,4,8")
    ap.add_argument("--extend", default="zero,replicate,background")
    ap.add_argument("--models", default=None, help="comma-separated zoo names (default: all)")
    ap.add_argument("--max-shift", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    budgets = [int(b) for b in args.budgets.split(",")]
    images, labels = load_fashion_mnist("test")
    raw, y = to_float(images[:args.limit]), torch.as_tensor(labels[:args.limit])
    rows = []
    for name in (args.models.split(",") if args.models else zoo.list_models()):
        spec = zoo.model_config(name)
        padded = resize(raw, spec["input_size"][-1])
        shifted, _ = shift_images(padded, args.max_shift, args.seed)
        x, xs = normalize(padded, spec["in_chans"]), normalize(shifted, spec["in_chans"])
        net = zoo.create_model(name)
        for mode in args.extend.split(","):
            model = wrap(net, budget=1, units=zoo.search_units(name), extend=mode)
            for r in evaluate(f"zoo:{name}", model, x, y, budgets, shifted=xs):
                rows.append({**r.as_dict(), "extend": mode})
    cols = [("model", "model"), ("extend", "extend"), ("budget", "B"), ("top1", "top-1"),
            ("top1_shifted", "top-1 shifted"), ("consistency", "consistency"), ("cost", "cost")]
    print(format_table(rows, cols))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(stamp({"settings": vars(args), "rows": rows}), f, indent=1)


if __name__ == "__main__":
    main()
