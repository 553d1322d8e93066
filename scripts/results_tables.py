"""Markdown tables for the README from ``undiscard demo --json`` results files.

    python scripts/results_tables.py zoo results/archive/demo_full/results.json
        model x budget: clean top-1, shifted top-1, consistency, cost (entropy aggregation, aligned)
    python scripts/results_tables.py aggregators results/*/results.json
        per model and budget: every (criterion, aggregate, align) found across the files
    python scripts/results_tables.py summary results/*/results.json
        the same averaged over the models
    python scripts/results_tables.py attention-vs-entropy results/archive/demo_full/results.json
        per model and budget: attention minus entropy aggregation (entropy criterion, aligned), points
    python scripts/results_tables.py tta results/archive/tta/results.json
        per model and total budget: the best TTA alone, ours alone and TTA + ours (by shifted top-1)
    python scripts/results_tables.py tta-summary results/archive/tta/results.json
        per total budget and method: clean / shifted / consistency / cost averaged over the models
    python scripts/results_tables.py tta-delta results/archive/tta/results.json
        per model and total budget: the best "TTA + ours" row minus the best "TTA alone" row, per measure

Run from the checkout with the package installed (``pip install -e .``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from undiscard.evaluation.report import format_table


def load(paths: list[str]) -> list[dict]:
    rows: list[dict] = []
    for p in paths:
        rows += json.loads(Path(p).read_text())["results"]
    return rows


def zoo_table(rows: list[dict], aggregate: str = "entropy") -> str:
    """Rows of one aggregation with alignment on (and the label-free EfficientNet-Lite0 rows)."""
    ours = [r for r in rows if not r.get("tta")]
    keep = [r for r in ours if (r.get("aggregate"), r.get("align")) == (aggregate, True) or r.get("top1") is None]
    cols = [("model", "model"), ("budget", "B"), ("top1", "top-1"), ("top1_shifted", "top-1 shifted"),
            ("consistency", "consistency"), ("cost", "cost x")]
    return format_table(keep, cols, markdown=True)


def aggregator_table(rows: list[dict]) -> str:
    rows = [r for r in rows if not r.get("tta") and r.get("top1") is not None]
    seen: set = set()
    unique = []
    for r in sorted(rows, key=lambda r: (r["model"], r["budget"], r["criterion"], r["aggregate"], not r["align"])):
        key = (r["model"], r["budget"], r["criterion"], r["aggregate"], r["align"])
        if key in seen or (r["budget"] == 1 and r["criterion"] != "entropy"):
            continue
        if r["budget"] == 1 and (r["aggregate"], r["align"]) != ("entropy", True):
            continue  # budget 1 is the model itself whatever the aggregation
        seen.add(key)
        unique.append({**r, "align": "on" if r["align"] else "off"})
    cols = [("model", "model"), ("budget", "B"), ("criterion", "criterion"), ("aggregate", "aggregate"),
            ("align", "align"), ("top1", "top-1"), ("top1_shifted", "top-1 shifted"), ("consistency", "consistency"),
            ("cost", "cost x")]
    return format_table(unique, cols, markdown=True)


def summary_table(rows: list[dict]) -> str:
    """Per (criterion, aggregate, align, budget): clean / shifted / consistency averaged over the models."""
    rows = [r for r in rows if not r.get("tta") and r.get("top1") is not None and r["budget"] > 1]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["criterion"], r["aggregate"], r["align"], r["budget"]), []).append(r)
    seen_models = {r["model"] for r in rows}
    out = []
    for (crit, agg, align, b), rs in sorted(groups.items(), key=lambda kv: (kv[0][3], kv[0][0], kv[0][1],
                                                                               not kv[0][2])):
        by_model = {r["model"]: r for r in rs}  # one row per model (files may repeat a setting)
        if set(by_model) != seen_models:
            continue
        vals = list(by_model.values())
        out.append({"budget": b, "criterion": crit, "aggregate": agg, "align": "on" if align else "off",
                    **{k: sum(v[k] for v in vals) / len(vals) for k in ("top1", "top1_shifted", "consistency",
                                                                         "cost")}})
    cols = [("budget", "B"), ("criterion", "criterion"), ("aggregate", "aggregate"), ("align", "align"),
            ("top1", "top-1"), ("top1_shifted", "top-1 shifted"), ("consistency", "consistency"), ("cost", "cost x")]
    return format_table(out, cols, markdown=True)


def versus_table(rows: list[dict], a: tuple[str, str, bool], b: tuple[str, str, bool]) -> str:
    """Per model and budget: setting ``a`` minus setting ``b`` (criterion, aggregate, align), in points."""
    index = {(r["model"], r["budget"], r["criterion"], r["aggregate"], r["align"]): r for r in rows
             if not r.get("tta") and r.get("top1") is not None}
    out = []
    for (model, budget, *setting), r in sorted(index.items()):
        if tuple(setting) != a or budget == 1:
            continue
        other = index.get((model, budget, *b))
        if other is None:
            continue
        out.append({"model": model, "budget": budget,
                    **{k: r[k] - other[k] for k in ("top1", "top1_shifted", "consistency")}})
    cols = [("model", "model"), ("budget", "B"), ("top1", "Δ top-1"), ("top1_shifted", "Δ top-1 shifted"),
            ("consistency", "Δ consistency")]
    return format_table(out, cols, markdown=True)


METRICS = ("top1", "top1_shifted", "consistency")


def family(method: str) -> str | None:
    """The family of a scripts/compare_tta.py method: TTA alone, ours alone or TTA + ours."""
    if method.startswith("TTA"):
        return "TTA alone"
    if method.startswith("ours"):
        return "ours alone"
    if method.startswith("flip"):
        return "TTA + ours"
    return None


def tta_table(rows: list[dict], metric: str = "top1_shifted") -> str:
    """From scripts/compare_tta.py results: per model and total budget T, the best of each family of
    methods by ``metric`` (TTA alone over its five aggregators, ours alone, flip + ours), with its cost."""
    best: dict[tuple, dict] = {}
    for r in rows:
        f = family(r["method"])
        if f is None:
            continue
        key = (r["model"], r["total_budget"], f)
        if key not in best or r[metric] > best[key][metric]:
            best[key] = r
    out = []
    for (model, t, f), r in sorted(best.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        out.append({"model": model, "T": t, "family": f, "method": r["method"], "top1": r["top1"],
                    "top1_shifted": r["top1_shifted"], "consistency": r["consistency"], "cost": r["cost"]})
    cols = [("model", "model"), ("T", "T"), ("family", "family"), ("method", f"best by {metric}"), ("top1", "top-1"),
            ("top1_shifted", "top-1 shifted"), ("consistency", "consistency"), ("cost", "cost x")]
    return format_table(out, cols, markdown=True)


def tta_summary_table(rows: list[dict]) -> str:
    """Per total budget and method, every measure and the cost averaged over the models."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["total_budget"], r["method"]), []).append(r)
    out = [{"T": t, "method": m, **{k: sum(r[k] for r in rs) / len(rs) for k in (*METRICS, "cost")}}
           for (t, m), rs in sorted(groups.items())]
    cols = [("T", "T"), ("method", "method"), ("top1", "top-1"), ("top1_shifted", "top-1 shifted"),
            ("consistency", "consistency"), ("cost", "cost x")]
    return format_table(out, cols, markdown=True)


