"""``undiscard eval --task segmentation --data DIR``: a segmenter on a segmentation folder, across budgets.

``DIR/images/NAME.png`` with ``DIR/masks/NAME.png`` (palette or grayscale PNGs of class indices;
``--ignore-index``, default 255, marks unlabelled pixels). Reports per budget (and aggregation) mIoU,
pixel accuracy, boundary F1 and cost in plain forwards; with ``--shift PIXELS`` also mIoU on seeded
shifted copies (black fill, targets shifted alike) and pixel shift consistency. ``--tta flip``,
``multiscale``, ``flip,multiscale``, ``flip,shift`` (or a list of dense views) adds dense image-space TTA
(views de-augmented, combined by ``--tta-aggregate``: ``mean`` of probabilities as mmseg, ``logits``,
``gmean``, ``max``) around the phase search: each view gets its own search at each ``--budget``.

    python scripts/export_seg_folder.py /tmp/fmnist_seg --limit 200
    undiscard eval --task segmentation --model zoo:seg_fpn --data /tmp/fmnist_seg --budget 1,4 --shift 4
"""
from __future__ import annotations

import argparse
import sys

import torch

from ..data.folder import normalize_batch
from ..data.seg_folder import read_seg_folder, scan_seg_folder
from ..data.shift import shift_images
from ..data.walk import describe_skipped
from ..evaluation._segmentation import (
    run_seg_pairs,
    search_predictions_dense,
    seg_rows,
    tta_predictions,
)
from ..evaluation.report import format_table, stamp, write_csv, write_json
from ..tta import DENSE_AGGREGATES, DenseTTA
from ..wrapper import wrap
from .common import (
    CLIError,
    check_out_dir,
    emit_json,
    parse_aggregates,
    parse_budgets,
    progress_bar,
    resolve_device,
    wrap_options,
)
from .seg_models import load_seg_model

__all__ = ["run_segmentation", "SEG_COLUMNS"]

SEG_COLUMNS = [("model", "model"), ("method", "method"), ("budget", "B"), ("views", "views"),
               ("aggregate", "aggregate"), ("miou", "mIoU"), ("pixel_acc", "pixel acc"),
               ("miou_shifted", "mIoU shifted"), ("consistency", "pixel consistency"),
               ("boundary_f1", "boundary F1"), ("cost", "cost x")]


def run_segmentation(args: argparse.Namespace) -> int:
    """The ``--task segmentation`` branch of ``undiscard eval``."""
    budgets = parse_budgets(args.budget)
    aggregates = parse_aggregates(args.aggregate)
    device = resolve_device(args.device)
    if args.shift < 0:
        raise CLIError(f"--shift must be >= 0, got {args.shift}")
    for flag, value in (("--batch-size", args.batch_size), ("--limit", args.limit)):
        if value is not None and value <= 0:
            raise CLIError(f"{flag} must be positive, got {value}")
    tta_aggregate = getattr(args, "tta_aggregate", "mean")
    if args.tta is not None and tta_aggregate not in DENSE_AGGREGATES:
        raise CLIError(f"--tta-aggregate {tta_aggregate!r} is not a dense aggregate: expected one of "
                       f"{', '.join(DENSE_AGGREGATES)}")
    outputs = check_out_dir(args.out, ["results.json", "results.csv"])
    folder = scan_seg_folder(args.data)
    seg = load_seg_model(args.model, args.weights)
    x01, y, names = read_seg_folder(folder, seg.in_chans, seg.input_size, args.limit)
    if args.shift >= min(x01.shape[-2:]):
        raise CLIError(f"--shift {args.shift} is not smaller than the {min(x01.shape[-2:])}-pixel images")
    net = seg.model.to(device)
    x = normalize_batch(x01, seg.mean, seg.std).to(device)
    with torch.no_grad():
        k = wrap(net, budget=1)(x[:1]).shape[1]
    bad = (y != args.ignore_index) & ((y < 0) | (y >= k))
    if bad.any():
        raise CLIError(f"masks hold labels up to {int(y[y != args.ignore_index].max())} but {seg.name} has {k} "
                       f"classes (pixels of --ignore-index {args.ignore_index} are not counted)")
    xs = offsets = None
    if args.shift:
        shifted01, offsets = shift_images(x01, args.shift, args.seed)
        xs = normalize_batch(shifted01, seg.mean, seg.std).to(device)
    if args.criterion == "calibrated" and args.order is None:
        args.order = seg.order  # a zoo segmenter's shipped order (None: wrap says what is missing)
    model = wrap(net, budget=1, task="segmentation", criterion=args.criterion, aggregate=aggregates[0],
                 align=args.align, seed=args.seed, **wrap_options(args))
    if args.tta is not None:
        if len(aggregates) > 1:
            raise CLIError(f"--tta takes one --aggregate (each view's phase aggregation), got {', '.join(aggregates)}")
        pad = tuple(-m / s for m, s in zip(seg.mean, seg.std)) if len(seg.mean) > 1 else -seg.mean[0] / seg.std[0]
        tta = DenseTTA(model, args.tta, tta_aggregate, size_divisor=seg.size_divisor, pad_value=pad)
        predict, keys = tta_predictions(tta, budgets), list(budgets)

        def describe(b):
            return dict(model=seg.name, method=f"TTA {tta.policy_name}" + (" x ours" if b > 1 else ""), budget=b,
                        views=len(tta.views), aggregate=f"{aggregates[0]}+{tta_aggregate}" if b > 1 else tta_aggregate)
    else:
        predict = search_predictions_dense(model, budgets, aggregates)
        keys = [(b, a) for b in budgets for a in (aggregates if b > 1 else aggregates[:1])]

        def describe(key):
            return dict(model=seg.name, method="ours" if key[0] > 1 else "network", budget=key[0], views=1,
                        aggregate=key[1] if key[0] > 1 else "-")
    quiet = args.quiet
    with progress_bar(len(y), seg.name, enabled=not quiet) as bar:
        tallies, seconds = run_seg_pairs(x, y.to(device), predict, keys, k, ignore_index=args.ignore_index,
                                         shifted=xs, offsets=offsets, batch_size=args.batch_size,
                                         progress=bar.update)
    rows = seg_rows(tallies, describe, seconds)
    payload = {"task": "segmentation", "results": rows, "data": str(args.data), "images": len(names),
               "unmatched": folder.unmatched, "not_read": [{"path": s.path, "reason": s.reason} for s in folder.skipped],
               "ignore_index": args.ignore_index, "shift": args.shift, "seed": args.seed}
    payload = stamp(payload)  # commit, date, version: on stdout as in results.json
    if outputs is not None:  # both files replace the old ones together (undiscard._atomic.OutputSet)
        with outputs as staging:
            write_json(staging / "results.json", payload)
            write_csv(staging / "results.csv", rows)
    if args.json:
        emit_json(payload)
    else:
        print(format_table(rows, SEG_COLUMNS))
    if folder.unmatched:
        print(f"skipped {len(folder.unmatched)} names with an image or a mask but not both", file=sys.stderr)
    if folder.skipped:
        print(f"not read: {describe_skipped(folder.skipped)}", file=sys.stderr)
    return 0
