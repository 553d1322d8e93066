"""The PNG plots of ``demo`` and ``eval``: metrics against budget and cost, methods at equal total budget,
Pareto fronts per family, photo pairs on their own; the segmentation rows' mIoU against cost.

Rules every figure follows: every line has its own style — colour by model (or family),
line style and marker by setting, so no two lines look alike however many there are; every line has a
legend entry; titles say what was averaged and over how many images; a model measured on other data
(EfficientNet-Lite0's photo pairs: consistency only, no labels) is drawn in its own figure and never
averaged with the zoo. Which rows are averaged, and how methods are grouped into families, is
:mod:`undiscard.evaluation.summary`. Each ``*_figure`` function returns the matplotlib figure (for inspection);
:func:`write_plots` saves them all atomically and closes them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from .._atomic import atomic_write
from .summary import (
    FAMILIES,
    LIMITS,
    is_pooled,
    method_points,
    pareto_front,
    zoo_average,
)

PLOT_FILES = ("metrics_vs_budget.png", "accuracy_vs_cost.png", "tta_comparison.png", "pareto.png",
              "pareto_per_model.png", "photo_pairs.png")  # every file write_plots may write

__all__ = ["PLOT_FILES", "SEGMENTATION_PLOT", "write_plots", "write_segmentation_plot", "budget_figure", "method_figure",
           "pareto_figure", "pareto_grid_figure", "photo_pairs_figure", "segmentation_figure", "line_style",
           "series_name", "METRIC_LABELS", "FAMILY_STYLE"]

SEGMENTATION_PLOT = "segmentation_miou_vs_cost.png"  # what write_segmentation_plot writes

Row = dict[str, Any]
METRIC_LABELS = {"top1": "clean top-1 (%)", "top1_shifted": "shifted top-1 (%)", "consistency": "shift consistency (%)"}
_LINESTYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2))]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
FAMILY_STYLE = {"plain": ("black", "o"), "TTA alone": ("C0", "s"), "ours alone": ("C3", "^"), "both": ("C2", "D")}


def line_style(major: int, minor: int = 0) -> dict[str, Any]:
    """Matplotlib style of line (``major``, ``minor``) — e.g. (model, setting): colour ``C{major mod 10}``,
    line style by ``minor``, marker by both, so distinct (major, minor) pairs (major < 100, minor < 7)
    never share colour, line style and marker."""
    return {"color": f"C{major % 10}", "linestyle": _LINESTYLES[minor % len(_LINESTYLES)],
            "marker": _MARKERS[(major // 10 + minor) % len(_MARKERS)]}


def series_name(row: Row, rows: Sequence[Row]) -> str:
    """A row's line label: its model, plus the settings that differ between rows (aggregate, ...)."""
    varying = [k for k in ("criterion", "aggregate", "align", "tta") if len({str(r.get(k)) for r in rows}) > 1]
    extra = ", ".join(f"{k}={row.get(k)}" if k == "align" else str(row.get(k)) for k in varying)
    return f"{row['model']} ({extra})" if extra else str(row["model"])


def _title(rows: Sequence[Row]) -> str:
    """``zoo (7 models, 500 test images each)``; one model: ``zoo:resnet (500 test images)``."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    ns = sorted({int(r["n"]) for r in rows if r.get("n") is not None})
    unit = "test images" if any(r.get("top1") is not None for r in rows) else "photo pairs"
    n = f"{ns[0]} {unit}" if len(ns) == 1 else f"{ns[0]}-{ns[-1]} {unit}" if ns else ""
    if len(models) == 1:
        return f"{models[0]} ({n})" if n else models[0]
    zoo = all(m.startswith("zoo:") for m in models)
    return f"{'zoo' if zoo else 'models'} ({len(models)} models{', ' + n + ' each' if n else ''})"


def _averaged(rows: Sequence[Row]) -> tuple[list[Row], str]:
    """The method points to draw and what they are: the zoo average (pooled models only, when two or more
    are present; :func:`undiscard.evaluation.summary.zoo_average`), else the first model's own points."""
    pooled = list(dict.fromkeys(r["model"] for r in rows if is_pooled(r)))
    if len(pooled) >= 2:
        return zoo_average(rows)[0], f"mean over {_title([r for r in rows if r['model'] in pooled])}"
    used = [r for r in rows if r["model"] == (pooled or [rows[0]["model"]])[0]]
    return method_points(used), _title(used)


