"""The demo's plots (undiscard.evaluation.plots), checked on matplotlib's objects, not on pixels: every file written,
every line in the legend once, no two lines styled alike, photo pairs never drawn with the zoo, titles
with image counts, Pareto fronts drawn per family."""
from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from undiscard.evaluation.plots import (  # noqa: E402
    budget_figure,
    method_figure,
    pareto_figure,
    pareto_grid_figure,
    photo_pairs_figure,
    write_plots,
)
from undiscard.evaluation.summary import pareto_front  # noqa: E402

MODELS = [f"zoo:m{i}" for i in range(12)]  # more models than colours
N = 50


def zoo_rows() -> list[dict]:
    """Every model: budgets 1, 2, 4 x aggregates entropy/attention, TTA standard x2/x4, flip x ours B=2."""
    rows = []
    for i, m in enumerate(MODELS):
        base = dict(model=m, n=N, criterion="entropy", align=True, tta=None, tta_views=1)
        for agg in ("entropy", "attention"):
            for b in (1, 2, 4):
                v = 90.0 + i * 0.1 + b * (0.2 if agg == "entropy" else 0.3)
                rows.append(dict(base, budget=b, aggregate=agg, top1=v, top1_shifted=v - 1, consistency=v + 4,
                                 cost={1: 1.0, 2: 4.2, 4: 6.0}[b]))
        for views in (2, 4):
            rows.append(dict(base, budget=1, aggregate="entropy", tta="standard/mean", tta_views=views,
                             top1=91.0, top1_shifted=90.0, consistency=95.0, cost=float(views)))
        rows.append(dict(base, budget=2, aggregate="entropy", tta="flip/mean", tta_views=2, top1=92.0,
                         top1_shifted=91.0, consistency=96.0, cost=8.4))
    return rows


def photo_rows() -> list[dict]:
    base = dict(model="efficientnet-lite0", n=40, criterion="entropy", aggregate="entropy", align=True, top1=None,
                top5=None, top1_shifted=None)
    return [dict(base, budget=b, tta=None, tta_views=1, consistency=60.0 + b, cost=1.0 if b == 1 else 3.8 * b / 2)
            for b in (1, 2, 4)] + [dict(base, budget=1, tta="flip/mean", tta_views=2, consistency=5.0, cost=2.0)]


def labelled_lines(fig) -> list:
    return [ln for ax in fig.axes for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def legend_texts(fig) -> list[str]:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()] + \
        [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]


def check_legend(fig) -> list[str]:
    """Every labelled line has one legend entry, and every entry a line."""
    labels = list(dict.fromkeys(ln.get_label() for ln in labelled_lines(fig)))
    texts = legend_texts(fig)
    assert len(texts) == len(labels) and set(texts) == set(labels)
    return labels


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_every_plot_is_written(tmp_path):
    paths = write_plots([r for r in zoo_rows() if r["model"] in MODELS[:3]] + photo_rows(), tmp_path)
    assert sorted(p.name for p in paths) == sorted(["metrics_vs_budget.png", "accuracy_vs_cost.png",
                                                    "tta_comparison.png", "pareto.png", "pareto_per_model.png",
                                                    "photo_pairs.png"])
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
    assert not plt.get_fignums()  # every figure closed


def test_budget_figure_legend_and_distinct_styles():
    rows = zoo_rows() + photo_rows()
    fig = budget_figure([r for r in rows if r["top1"] is not None])
    labels = check_legend(fig)
    assert len(labels) == len(MODELS) * 2  # model x aggregate, ours rows only
    styles = {ln.get_label(): (ln.get_color(), str(ln.get_linestyle()), ln.get_marker()) for ln in labelled_lines(fig)}
    assert len(set(styles.values())) == len(styles)  # no two lines look alike
    assert "zoo (12 models, 50 test images each)" in fig._suptitle.get_text()


def test_method_figure_averages_the_zoo_only():
    rows = zoo_rows() + photo_rows()
    fig = method_figure(rows)  # even given the photo rows, they are not averaged in
    labels = check_legend(fig)
    assert not any("lite0" in lab for lab in labels)
    assert "mean over zoo (12 models, 50 test images each)" in fig._suptitle.get_text()
    cons = [ax for ax in fig.axes if "consistency" in ax.get_ylabel()][0]
    line = next(ln for ln in cons.get_lines() if ln.get_label() == "ours (entropy)")
    plain = [r["consistency"] for r in rows if r["model"].startswith("zoo:") and r["budget"] == 1 and not r["tta"]
             and r["aggregate"] == "entropy"]
    assert line.get_xdata()[0] == 1 and line.get_ydata()[0] == pytest.approx(sum(plain) / len(plain))
    styles = [(ln.get_color(), str(ln.get_linestyle()), ln.get_marker()) for ln in cons.get_lines()]
    assert len(set(styles)) == len(styles)


def test_pareto_figure_draws_each_family_front():
    rows = zoo_rows()
    fig = pareto_figure(rows + photo_rows())
    labels = check_legend(fig)
    assert set(labels) == {"plain", "TTA alone", "ours alone", "both"}
    ax = next(ax for ax in fig.axes if "clean" in ax.get_ylabel())
    ours = next(ln for ln in ax.get_lines() if ln.get_label() == "ours alone")
    points = [({2: 4.2, 4: 6.0}[b], sum(90.0 + i * 0.1 + b * w for i in range(12)) / 12)
              for b in (2, 4) for w in (0.2, 0.3)]
    front = pareto_front(points)
    assert len(front) == 2  # B=2 and B=4 with attention; the entropy points are dominated
    assert list(ours.get_xdata()) == pytest.approx([c for c, _ in front])
    assert list(ours.get_ydata()) == pytest.approx([v for _, v in front])
    markers = {ln.get_label(): ln.get_marker() for ln in labelled_lines(fig)}
    assert len(set(markers.values())) == 4


def test_grid_and_photo_pairs_figures():
    rows = zoo_rows()[:30] + photo_rows()  # two zoo models and the photo-pair model
    grid = pareto_grid_figure(rows)
    check_legend(grid)
    photos = photo_pairs_figure(rows)
    check_legend(photos)
    titles = [ax.get_title() for ax in photos.axes]
    assert titles == ["efficientnet-lite0: 40 photo crop pairs (no labels; not in any zoo average)"]
    ys = [y for ln in photos.axes[0].get_lines() for y in ln.get_ydata()]
    assert sorted(ys) == sorted(r["consistency"] for r in photo_rows())
