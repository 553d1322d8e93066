"""Does a ranking loss make ``criterion="learned"`` a good search order? Train the zoo's attention
aggregator twice on the same held-out train-split images (4,000 train / 1,000 validation, never the
test set; the shipped recipe: 4 epochs, AdamW 3e-3, budget 16), once with weighting only
(``rank_weight=0``, as shipped) and once with the listwise ranking loss (``--rank-weight``), then run the
search on the first ``--limit`` test images at each budget with the learned criterion (each aggregator),
entropy and random, all aggregated by attention: clean top-1, top-1 on seeded 1-4 px shifts,
consistency and cost.

    python scripts/rank_criterion.py --models resnet_basic,swin --limit 2000 --budgets 4,8 --out results/rank/r.json

Run from the checkout with the package installed (``pip install -e .``).
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

from undiscard import wrap, zoo
from undiscard.data import load_fashion_mnist, load_train_val, normalize, resize, shift_images, to_float
from undiscard.evaluation.report import format_table, stamp
from undiscard.evaluation.runner import evaluate
from undiscard.fitting.aggregator import TrainConfig, train_aggregator


def _prepare(images, spec) -> torch.Tensor:
    return normalize(resize(to_float(images), spec["input_size"][-1]), spec["in_chans"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="comma-separated zoo names (default: all)")
    ap.add_argument("--limit", type=int, default=2000, help="first N test images (default: 2000)")
    ap.add_argument("--budgets", default="4,8")
    ap.add_argument("--rank-weight", type=float, default=1.0)
    ap.add_argument("--rank-temperature", type=float, default=0.25)
    ap.add_argument("--extend", default="background")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save-dir", default=None, help="also save the ranked aggregators here (NAME.pt)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    budgets = [1] + [int(b) for b in args.budgets.split(",")]
    images, labels = load_fashion_mnist("test")
    raw, y = to_float(images[:args.limit]), torch.as_tensor(labels[:args.limit])
    (_, _), (xv, yv) = load_train_val()
    yv = torch.as_tensor(yv)
    perm = torch.randperm(len(yv), generator=torch.Generator().manual_seed(0))
    tr, va = perm[1000:], perm[:1000]
    rows, logs = [], {}
    for name in (args.models.split(",") if args.models else zoo.list_models()):
        spec, units, net = zoo.model_config(name), zoo.search_units(name), zoo.create_model(name)
        xtrain = _prepare(xv, spec)
        padded = resize(raw, spec["input_size"][-1])
        shifted, _ = shift_images(padded, 4, 0)
        x, xs = normalize(padded, spec["in_chans"]), normalize(shifted, spec["in_chans"])
        aggregators = {}
        for label, weight in (("weighting", 0.0), ("ranked", args.rank_weight)):
            model = wrap(net, budget=1, aggregate="attention", units=units, extend=args.extend)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                model.prepare(xtrain[:1])
            t0 = time.perf_counter()
            result = train_aggregator(model, xtrain[tr], yv[tr], TrainConfig(
                budget=16, rank_weight=weight, rank_temperature=args.rank_temperature), val=(xtrain[va], yv[va]))
            logs[f"{name}/{label}"] = {"seconds": time.perf_counter() - t0, "history": result.history}
            print(f"{name} {label}: trained in {time.perf_counter() - t0:.0f} s, val {result.history[-1]['val']}",
                  flush=True)
            aggregators[label] = model.aggregator
            if args.save_dir and label == "ranked":
                from undiscard.tasks.attention import save_aggregator
                save_aggregator(f"{args.save_dir}/{name}.pt", model.aggregator, model=f"zoo:{name}", units=units,
                                align=True, meta={"rank_weight": weight, "extend": args.extend, **logs[f"{name}/{label}"]})
        runs = [("learned", "ranked"), ("learned", "weighting"), ("entropy", "ranked"), ("random", "ranked")]
        for criterion, agg_label in runs:
            model = wrap(net, budget=1, criterion=criterion, aggregate="attention", units=units,
                         aggregator=aggregators[agg_label], extend=args.extend)
            for r in evaluate(f"zoo:{name}", model, x, y, budgets, shifted=xs):
                rows.append({**r.as_dict(), "criterion": criterion, "aggregator": agg_label})
            print(format_table(rows[-len(budgets):], [("model", "model"), ("criterion", "criterion"),
                  ("aggregator", "aggregator"), ("budget", "B"), ("top1", "top-1"), ("top1_shifted", "shifted"),
                  ("consistency", "consistency"), ("cost", "cost")]), flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(stamp({"settings": vars(args), "rows": rows, "training": logs}), f, indent=1)


if __name__ == "__main__":
    main()
