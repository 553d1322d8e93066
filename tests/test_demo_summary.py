"""The headline summary (undiscard.evaluation.summary): families, best method per cost limit, the zoo average that
never takes in photo-pair rows, Pareto fronts, and how the summary is written (terminal, markdown)."""
from __future__ import annotations

import random

import pytest

from undiscard.evaluation.summary import (
    FAMILIES,
    HEAD_SLACK,
    best_per_cost,
    family,
    format_summary,
    is_pooled,
    method_label,
    method_points,
    pareto_front,
    summarise,
    summary_markdown,
    zoo_average,
)


def row(model="zoo:a", budget=1, tta=None, views=1, top1=90.0, shifted=89.0, cons=95.0, cost=None,
        aggregate="entropy", align=True, n=100, criterion="entropy"):
    """A demo/eval row with only what the summary reads."""
    return {"model": model, "budget": budget, "tta": tta, "tta_views": views, "top1": top1, "top1_shifted": shifted,
            "consistency": cons, "cost": float(budget * views if cost is None else cost), "aggregate": aggregate,
            "align": align, "n": n, "criterion": criterion}


def photo(budget=1, cons=70.0, cost=None, tta=None, views=1, model="efficientnet-lite0"):
    """A photo-pair row: consistency only, no labels."""
    return row(model, budget, tta, views, top1=None, shifted=None, cons=cons, cost=cost, n=40)


def one_model(model="zoo:a", n=100):
    """plain 90 | TTA x2 (cost 2) 91 | both (flip x ours B=2, cost 4.0) 92 | ours B=2 (cost 4.2) 95 | ours B=8 (8.9) 99."""
    return [row(model, 1, top1=90.0, n=n), row(model, 1, aggregate="attention", top1=90.0, n=n),
            row(model, 1, "standard/mean", 2, top1=91.0, cost=2.0, n=n),
            row(model, 2, "flip/mean", 2, top1=92.0, cost=4.0, n=n),
            row(model, 2, top1=95.0, cost=4.2, n=n), row(model, 8, top1=99.0, cost=8.9, n=n)]


def cell(summary, group, metric, limit):
    g = next(g for g in summary["groups"] if g["name"] == group)
    return next(c for c in g["cells"] if c["metric"] == metric and c["limit"] == limit)


def test_families_and_labels():
    assert [family(r) for r in one_model()] == ["plain", "plain", "TTA alone", "both", "ours alone", "ours alone"]
    assert method_label(row(budget=4, aggregate="attention", align=False)) == "ours B=4 (attention, no align)"
    assert method_label(row(budget=2, tta="flip/mean", views=2)) == "TTA flip/mean x2 + ours B=2 (entropy)"
    assert method_label(row(tta="standard/mean", views=4)) == "TTA standard/mean x4"
    assert method_label(row(budget=4, criterion="calibrated")) == "ours B=4 (entropy, calibrated order)"


def test_budget_one_rows_of_every_aggregate_are_one_plain_method():
    points = method_points(one_model())
    assert [p["method"] for p in points].count("plain") == 1 and len(points) == 5


def test_best_respects_the_cost_limit():
    s = summarise(one_model(), limits=(2, 4, 8))
    two, four, eight = (cell(s, "zoo:a", "top1", x) for x in (2, 4, 8))
    assert (two["best"]["method"], two["best"]["value"]) == ("TTA standard/mean x2", 91.0)
    assert two["by_family"]["ours alone"] is None and two["by_family"]["both"] is None
    # ours at B=2 costs 4.2 > 4: not allowed at <= 4, although it is the most accurate there
    assert four["best"]["family"] == "both" and four["best"]["value"] == 92.0 and four["best"]["cost"] == 4.0
    assert four["by_family"]["ours alone"] is None and four["by_family"]["plain"]["value"] == 90.0
    assert eight["best"]["method"] == "ours B=2 (entropy)" and eight["best"]["value"] == 95.0  # B=8 costs 8.9
    for c in s["groups"][0]["cells"]:
        picks = [c["best"], *c["by_family"].values()]
        assert all(p["cost"] <= c["limit"] * (1 + HEAD_SLACK) for p in picks if p is not None)
        assert c["best"]["value"] == max(p["value"] for p in picks if p is not None)


