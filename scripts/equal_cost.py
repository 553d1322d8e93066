"""Which method is best at a given cost? TTA alone, the phase search alone and both, on the zoo.

Per zoo model, on the first ``--limit`` test images (clean, and translated by seeded 1-4 px offsets,
zero fill, as ``undiscard demo``), every method's clean top-1, shifted top-1, shift consistency and
cost in plain forwards per image (every view and every state counted):

- TTA alone: ``flip`` (2 views), the first T views (T = 4, 8) of the ``standard`` policy and of the old
  standard policy written as translations (``translation-standard``), with mean aggregation, and gps/augtta fitted on ``--fit-images`` validation images of the train split (never
  the test set);
- ours alone: the phase search at B = 2, 4, 8 for each ``--criteria`` (``offset`` is static: children
  are computed only when taken, so B=2 costs about 2; ``calibrated`` uses the shipped order of
  undiscard/zoo/orders and stops where it says), aggregated by entropy and attention, with
  ``--extend`` (default: replicate);
- both: ``flip`` x ours, each view with its own search at B = 2, 4, logits averaged.

Then, at each total cost cap (2, 4, 8), the best method of each family with cost <= cap, per measure,
averaged over the models (a method enters only where it fits the cap on every model).

    python scripts/equal_cost.py --limit 2000 --out results/equal_cost/zoo_2000.json

Run from the checkout with the package installed (``pip install -e .``).
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from collections import defaultdict

import torch

from undiscard import zoo
from undiscard.data import load_fashion_mnist, load_train_val, normalize, resize, shift_images, to_float
from undiscard.evaluation.report import format_table, stamp
from undiscard.evaluation.runner import search_logits, view_logits
from undiscard.evaluation.summary import best_per_cost
from undiscard.metrics import topk_correct
from undiscard.models.loading import load_model
from undiscard.tta import make_aggregator, policy_views
from undiscard.tta.views import translation_policy
from undiscard.wrapper import wrap

CAPS = (2, 4, 8)
MEASURES = ("top1", "top1_shifted", "consistency")


def _row(model: str, family: str, method: str, clean, shifted, y, cost: float) -> dict:
    n = len(y)
    same = int((clean.argmax(-1) == shifted.argmax(-1)).sum())
    return {"model": model, "family": family, "method": method, "cost": round(cost, 4), "n": n,
            "top1": 100.0 * topk_correct(clean, y, 1) / n, "top1_shifted": 100.0 * topk_correct(shifted, y, 1) / n,
            "consistency": 100.0 * same / n}


def run_model(name: str, args) -> list[dict]:
    loaded = load_model(f"zoo:{name}")
    size, chans = loaded.preprocess.input_size, loaded.preprocess.in_chans
    images, labels = load_fashion_mnist("test")
    padded = resize(to_float(images[:args.limit]), size)
    data = {"clean": normalize(padded, chans), "shifted": normalize(shift_images(padded, 4, 0)[0], chans)}
    y = torch.as_tensor(labels[:args.limit])
    net, m = loaded.model, f"zoo:{name}"
    rows = []
    # TTA alone: the standard policy (real crops) and, as a TTA for translation-trained models, the old
    # standard policy with its corner "crops" written as the translations they were
    flip_logits = {w: view_logits(net, policy_views("flip"), d, args.batch_size) for w, d in data.items()}
    rows.append(_row(m, "plain", "plain", flip_logits["clean"][:, 0], flip_logits["shifted"][:, 0], y, 1.0))
    rows.append(_row(m, "TTA", "flip/mean", *(flip_logits[w].mean(1) for w in data), y, 2.0))
    (_, _), (xv, yv) = load_train_val()
    xf = normalize(resize(to_float(xv[:args.fit_images]), size), chans)
    for tag, views in (("", policy_views("standard")[:8]), ("translation-", translation_policy(size)[:8])):
        logits = {w: view_logits(net, views, d, args.batch_size) for w, d in data.items()}
        fit = view_logits(net, views, xf, args.batch_size)
        for t in (4, 8):
            rows.append(_row(m, "TTA", f"{tag}standard{t}/mean", *(logits[w][:, :t].mean(1) for w in data), y,
                             float(t)))
            for a in ("gps", "augtta"):
                agg = make_aggregator(a, t, budget=t, num_classes=fit.shape[-1])
                with torch.enable_grad():
                    agg.fit(fit[:, :t], torch.as_tensor(yv[:args.fit_images]))
                used = agg.views()
                with torch.no_grad():
                    outs = [agg(logits[w][:, :t][:, used]) for w in data]
                rows.append(_row(m, "TTA", f"{tag}standard{t}/{a}", *outs, y, float(len(used))))
    # ours alone and flip x ours
    aggregates = ["entropy", "attention"] if loaded.aggregator is not None else ["entropy"]
    criteria = [c for c in args.criteria.split(",") if c]  # "": TTA rows only
    for criterion in criteria:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = wrap(net, budget=1, criterion=criterion, units=loaded.units, aggregate=aggregates[-1],
                         aggregator=loaded.aggregator, extend=args.extend, example_input=data["clean"][:1],
                         order=loaded.order if criterion == "calibrated" else None)
        ident = {w: search_logits(model, d, [1, 2, 4, 8], aggregates, args.batch_size) for w, d in data.items()}
        flipped = {w: search_logits(model, d.flip(-1), [1, 2, 4], aggregates, args.batch_size) for w, d in data.items()}
        for a in aggregates:
            for b in (2, 4, 8):
                rows.append(_row(m, "ours", f"{criterion} B{b}/{a}", ident["clean"][0][(b, a)],
                                 ident["shifted"][0][(b, a)], y, ident["clean"][1][b]))
            for b in (1, 2, 4):
                outs = [(ident[w][0][(b, a)] + flipped[w][0][(b, a)]) / 2 for w in data]
                cost = ident["clean"][1][b] + flipped["clean"][1][b]
                family = "TTA" if b == 1 else "both"
                if b > 1 or (a == aggregates[0] and criterion == criteria[0]):
                    rows.append(_row(m, family, f"flip x {criterion} B{b}/{a}" if b > 1 else "flip/mean (as views)",
                                     *outs, y, cost))
    return rows


FAMILY = {"plain": "plain", "TTA": "TTA alone", "ours": "ours alone", "both": "both"}


def summary(rows: list[dict], caps=CAPS) -> list[dict]:
    """Per cap and family, the best zoo average of each measure with the method that gives it: each
    method's measures and cost averaged over the models (only methods every model has), then
    :func:`undiscard.evaluation.summary.best_per_cost`, the rule of ``undiscard demo`` and the README."""
    by_method = defaultdict(list)
    for r in rows:
        by_method[(r["family"], r["method"])].append(r)
    models = {r["model"] for r in rows}
    points = [{"family": FAMILY[fam], "method": method, "cost": sum(r["cost"] for r in rs) / len(rs),
               **{m: sum(r[m] for r in rs) / len(rs) for m in MEASURES}}
              for (fam, method), rs in by_method.items() if {r["model"] for r in rs} == models]
    out = []
    for cap in caps:
        for fam, family in FAMILY.items():
            entry = {"cap": cap, "family": fam}
            for measure in MEASURES:
                best = best_per_cost(points, measure, cap)[1][family]
                entry[measure] = None if best is None else f"{best[measure]:.2f} ({best['method']}, {best['cost']:.2f}x)"
            out.append(entry)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="comma-separated zoo names (default: all)")
    ap.add_argument("--limit", type=int, default=2000, help="first N test images (default: 2000)")
    ap.add_argument("--criteria", default="offset,entropy")
    ap.add_argument("--extend", default="replicate")
    ap.add_argument("--fit-images", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--resummarise", metavar="JSON", help="recompute the summary of a results JSON's rows (no run)")
    args = ap.parse_args()
    if args.resummarise:
        with open(args.resummarise) as f:
            rows = json.load(f)["rows"]
        print(format_table(summary(rows), [("cap", "cost <="), ("family", "family")] + [(k, k) for k in MEASURES]))
        return
    torch.set_num_threads(args.threads)
    rows = []
    for name in (args.models.split(",") if args.models else zoo.list_models()):
        t0 = time.perf_counter()
        rows += run_model(name, args)
        print(f"zoo:{name}: {time.perf_counter() - t0:.0f} s", flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(stamp({"settings": vars(args), "rows": rows, "summary": summary(rows)}), f, indent=1)
    cols = [("model", "model"), ("family", "family"), ("method", "method"), ("cost", "cost"), ("top1", "top-1"),
            ("top1_shifted", "shifted"), ("consistency", "consistency")]
    print(format_table(rows, cols))
    print(format_table(summary(rows), [("cap", "cost <="), ("family", "family")] + [(k, k) for k in MEASURES]))


if __name__ == "__main__":
    main()