def _figure(panels: int, rows_of_panels: int = 1, width: float = 4.4, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows_of_panels, panels, figsize=(width * panels, height * rows_of_panels),
                             squeeze=False)
    return fig, axes


def _log2_axis(ax) -> None:
    """A log2 x axis with plain numbers (1, 2, 4, ...) as tick labels."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _finish(fig, axes, title: str) -> None:
    """The figure's title above the panels and the one legend beside them."""
    _legend(fig, axes)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    fig.suptitle(title, fontsize=10)


def _legend(fig, axes) -> None:
    """One figure legend (beside the panels) with every labelled line of every panel, each label once."""
    handles, labels = {}, []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if labels:
        fig.legend([handles[lab] for lab in labels], labels, fontsize=7, loc="center left",
                   bbox_to_anchor=(1.0, 0.5), ncol=1 + len(labels) // 26, frameon=False)


def budget_figure(rows: Sequence[Row], xkey: str = "budget", metrics: Sequence[str] | None = None):
    """One panel per metric, one line per model and setting (phase search rows, no TTA) against
    ``xkey`` (``budget`` or ``cost``), on a log2 axis; colour by model, line style by setting."""
    ours = [r for r in rows if not r.get("tta")]
    metrics = [m for m in (metrics or METRIC_LABELS) if any(r.get(m) is not None for r in ours)]
    fig, axes = _figure(max(1, len(metrics)))
    models = list(dict.fromkeys(r["model"] for r in ours))
    names = [series_name(r, ours) for r in ours]
    settings = list(dict.fromkeys(nm[len(r["model"]):] for r, nm in zip(ours, names)))
    for ax, key in zip(axes[0], metrics):
        for name in dict.fromkeys(names):
            mine = [r for r, nm in zip(ours, names) if nm == name and r.get(key) is not None]
            if mine:
                style = line_style(models.index(mine[0]["model"]), settings.index(name[len(mine[0]["model"]):]))
                pts = sorted((r[xkey], r[key]) for r in mine)
                ax.plot(*zip(*pts), label=name, markersize=4, **style)
        _log2_axis(ax)
        ax.set_xlabel("budget (states per image)" if xkey == "budget" else "cost (plain forwards per image)")
        ax.set_ylabel(METRIC_LABELS.get(key, key))
        ax.set_title(METRIC_LABELS.get(key, key).replace(" (%)", ""), fontsize=9)
        ax.grid(alpha=0.3)
    _finish(fig, axes, f"phase search alone: {_title(ours)}")
    return fig


def method_figure(rows: Sequence[Row], metrics: Sequence[str] | None = None):
    """Each metric against cost (plain forwards per image, every view and search counted: what a method
    really spends, where views x states would understate a search), one line per method, averaged over
    the pooled (zoo) models only — or the one model's own rows when there is no zoo. Every ``ours`` and
    ``TTA`` line starts at the plain network (cost 1)."""
    points, what = _averaged(rows)
    metrics = [m for m in (metrics or METRIC_LABELS) if any(p.get(m) is not None for p in points)]
    fig, axes = _figure(max(1, len(metrics)))
    plain = [p for p in points if p["family"] == "plain"]
    series = list(dict.fromkeys(p["series"] for p in points if p["family"] != "plain"))
    fams = [next(p["family"] for p in points if p["series"] == s) for s in series]
    for ax, key in zip(axes[0], metrics):
        for i, (s, fam) in enumerate(zip(series, fams)):
            mine = [p for p in points if p["series"] == s]
            if fam in ("ours alone", "TTA alone"):
                mine = plain + mine
            pts = sorted((p["cost"], p[key]) for p in mine if p.get(key) is not None)
            if pts:
                ax.plot(*zip(*pts), label=s, markersize=4,
                        **line_style(FAMILIES.index(fam), i))
        _log2_axis(ax)
        ax.set_xlabel("cost (plain forwards per image)")
        ax.set_ylabel(METRIC_LABELS.get(key, key))
        ax.set_title(METRIC_LABELS.get(key, key).replace(" (%)", ""), fontsize=9)
        ax.grid(alpha=0.3)
    _finish(fig, axes, f"methods against cost: {what}")
    return fig


def _tag(point: Row) -> str:
    """A front point's short tag: ``x2`` (views), ``B4`` (states), ``x2 B2`` (both); none for plain."""
    views = point["total"] // point["budget"]
    return " ".join(([f"x{views}"] if views > 1 else []) + ([f"B{point['budget']}"] if point["budget"] > 1 else []))


def _pareto_panel(ax, points: Sequence[Row], key: str, legend: bool = True, tags: bool = False) -> None:
    """Every method as a point in its family's colour and marker; each family's Pareto front (the points
    no cheaper point of the family beats) as a line through them; the other points faded, unlabelled.
    ``tags``: each front point labelled with its views and states (:func:`_tag`)."""
    for fam in FAMILIES:
        pts = [(p["cost"], p[key]) for p in points if p["family"] == fam and p.get(key) is not None]
        if not pts:
            continue
        colour, marker = FAMILY_STYLE[fam]
        front = pareto_front(pts)
        rest = [q for q in pts if q not in front]
        if rest:
            ax.plot(*zip(*rest), linestyle="none", marker=marker, color=colour, alpha=0.3, markersize=4,
                    label="_dominated")
        ax.plot(*zip(*front), marker=marker, color=colour, markersize=5, drawstyle="steps-post",
                label=fam if legend else "_" + fam)
        if tags:
            by_point = {(p["cost"], p[key]): p for p in points if p["family"] == fam and p.get(key) is not None}
            for q in front:
                ax.annotate(_tag(by_point[q]), q, textcoords="offset points", xytext=(3, 3), fontsize=6,
                            color=colour)
    _log2_axis(ax)
    ax.grid(alpha=0.3)


def pareto_figure(rows: Sequence[Row], metrics: Sequence[str] | None = None):
    """``pareto.png``: each metric against cost (plain forwards per image), the four families (plain, TTA
    alone, ours alone, both) in distinct colours and markers with each family's Pareto front drawn;
    the zoo average (pooled models only), or the one model's rows when there is no zoo."""
    points, what = _averaged(rows)
    metrics = [m for m in (metrics or METRIC_LABELS) if any(p.get(m) is not None for p in points)]
    fig, axes = _figure(max(1, len(metrics)))
    for ax, key in zip(axes[0], metrics):
        _pareto_panel(ax, points, key, tags=True)
        for limit in LIMITS:  # the summary's cost limits
            ax.axvline(limit, color="grey", linestyle=":", linewidth=0.8, label="_limit")
        ax.set_xlabel("cost (plain forwards per image)")
        ax.set_ylabel(METRIC_LABELS.get(key, key))
        ax.set_title(METRIC_LABELS.get(key, key).replace(" (%)", ""), fontsize=9)
    _finish(fig, axes, f"Pareto fronts per family (lines, tagged xViews Bstates; faded: dominated; dotted: cost "
                       f"limits of the summary): {what}")
    return fig


def pareto_grid_figure(rows: Sequence[Row], metrics: Sequence[str] | None = None):
    """``pareto_per_model.png``: the Pareto panels of every model, one row of panels per model (a
    photo-pair model has only its consistency panel)."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    metrics = [m for m in (metrics or METRIC_LABELS) if any(r.get(m) is not None for r in rows)]
    fig, axes = _figure(max(1, len(metrics)), len(models), width=3.6, height=2.6)
    for i, m in enumerate(models):
        mine = [r for r in rows if r["model"] == m]
        points = method_points(mine)
        for j, key in enumerate(metrics):
            ax = axes[i][j]
            if not any(p.get(key) is not None for p in points):
                ax.set_axis_off()
                continue
            _pareto_panel(ax, points, key, legend=i == 0 or not is_pooled(mine[0]))
            ax.set_title(f"{_title(mine) if not is_pooled(mine[0]) else m}: "
                         f"{METRIC_LABELS.get(key, key).replace(' (%)', '')}", fontsize=7)
            ax.tick_params(labelsize=6)
    _finish(fig, axes, "Pareto fronts per family and model; x: cost (plain forwards per image), log2")
    return fig


def photo_pairs_figure(rows: Sequence[Row]):
    """Models measured on photo pairs (consistency only: rows without top-1), each in its own panel:
    consistency against cost, with the families' markers and Pareto fronts."""
    models = list(dict.fromkeys(r["model"] for r in rows if r.get("top1") is None and r.get("consistency") is not None))
    fig, axes = _figure(max(1, len(models)), width=5.0)
    for ax, m in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == m]
        _pareto_panel(ax, method_points(mine), "consistency", tags=True)
        ax.set_xlabel("cost (plain forwards per image)")
        ax.set_ylabel(METRIC_LABELS["consistency"])
        ax.set_title(f"{m}: {mine[0].get('n')} photo crop pairs (no labels; not in any zoo average)", fontsize=8)
    _finish(fig, axes, "photo pairs (consistency only, no labels): never averaged with the zoo")
    return fig