def test_a_budget_b_search_with_its_head_run_fits_a_cost_of_b_and_a_dense_pass_does_not():
    rows = [{"model": "zoo:a", "budget": 1, "tta": None, "cost": 1.0, "top1": 90.0},
            {"model": "zoo:a", "budget": 2, "tta": None, "criterion": "calibrated", "aggregate": "entropy",
             "cost": 2.0011, "top1": 91.0},
            {"model": "zoo:a", "budget": 2, "tta": None, "criterion": "aps", "aggregate": "entropy",
             "cost": 2.04, "top1": 92.0}]
    c = cell(summarise(rows, limits=(2,)), "zoo:a", "top1", 2)
    assert c["best"]["method"] == "ours B=2 (entropy, calibrated order)" and c["best"]["value"] == 91.0


def test_ties_go_to_the_cheaper_method():
    rows = [row(top1=90.0), row(budget=2, top1=90.0, cost=3.0)]
    best, fams = best_per_cost(method_points(rows), "top1", 4)
    assert best["method"] == "plain" and fams["ours alone"]["cost"] == 3.0


def test_zoo_average_never_takes_in_photo_pairs():
    zoo = one_model("zoo:a") + [dict(r, model="zoo:b", consistency=r["consistency"] - 10, top1=r["top1"] - 2)
                               for r in one_model("zoo:b")]
    photos = [photo(1, 10.0), photo(2, 20.0, cost=3.8), photo(1, 15.0, tta="flip/mean", views=2, cost=2.0)]
    # a zoo-named model measured on photo pairs has no top-1: it is not pooled either
    odd = [photo(1, 0.0, model="zoo:photos")]
    points, models = zoo_average(zoo + photos + odd)
    assert models == ["zoo:a", "zoo:b"]
    assert not any(is_pooled(r) for r in photos + odd)
    plain = next(p for p in points if p["method"] == "plain")
    assert plain["consistency"] == pytest.approx((95.0 + 85.0) / 2) and plain["top1"] == pytest.approx(89.0)
    s = summarise(zoo + photos + odd)
    assert [g["name"] for g in s["groups"]] == ["zoo average", "zoo:a", "zoo:b", "efficientnet-lite0", "zoo:photos"]
    assert s["groups"][0]["models"] == ["zoo:a", "zoo:b"] and s["groups"][0]["images"] == 100
    assert cell(s, "zoo average", "consistency", 2)["best"]["value"] == pytest.approx(90.0)
    lite = next(g for g in s["groups"] if g["name"] == "efficientnet-lite0")
    assert {c["metric"] for c in lite["cells"]} == {"consistency"}  # no labels: no accuracy cells
    assert cell(s, "efficientnet-lite0", "consistency", 4)["best"]["value"] == 20.0


def test_zoo_average_keeps_only_methods_every_model_has_and_averages_cost():
    a = one_model("zoo:a")
    b = [dict(r, model="zoo:b", cost=r["cost"] * 1.5 if r["budget"] > 1 else r["cost"]) for r in one_model("zoo:b")
         if not (r["budget"] == 8)]
    points, _ = zoo_average(a + b)
    assert "ours B=8 (entropy)" not in [p["method"] for p in points]
    ours = next(p for p in points if p["method"] == "ours B=2 (entropy)")
    assert ours["cost"] == pytest.approx((4.2 + 6.3) / 2)


def test_one_model_has_no_zoo_average():
    assert [g["name"] for g in summarise(one_model())["groups"]] == ["zoo:a"]


def test_pareto_front_is_the_undominated_points():
    rng = random.Random(0)
    for _ in range(50):
        pts = [(rng.choice([1.0, 2.0, 4.0, 8.0]), rng.uniform(80, 95)) for _ in range(rng.randint(1, 12))]
        front = pareto_front(pts)
        assert [c for c, _ in front] == sorted(c for c, _ in front)
        assert all(v2 > v1 for (_, v1), (_, v2) in zip(front, front[1:]))
        for c, v in pts:  # every point is matched or beaten by a front point at most as costly
            assert any(fc <= c and fv >= v for fc, fv in front)
        for fc, fv in front:  # and no front point is beaten by a point at most as costly
            assert not any(c <= fc and v > fv for c, v in pts)


def test_written_summary_names_groups_with_image_counts():
    rows = one_model("zoo:a") + one_model("zoo:b") + [photo(1, 60.0), photo(2, 75.0, cost=3.8)]
    s = summarise(rows)
    text = format_summary(s)
    assert "zoo average (2 models, 100 test images each):" in text
    assert "efficientnet-lite0 (40 photo pairs):" in text
    assert "best TTA flip/mean x2 + ours B=2 (entropy): 92.00 (cost 4.00)" in text
    md = summary_markdown(s, "intro")
    assert md.count("| clean top-1 |") == 3 * 3 and md.count("| consistency |") == 3 * 4
    assert all(f in md for f in FAMILIES)
