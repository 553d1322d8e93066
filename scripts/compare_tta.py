"""Image-space TTA vs the phase search vs both, at equal total budgets, on the zoo.

For each zoo model and total budget T (default 4, 8, 16; T states or views per image):

- TTA alone: the ``standard`` policy (flips x scales x crops; real corner crops resized back, in the
  order measured by scripts/order_tta_views.py, since real crops replaced them: results/archive/tta was measured before, with
  the old translation "crops" in the old order), aggregated by mean and max over its first T views,
  and by gps (T greedy steps), classtta and augtta (first T views) — the last three fitted on logits
  of the first ``--fit-images`` images of the validation part of the Fashion-MNIST train split (held
  out from zoo training; never the test set);
- ours alone: the phase search at budget T (entropy criterion), entropy and attention aggregation;
- both: ``flip`` (identity, horizontal flip), each view with its own phase search at T/2, mean of the
  two views' logits (entropy and attention aggregation inside).

Each is measured on the bundled test set (``--limit``; default all 10,000): clean top-1, top-1 on
shifted copies (1-4 px, seed 0, as ``undiscard demo``) and shift consistency, with the cost in
baseline forwards per image. One search per image and view at the largest budget serves all smaller
budgets (the search is incremental), so every number is what a run at that budget gives.

    python scripts/compare_tta.py --out results/tta_compare            # about 3-5 min per model on 2 cores

Run from the checkout with the package installed (``pip install -e .``). The searches and their costs
come from :func:`undiscard.evaluation.runner.search_predictions` (what ``undiscard demo`` and ``eval`` run);
this script keeps the logits to combine views and aggregators.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from undiscard import zoo
from undiscard.data import load_fashion_mnist, load_train_val, normalize, resize, shift_images, to_float
from undiscard.evaluation.report import format_table, stamp
from undiscard.evaluation.runner import search_logits, view_logits
from undiscard.metrics import topk_correct
from undiscard.models.loading import load_model
from undiscard.tta import make_aggregator, policy_views
from undiscard.wrapper import wrap

FITTED = ("gps", "classtta", "augtta")


def row(model: str, method: str, total: int, clean: torch.Tensor, shifted: torch.Tensor, y: torch.Tensor,
        cost: float) -> dict:
    # consistency is the float32 mean of the agreements, as results/archive/tta was computed (the library's
    # Tally counts them exactly: the same to about 1e-6 points)
    n = len(y)
    return {"model": model, "method": method, "total_budget": total, "top1": 100.0 * topk_correct(clean, y, 1) / n,
            "top1_shifted": 100.0 * topk_correct(shifted, y, 1) / n,
            "consistency": 100.0 * float((clean.argmax(-1) == shifted.argmax(-1)).float().mean()), "cost": cost, "n": n}


def run_model(name: str, totals: list[int], args: argparse.Namespace) -> list[dict]:
    loaded = load_model(f"zoo:{name}")
    size, chans = loaded.preprocess.input_size, loaded.preprocess.in_chans
    images, labels = load_fashion_mnist("test")
    n = min(args.limit, len(labels))
    padded = resize(to_float(images[:n]), size)
    x, xs = normalize(padded, chans), normalize(shift_images(padded, 4, 0)[0], chans)
    y = torch.as_tensor(labels[:n])
    (_, _), (xv, yv) = load_train_val()
    xf = normalize(resize(to_float(xv[:args.fit_images]), size), chans)
    yf = torch.as_tensor(yv[:args.fit_images])
    net = loaded.model
    policy = policy_views("standard")
    rows: list[dict] = []

    # --- TTA alone: fit on validation logits of every view, then run only the views that are needed
    fit_logits = view_logits(net, policy, xf, args.batch_size)
    aggs = {}
    for t in totals:
        for a in ("mean", "max") + FITTED:
            agg = make_aggregator(a, len(policy), budget=t, num_classes=fit_logits.shape[-1])
            if a in FITTED:
                with torch.enable_grad():
                    agg.fit(fit_logits, yf)
            aggs[(t, a)] = agg
    needed = sorted({v for agg in aggs.values() for v in agg.views()})
    test_views = {}
    for which, data in (("clean", x), ("shifted", xs)):
        logits = view_logits(net, [policy[v] for v in needed], data, args.batch_size)
        test_views[which] = {v: logits[:, i] for i, v in enumerate(needed)}
    for (t, a), agg in aggs.items():
        used = agg.views()
        with torch.no_grad():
            outs = [agg(torch.stack([test_views[w][v] for v in used], 1)) for w in ("clean", "shifted")]
        rows.append(row(f"zoo:{name}", f"TTA standard/{a}", t, *outs, y, float(len(used))))

    # --- ours alone, and flip x ours: one search per view at the largest budget
    aggregates = ["entropy", "attention"] if loaded.aggregator is not None else ["entropy"]
    model = wrap(net, budget=1, units=loaded.units, aggregate=aggregates[-1], aggregator=loaded.aggregator,
                 example_input=x[:1])
    states = model.num_states
    ours_b = [t for t in totals if t <= states]
    half = sorted({t // 2 for t in totals if t // 2 <= states and t >= 4})
    budgets = sorted(set(ours_b) | set(half) | {1})
    ident = {w: search_logits(model, d, budgets, aggregates, args.batch_size) for w, d in (("clean", x), ("shifted", xs))}
    flip = {w: search_logits(model, d.flip(-1), half, aggregates, args.batch_size)
            for w, d in (("clean", x), ("shifted", xs))}
    base = ident["clean"][0][(1, aggregates[0])], ident["shifted"][0][(1, aggregates[0])]
    rows.append(row(f"zoo:{name}", "baseline", 1, *base, y, 1.0))
    for t in totals:
        for a in aggregates:
            if t in ours_b:
                rows.append(row(f"zoo:{name}", f"ours ({a})", t, ident["clean"][0][(t, a)],
                                ident["shifted"][0][(t, a)], y, ident["clean"][1][t]))
            if t // 2 in half and t >= 4:
                b = t // 2
                outs = [(ident[w][0][(b, a)] + flip[w][0][(b, a)]) / 2 for w in ("clean", "shifted")]
                rows.append(row(f"zoo:{name}", f"flip/mean + ours ({a})", t, *outs, y,
                                ident["clean"][1][b] + flip["clean"][1][b]))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(zoo.list_models()))
    ap.add_argument("--totals", default="4,8,16")
    ap.add_argument("--limit", type=int, default=10000, help="test images (default: all 10,000)")
    ap.add_argument("--fit-images", type=int, default=2000, help="validation images to fit gps/classtta/augtta on")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="directory for results.json and table.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    totals = [int(t) for t in args.totals.split(",")]
    rows: list[dict] = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        t0 = time.perf_counter()
        rows += run_model(name, totals, args)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        if args.out is not None:  # keep partial results
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "results.json").write_text(json.dumps(stamp({"results": rows, "settings": vars(args)}),
                                                              indent=1, default=str) + "\n")
    cols = [("model", "model"), ("total_budget", "T"), ("method", "method"), ("top1", "top-1"),
            ("top1_shifted", "top-1 shifted"), ("consistency", "consistency"), ("cost", "cost x")]
    table = format_table(rows, cols, markdown=True)
    if args.out is not None:
        (args.out / "table.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
