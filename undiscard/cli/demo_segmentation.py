"""The segmentation rows of ``undiscard demo``: the segmentation zoo on the bundled test canvases.

For every segmentation zoo model (``zoo:seg_*``, when segmentation_models_pytorch is installed), on the
first ``--seg-limit`` bundled test canvases (default 200; ``--full``: all 2,000) and copies shifted by
1..``--max-shift`` px: the network (budget 1), the phase search at the demo's budgets up to 4
(``wrap(net, task="segmentation")``, the demo's ``--criterion`` — ``calibrated``: each model's shipped
order, ranked by mIoU on validation canvases — except ``learned``, for which the segmentation zoo has no
aggregators and these rows use ``entropy``; entropy aggregation), flip TTA (2 views, mean of
probabilities) and flip x ours at 2 states per view — mIoU, shifted mIoU, pixel shift consistency,
boundary F1 and cost in plain forwards. A model whose search fails is reported with its network row
and a one-line note. Writes ``segmentation_miou_vs_cost.png`` with ``--out``.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

__all__ = ["segmentation_rows", "plot_segmentation", "SEG_DEFAULT_LIMIT", "available"]

SEG_DEFAULT_LIMIT = 200


def available() -> bool:
    """Whether the segmentation zoo can be built here (segmentation_models_pytorch installed)."""
    return importlib.util.find_spec("segmentation_models_pytorch") is not None


def _search_options(args: argparse.Namespace, name: str) -> dict:
    """``criterion=`` (and ``order=``) of the segmentation rows for the demo's ``--criterion``."""
    from .common import shipped_order

    criterion = getattr(args, "criterion", "entropy")
    criterion = "entropy" if criterion == "learned" else criterion  # no segmentation aggregators
    return {"criterion": criterion, **shipped_order(name, criterion)}


def segmentation_rows(args: argparse.Namespace, budgets: list[int], device: torch.device) -> list[dict]:
    """The rows (dicts) of the segmentation zoo (see the module docstring)."""
    from ..data import segmentation as segdata
    from ..data.shift import shift_images
    from ..evaluation._segmentation import (
        plain_predictions,
        run_seg_pairs,
        search_predictions_dense,
        seg_rows,
        tta_predictions,
    )
    from ..tta import DenseTTA
    from ..wrapper import wrap
    from ..zoo import segmentation as segzoo
    from .common import progress_bar, wrap_options
    
    limit = None if getattr(args, "full", False) else getattr(args, "seg_limit", SEG_DEFAULT_LIMIT)
    images, masks = segdata.load_seg_test()
    images, masks = images[:limit], masks[:limit]
    raw = torch.from_numpy(images).unsqueeze(1)
    shifted, offsets = shift_images(raw, args.max_shift, args.seed)
    x, xs = segdata.to_input(raw).to(device), segdata.to_input(shifted).to(device)
    y = torch.from_numpy(masks).long()
    bs = [b for b in budgets if b <= 4] or [1]
    common = dict(ignore_index=segdata.IGNORE_INDEX, shifted=xs, offsets=offsets, batch_size=50)
    names = [m for m in segzoo.list_models() if segzoo.weights_path(m).exists()]
    missing = [m for m in segzoo.list_models() if m not in names]
    if missing:
        print(f"undiscard demo: skipping segmentation zoo models without weights: {', '.join(missing)}",
              file=sys.stderr)
    rows: list[dict] = []
    with progress_bar(len(y) * len(names) * 3, "demo segmentation", enabled=not args.quiet) as bar:
        for name in names:
            net = segzoo.create_model(name).to(device)
            model = wrap(net, budget=1, task="segmentation", **_search_options(args, name), **wrap_options(args))
            label = f"zoo:{name}"
            try:
                t, s = run_seg_pairs(x, y, search_predictions_dense(model, bs, ["entropy"]), [(b, "entropy") for b in bs],
                                     segdata.NUM_CLASSES, progress=bar.update, **common)
            except Exception as err:  # noqa: BLE001 - one model's search failing leaves the others' rows
                print(f"undiscard demo: zoo:{name}: phase search failed ({type(err).__name__}: "
                      f"{str(err).splitlines()[0][:120]}); network row only", file=sys.stderr)
                t, s = run_seg_pairs(x, y, plain_predictions(net, (1, "entropy")), [(1, "entropy")],
                                     segdata.NUM_CLASSES, progress=bar.update, **common)
                model = None
            rows += seg_rows(t, lambda k: dict(model=label, method="ours" if k[0] > 1 else "network", budget=k[0],
                                               views=1, aggregate="entropy" if k[0] > 1 else "-"), s)
            tta = DenseTTA(net, "flip")
            t, s = run_seg_pairs(x, y, tta_predictions(tta), [1], segdata.NUM_CLASSES, progress=bar.update, **common)
            rows += seg_rows(t, lambda k: dict(model=label, method="TTA flip", budget=1, views=2, aggregate="mean"), s)
            if model is not None and max(budgets) >= 4:
                t, s = run_seg_pairs(x, y, tta_predictions(DenseTTA(model, "flip"), [2]), [2],
                                     segdata.NUM_CLASSES, progress=bar.update, **common)
                rows += seg_rows(t, lambda k: dict(model=label, method="flip x ours", budget=2, views=2,
                                                   aggregate="entropy+mean"), s)
            else:
                bar.update(len(y))
    return rows


def plot_segmentation(rows: list[dict], out_dir: Path) -> Path:
    """``segmentation_miou_vs_cost.png``: clean and shifted mIoU against cost, one colour per model (a line
    through its network and search rows), one marker per method; the legend names every model and marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .._atomic import atomic_write

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    models = list(dict.fromkeys(r["model"] for r in rows))
    markers = {"network": "o", "ours": "s", "TTA flip": "^", "flip x ours": "D"}
    for ax, key, title in ((axes[0], "miou", "clean mIoU (%)"), (axes[1], "miou_shifted", "shifted mIoU (%)")):
        for i, m in enumerate(models):
            mine = [r for r in rows if r["model"] == m and r.get(key) is not None]
            ours = sorted((r for r in mine if r["method"] in ("network", "ours")), key=lambda r: r["cost"])
            ax.plot([r["cost"] for r in ours], [r[key] for r in ours], color=f"C{i}", label=m)
            for r in mine:
                ax.scatter(r["cost"], r[key], color=f"C{i}", marker=markers.get(r["method"], "x"))
        ax.set_xlabel("cost (plain forwards per image)")
        ax.set_title(title)
    from matplotlib.lines import Line2D

    handles, labels = axes[0].get_legend_handles_labels()
    used = [m for m in markers if any(r["method"] == m for r in rows)]
    handles += [Line2D([], [], color="grey", marker=markers[m], linestyle="none") for m in used]
    n = len({r["n"] for r in rows}) == 1 and rows[0].get("n")
    fig.legend(handles, labels + used, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(f"segmentation zoo ({len(models)} models{f', {n} test canvases each' if n else ''})", fontsize=10)
    fig.tight_layout()
    path = Path(out_dir) / "segmentation_miou_vs_cost.png"
    with atomic_write(path) as f:
        fig.savefig(f, dpi=100, format="png", bbox_inches="tight")
    plt.close(fig)
    return path