def tta_delta_table(rows: list[dict]) -> str:
    """Per model and total budget: for each measure, the best "TTA + ours" row minus the best "TTA alone"
    row (points; each measure picks its own best), and the largest cost of each family."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        f = family(r["method"])
        if f in ("TTA alone", "TTA + ours"):
            groups.setdefault((r["model"], r["total_budget"]), {}).setdefault(f, []).append(r)
    out = []
    for (model, t), fam in sorted(groups.items()):
        if len(fam) < 2:
            continue
        both, alone = fam["TTA + ours"], fam["TTA alone"]
        out.append({"model": model, "T": t,
                    **{k: max(r[k] for r in both) - max(r[k] for r in alone) for k in METRICS},
                    "cost": f"{max(r['cost'] for r in both):.1f} vs {max(r['cost'] for r in alone):.0f}"})
    cols = [("model", "model"), ("T", "T"), ("top1", "Δ top-1"), ("top1_shifted", "Δ top-1 shifted"),
            ("consistency", "Δ consistency"), ("cost", "cost: both vs TTA")]
    return format_table(out, cols, markdown=True)


TABLES = {  # kind on the command line -> table from the loaded rows
    "zoo": zoo_table,
    "aggregators": aggregator_table,
    "summary": summary_table,
    "attention-vs-entropy": lambda rows: versus_table(rows, ("entropy", "attention", True),
                                                      ("entropy", "entropy", True)),
    "tta": tta_table,
    "tta-summary": tta_summary_table,
    "tta-delta": tta_delta_table,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=list(TABLES))
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    print(TABLES[args.kind](load(args.files)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
