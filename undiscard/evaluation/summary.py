"""The headline of an evaluation: which method is best at a given total cost, per model and over the zoo.

Rows (the dicts of ``demo``/``eval``) fall into four *families* (:func:`family`): ``plain`` (the network:
budget 1, no TTA), ``TTA alone`` (image-space views, each at budget 1), ``ours alone`` (the phase search,
budget > 1, no TTA) and ``both`` (views x phase search). Every row carries ``cost``: plain forwards per
image, all views and searches counted, so methods compare at equal cost.

:func:`summarise` answers, for each model and for the mean over the zoo models, for each metric (clean
top-1, shifted top-1, consistency) and each cost limit (default 2, 4 and 8 plain forwards): the best
method whose cost is within the limit, and the best of each family. The zoo mean averages a method over
the models named ``zoo:*`` that all have it (its cost averaged too), and never includes other models:
EfficientNet-Lite0's photo pairs (consistency only, no labels) are a different data set and stay on
their own. :func:`pareto_front` gives a family's points that no cheaper point beats. Pure functions over
rows; :func:`format_summary` and :func:`summary_markdown` present the result.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

__all__ = ["FAMILIES", "METRICS", "LIMITS", "HEAD_SLACK", "family", "method_key", "method_label", "series_label", "is_pooled", "method_points",
           "zoo_average", "best_per_cost", "summarise", "pareto_front", "format_summary", "summary_markdown"]

FAMILIES = ("plain", "TTA alone", "ours alone", "both")
METRICS = {"top1": "clean top-1", "top1_shifted": "shifted top-1", "consistency": "consistency"}
LIMITS = (2.0, 4.0, 8.0)
ZOO_AVERAGE = "zoo average"
HEAD_SLACK = 0.002  # a search at budget B costs B forwards plus one run of the head on the aggregated features
# (0.07-0.11% of a forward on the zoo at B=2, in the demo's rows); a cost within that share of the limit is within it

Row = dict[str, Any]


def family(row: Row) -> str:
    """The family of a row: ``plain``, ``TTA alone``, ``ours alone`` or ``both``."""
    tta, budget = row.get("tta"), int(row.get("budget") or 1)
    if not tta:
        return "plain" if budget == 1 else "ours alone"
    return "TTA alone" if budget == 1 else "both"


def method_key(row: Row) -> tuple:
    """What identifies a method across models: the settings that change its predictions. All budget-1
    rows without TTA are the same method (the network), whatever their aggregate or alignment."""
    fam = family(row)
    tta = (row.get("tta"), int(row.get("tta_views") or 1))
    if fam == "plain":
        return (fam,)
    if fam == "TTA alone":
        return (fam, *tta)
    ours = (int(row["budget"]), row.get("criterion"), row.get("aggregate"), row.get("align"))
    return (fam, *ours) if fam == "ours alone" else (fam, *tta, *ours)


def method_label(row: Row) -> str:
    """A short readable name of a row's method: ``plain``, ``TTA standard/mean x4``, ``ours B=4 (entropy)``,
    ``TTA flip/mean x2 + ours B=2 (attention)``; ``no align`` and a criterion other than entropy are added."""
    fam = family(row)
    if fam == "plain":
        return "plain"
    tta = f"TTA {row['tta']} x{int(row.get('tta_views') or 1)}" if row.get("tta") else ""
    if fam == "TTA alone":
        return tta
    extra = [str(row.get("aggregate"))]
    if row.get("align") is False:
        extra.append("no align")
    if row.get("criterion") == "aps":
        extra.append("aps")
    elif row.get("criterion") not in (None, "entropy", "-"):
        extra.append(f"{row['criterion']} order")
    ours = f"ours B={int(row['budget'])} ({', '.join(extra)})"
    return ours if fam == "ours alone" else f"{tta} + {ours}"


def series_label(row: Row) -> str:
    """A row's method without its budget (a line across budgets): ``plain``, ``TTA standard/mean``,
    ``ours (entropy)``, ``TTA flip/mean + ours (entropy)``."""
    label = method_label(row)
    for part in (f" x{int(row.get('tta_views') or 1)}", f" B={int(row.get('budget') or 1)}"):
        label = label.replace(part, "", 1)
    return label


def is_pooled(row: Row) -> bool:
    """Whether a row enters the zoo average: a ``zoo:`` model with labelled images (top-1 measured)."""
    return str(row.get("model", "")).startswith("zoo:") and row.get("top1") is not None


def method_points(rows: Sequence[Row]) -> list[Row]:
    """One point per method of ``rows`` (all of one model): ``method``, ``family``, ``series``, ``budget``,
    ``total`` (views x budget), ``cost`` and the metrics
    (None where not measured), in the rows' order; a repeated method (the budget-1 row of each aggregate)
    keeps its first row."""
    return list(_points_by_key(rows).values())


def _points_by_key(rows: Sequence[Row]) -> dict[tuple, Row]:
    points: dict[tuple, Row] = {}
    for r in rows:
        if method_key(r) not in points:
            budget, views = int(r.get("budget") or 1), int(r.get("tta_views") or 1)
            points[method_key(r)] = {"method": method_label(r), "family": family(r), "series": series_label(r),
                                     "budget": budget, "total": views * budget, "cost": float(r["cost"]),
                                     **{m: r.get(m) for m in METRICS}}
    return points


def zoo_average(rows: Sequence[Row], pooled: Callable[[Row], bool] = is_pooled) -> tuple[list[Row], list[str]]:
    """The mean over the pooled models (:func:`is_pooled`) of each method that every one of them has:
    metrics and cost averaged; the points and the models averaged over. Other rows are ignored."""
    mine = [r for r in rows if pooled(r)]
    models = list(dict.fromkeys(r["model"] for r in mine))
    per_model = [_points_by_key([r for r in mine if r["model"] == m]) for m in models]
    if not per_model:
        return [], []
    out = []
    for k, first in per_model[0].items():
        if all(k in pm for pm in per_model):
            pts = [pm[k] for pm in per_model]
            out.append({**first, "cost": sum(p["cost"] for p in pts) / len(pts),
                        **{m: _mean([p[m] for p in pts]) for m in METRICS}})
    return out, models


def _mean(values: list[Any]) -> float | None:
    if any(v is None for v in values):
        return None
    return sum(values) / len(values)


def best_per_cost(points: Sequence[Row], metric: str, limit: float) -> tuple[Row | None, dict[str, Row | None]]:
    """The best point for ``metric`` among ``points`` whose cost is at most ``limit`` (up to
    :data:`HEAD_SLACK` of it: the head's one run on the aggregate), and the best of each
    family (None where a family has no point within the limit). Ties go to the cheaper point, then to
    the earlier one."""
    within = [p for p in points if p.get(metric) is not None and p["cost"] <= limit * (1 + HEAD_SLACK)]

    def best(ps: list[Row]) -> Row | None:
        return max(reversed(ps), key=lambda p: (p[metric], -p["cost"])) if ps else None

    return best(within), {f: best([p for p in within if p["family"] == f]) for f in FAMILIES}


def _pick(p: Row | None, metric: str) -> dict | None:
    return None if p is None else {"method": p["method"], "family": p["family"], "value": p[metric],
                                   "cost": p["cost"]}


def _group(name: str, points: list[Row], models: list[str], images: int | None, limits, metrics) -> dict:
    cells = []
    for metric in metrics:
        if not any(p.get(metric) is not None for p in points):
            continue
        for limit in limits:
            top, fams = best_per_cost(points, metric, limit)
            cells.append({"metric": metric, "limit": limit, "best": _pick(top, metric),
                          "by_family": {f: _pick(p, metric) for f, p in fams.items()}})
    return {"name": name, "models": models, "images": images, "cells": cells}


def summarise(rows: Sequence[Row], limits: Sequence[float] = LIMITS, metrics: Sequence[str] = tuple(METRICS),
              pooled: Callable[[Row], bool] = is_pooled) -> dict:
    """The headline summary of ``rows`` (JSON-ready): ``limits``, ``metrics`` and ``groups``, first the zoo
    average (when two or more pooled models are present), then one group per model. A group has ``name``,
    ``models``, ``images`` (images per model; for photo pairs, the pairs) and ``cells``: one per metric
    measured and limit, with ``best`` and ``by_family`` (``method``, ``family``, ``value``, ``cost``, or
    None)."""
    groups = []
    avg, models = zoo_average(rows, pooled)
    if len(models) >= 2:
        images = {r.get("n") for r in rows if pooled(r)}
        groups.append(_group(ZOO_AVERAGE, avg, models, images.pop() if len(images) == 1 else None, limits, metrics))
    for m in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == m]
        groups.append(_group(m, method_points(mine), [m], mine[0].get("n"), limits, metrics))
    return {"limits": list(limits), "metrics": {m: METRICS.get(m, m) for m in metrics}, "groups": groups}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, value) points that no point at most as costly beats: sorted by cost, each strictly
    better than every cheaper one (of equal costs only the best counts)."""
    front: list[tuple[float, float]] = []
    for cost, value in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or value > front[-1][1]:
            front.append((cost, value))
    return front


def group_title(group: dict) -> str:
    """``zoo average (7 models, 500 test images each)`` or ``zoo:resnet (500 test images)``;
    a model without top-1 is counted in photo pairs."""
    photo = not any(c["metric"] != "consistency" for c in group["cells"])
    unit = "photo pairs" if photo else "test images"
    n = "" if group["images"] is None else f"{group['images']} {unit}"
    if group["name"] == ZOO_AVERAGE:
        return f"{ZOO_AVERAGE} ({len(group['models'])} models{', ' + n + ' each' if n else ''})"
    return f"{group['name']} ({n})" if n else group["name"]


def _value(p: dict | None, digits: int = 2) -> str:
    return "-" if p is None or p["value"] is None else f"{p['value']:.{digits}f}"


def _short(fam: str) -> str:
    return {"TTA alone": "TTA", "ours alone": "ours"}.get(fam, fam)


def format_summary(summary: dict, detailed: Sequence[str] | None = None) -> str:
    """The summary for the terminal: for the zoo average and the photo-pair models, one line per metric
    and limit (the best method with its value and cost, then the best value of each family); for the
    other models, one line per metric with the winner at each limit. ``detailed``: the groups to show in
    full (default: the zoo average and every group without top-1)."""
    lines = [f"Best method per total cost (plain forwards per image, all views and searches counted; "
             f"cost <= {', '.join(f'{x:g}' for x in summary['limits'])}):"]
    groups = summary["groups"]
    if detailed is None:
        detailed = [g["name"] for g in groups if g["name"] == ZOO_AVERAGE
                    or not any(c["metric"] != "consistency" for c in g["cells"])]
    width = max(len(v) for v in summary["metrics"].values())
    for g in groups:
        if g["name"] not in detailed:
            continue
        lines.append(f"{group_title(g)}:")
        for c in g["cells"]:
            b = c["best"]
            head = f"  {summary['metrics'][c['metric']]:<{width}}  <= {c['limit']:g}  "
            best = "best -" if b is None else f"best {b['method']}: {_value(b)} (cost {b['cost']:.2f})"
            fams = "  ".join(f"{_short(f)} {_value(p)}" for f, p in c["by_family"].items())
            lines.append(f"{head}{best:<58} | {fams}")
    rest = [g for g in groups if g["name"] not in detailed]
    if rest:
        lines.append("Per model, the best method at cost " + " | ".join(f"<= {x:g}" for x in summary["limits"]) + ":")
        name_w = max(len(g["name"]) for g in rest)
        for g in rest:
            for i, metric in enumerate(dict.fromkeys(c["metric"] for c in g["cells"])):
                cells = [c for c in g["cells"] if c["metric"] == metric]
                picks = " | ".join("-" if c["best"] is None else f"{c['best']['method']} {_value(c['best'])}"
                                   for c in cells)
                lines.append(f"  {g['name'] if i == 0 else '':<{name_w}}  {summary['metrics'][metric]:<{width}}  {picks}")
    return "\n".join(lines)


def summary_markdown(summary: dict, intro: str = "") -> str:
    """The whole summary as markdown: per group a table, one row per metric and cost limit, with the
    best method and the best of each family (value, method, cost)."""
    out = ["# Best method per total cost", "", intro.strip(), ""] if intro.strip() else \
        ["# Best method per total cost", ""]
    out += ["Cost: plain forwards per image (all views and searches counted). Families: plain (the network), "
            "TTA alone (image-space views), ours alone (the phase search), both (views x phase search). "
            "The zoo average is over the `zoo:` models only; a photo-pair model is never averaged in.", ""]
    for g in summary["groups"]:
        out += [f"## {group_title(g)}", "", "| metric | cost <= | best | " + " | ".join(FAMILIES) + " |",
                "|---|--:|---|" + "---|" * len(FAMILIES)]
        for c in g["cells"]:
            def cell(p: dict | None) -> str:
                return "-" if p is None else f"{_value(p)} {p['method']} ({p['cost']:.2f})"
            out.append(f"| {summary['metrics'][c['metric']]} | {c['limit']:g} | **{cell(c['best'])}** | "
                       + " | ".join(cell(p) for p in c["by_family"].values()) + " |")
        out.append("")
    return "\n".join(out)
