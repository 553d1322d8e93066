"""Which units should a zoo model search? Measure every contiguous selection of its spatial units.

For one zoo model, on validation images held out from the Fashion-MNIST *train* set (never the test
set), reports clean top-1, shifted top-1 and shift consistency at the given budgets for each selection,
so the default searched units (``ZooSpec.search_units``) are chosen by measurement.

    python scripts/unit_sweep.py --model resnet_basic --limit 1000 --budgets 1,4,16 [--extend background] [--criterion offset]

Run from the checkout with the package installed (``pip install -e .``).
"""
from __future__ import annotations

import argparse
import itertools

import torch

from undiscard.data import load_train_val, normalize, resize, shift_images, to_float
from undiscard.evaluation.report import format_table
from undiscard.evaluation.runner import evaluate
from undiscard.models.loading import load_model
from undiscard.wrapper import wrap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--budgets", default="1,4,16")
    ap.add_argument("--max-shift", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--extend", default=None, help="extend= mode for every selection (default: the library's)")
    ap.add_argument("--criterion", default="entropy")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    budgets = [int(b) for b in args.budgets.split(",")]
    (_, _), (xv, yv) = load_train_val()
    loaded = load_model(f"zoo:{args.model.removeprefix('zoo:')}")
    size, chans = loaded.preprocess.input_size, loaded.preprocess.in_chans
    raw = resize(to_float(xv[:args.limit]), size)
    shifted, _ = shift_images(raw, args.max_shift, seed=1)
    x, xs, y = normalize(raw, chans), normalize(shifted, chans), torch.as_tensor(yv[:args.limit])
    net = loaded.model
    probe = wrap(net, budget=1, example_input=x[:1])
    spatial = [i for i, u in enumerate(probe.units) if u.spatial]
    rows = []
    for lo, hi in itertools.combinations(range(len(spatial) + 1), 2):
        sel = spatial[lo:hi]
        kw = {} if args.extend is None else {"extend": args.extend}
        model = wrap(net, budget=1, units=sel, criterion=args.criterion, example_input=x[:1], **kw)
        bs = [b for b in budgets if b <= model.num_states]
        for r in evaluate(args.model, model, x, y, bs, shifted=xs, batch_size=250):
            d = r.as_dict()
            d["units"] = "+".join(probe.units[i].name for i in sel)
            rows.append(d)
            print(d["units"], d["budget"], f"{d['top1']:.2f} {d['top1_shifted']:.2f} {d['consistency']:.2f}",
                  flush=True)
    print(format_table(rows, [("units", "units"), ("budget", "B"), ("top1", "top-1"),
                              ("top1_shifted", "top-1 shifted"), ("consistency", "consistency"), ("cost", "cost x")]))


if __name__ == "__main__":
    main()