def _save(fig, path: Path, dpi: int = 120) -> Path:
    import matplotlib.pyplot as plt

    try:
        with atomic_write(path) as f:
            fig.savefig(f, dpi=dpi, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return path


def write_plots(rows: Sequence[Row], out_dir: str | Path) -> list[Path]:
    """Every plot of ``rows`` into ``out_dir``, each built, saved (atomically) and closed in turn:
    ``metrics_vs_budget.png`` and ``accuracy_vs_cost.png`` (labelled rows, phase search alone: drawn when
    the phase search alone was measured, or when nothing but the plain network was), ``tta_comparison.png``
    (with TTA rows), ``pareto.png``, ``pareto_per_model.png`` (more than one model), ``photo_pairs.png``
    (rows without top-1: photo pairs). Nothing is drawn that was not measured. Returns the paths written."""
    out = Path(out_dir)
    labelled = [r for r in rows if r.get("top1") is not None]
    todo: list[tuple[Callable[[], Any], str]] = []
    searched = any(not r.get("tta") and int(r.get("budget") or 1) > 1 for r in labelled)
    if labelled and (searched or not any(r.get("tta") for r in labelled)):
        todo += [(lambda: budget_figure(labelled), "metrics_vs_budget.png"),
                 (lambda: budget_figure(labelled, "cost", ["top1", "top1_shifted"]), "accuracy_vs_cost.png")]
    if labelled:
        if any(r.get("tta") for r in labelled):
            todo.append((lambda: method_figure(labelled), "tta_comparison.png"))
        todo.append((lambda: pareto_figure(labelled), "pareto.png"))
    if len({r["model"] for r in rows}) > 1:
        todo.append((lambda: pareto_grid_figure(rows), "pareto_per_model.png"))
    if any(r.get("top1") is None and r.get("consistency") is not None for r in rows):
        todo.append((lambda: photo_pairs_figure(rows), "photo_pairs.png"))
    return [_save(build(), out / name) for build, name in todo]


_SEGMENTATION_MARKERS = {"network": "o", "ours": "s", "TTA flip": "^", "flip x ours": "D"}


def segmentation_figure(rows: Sequence[Row]):
    """Segmentation rows' clean and shifted mIoU against cost, one colour per model (a line through its
    network and search rows), one marker per method; the legend names every model and marker."""
    from matplotlib.lines import Line2D

    fig, axes = _figure(2, width=5.0, height=4.0)
    axes = axes[0]
    models = list(dict.fromkeys(r["model"] for r in rows))
    markers = _SEGMENTATION_MARKERS
    for ax, key, title in ((axes[0], "miou", "clean mIoU (%)"), (axes[1], "miou_shifted", "shifted mIoU (%)")):
        for i, m in enumerate(models):
            mine = [r for r in rows if r["model"] == m and r.get(key) is not None]
            ours = sorted((r for r in mine if r["method"] in ("network", "ours")), key=lambda r: r["cost"])
            ax.plot([r["cost"] for r in ours], [r[key] for r in ours], color=f"C{i}", label=m)
            for r in mine:
                ax.scatter(r["cost"], r[key], color=f"C{i}", marker=markers.get(r["method"], "x"))
        ax.set_xlabel("cost (plain forwards per image)")
        ax.set_title(title)
    handles, labels = axes[0].get_legend_handles_labels()
    used = [m for m in markers if any(r["method"] == m for r in rows)]
    handles += [Line2D([], [], color="grey", marker=markers[m], linestyle="none") for m in used]
    n = len({r["n"] for r in rows}) == 1 and rows[0].get("n")
    fig.legend(handles, labels + used, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(f"segmentation zoo ({len(models)} models{f', {n} test canvases each' if n else ''})", fontsize=10)
    fig.tight_layout()
    return fig


def write_segmentation_plot(rows: Sequence[Row], out_dir: str | Path) -> Path:
    """:func:`segmentation_figure` saved (atomically) as :data:`SEGMENTATION_PLOT` in ``out_dir``, and closed."""
    return _save(segmentation_figure(rows), Path(out_dir) / SEGMENTATION_PLOT, dpi=100)
