"""``undiscard eval``: baseline vs. undiscard on your own model and image folder.

``--task classification`` (the default) reads a folder of class folders ``DIR/CLASS/IMAGE`` and reports top-1, top-5 and cost per budget; with ``--shift PIXELS`` also top-1 on seeded randomly shifted
copies (each image translated by an offset with 1 <= max(|dy|, |dx|) <= PIXELS, zero fill, before
normalisation) and shift consistency. Files that are not images are skipped and counted; unreadable
images likewise; entries that are not read at all (hidden names, broken or looping links, FIFOs, files
outside the class folders; links to folders are followed once) are named with their reason. All are
printed and are in the JSON's ``skipped``.

Images are streamed: a ``torch.utils.data.DataLoader`` with ``--workers`` processes reads, preprocesses
and shifts one batch at a time, so memory stays flat in the folder's size.

Labels (the same rule in ``calibrate``, ``train-aggregator`` and ``fit-tta``): ``--class-map`` (a file,
``imagenet`` or ``sorted``), else for a model with 1000 classes the standard ImageNet index of each folder
named by an ImageNet-1k WordNet id (``n01440764``) or class name (``tench``, ``espresso_maker``), said on
stderr and in the JSON; a 1000-class model with folders that are neither is refused (their sorted
positions would silently mean other classes). Other models: the sorted folder names (0, 1, ...). Every
index must be an integer from 0 to the model's classes - 1.


``--aggregate`` may list several aggregations (``mean,entropy,attention``): they are evaluated on the
same searches. ``attention`` and ``--criterion learned`` use ``--aggregator FILE`` (zoo models: the
shipped one). ``--tta POLICY`` adds image-space test-time augmentation around the model: each view gets
its own phase search at each ``--budget``, and cost counts every view.

``--task segmentation`` reads ``DIR/images/NAME.png`` with ``DIR/masks/NAME.png`` (palette or grayscale
PNGs of class indices; ``--ignore-index``, default 255, marks unlabelled pixels). Reports per budget (and
aggregation) mIoU, pixel accuracy, boundary F1 and cost in plain forwards; with ``--shift PIXELS`` also
mIoU on seeded shifted copies (black fill, targets shifted alike) and pixel shift consistency. ``--tta
flip``, ``multiscale``, ``flip,multiscale``, ``flip,shift`` (or a list of dense views) adds dense
image-space TTA (views de-augmented, combined by ``--tta-aggregate``: ``mean`` of probabilities as mmseg,
``logits``, ``gmean``, ``max``) around the phase search: each view gets its own search at each ``--budget``.

    python scripts/export_seg_folder.py /tmp/fmnist_seg --limit 200
    undiscard eval --task segmentation --model zoo:seg_fpn --data /tmp/fmnist_seg --budget 1,4 --shift 4
"""
from __future__ import annotations

import argparse
import sys
from typing import Iterator

import torch

from ..data.folder import normalize_batch, scan_folder
from ..data.labels import folder_labels, output_classes
from ..data.seg_folder import read_seg_folder, scan_seg_folder
from ..data.shift import random_offsets, shift_images
from ..data.walk import describe_skipped
from ..errors import UndiscardError
from ..evaluation import distributed
from ..evaluation.plots import PLOT_FILES, write_plots
from ..evaluation.report import COLUMNS, SEGMENTATION_COLUMNS, format_table, stamp, write_csv, write_json
from ..evaluation.runner import (
    Batch,
    describe_rows,
    evaluate_stream,
    evaluate_tta_stream,
    row_from_counts,
    run_pairs,
    search_predictions,
    tta_predictions,
)
from ..evaluation.summary import family, method_label
from ..search.criteria import CRITERIA
from ..settings import Settings
from ..tta import DENSE_AGGREGATES, TTA
from ..wrapper import wrap
from ._data import DEFAULT_WORKERS, folder_loader
from .common import (
    CLASS_MAP_HELP,
    TASKS,
    CLIError,
    add_model_args,
    add_output_args,
    add_wrap_args,
    aggregator_needers,
    check_out_dir,
    default_search,
    emit_json,
    help_text,
    load_cli_model,
    parse_aggregates,
    parse_budgets,
    progress_bar,
    resolve_device,
    segmentation_input_size,
    wrap_options,
)
from .tta_options import add_tta_args, build_tta


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="evaluate a model on an image folder across budgets", description=help_text(__doc__),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--data", required=True, help="image folder: DIR/CLASS/IMAGE")
    p.add_argument("--class-map", default=None, help=CLASS_MAP_HELP)
    p.add_argument("--budget", default="1,4,8,16", help="comma-separated budgets (default: 1,4,8,16)")
    add_wrap_args(p, "criterion", "order", "extend", "aggregate", "aggregator", "align", "units", "chunk_size",
                  derived=("criterion",),
                  notes={"criterion": "calibrated with --order, or with the model's shipped order (zoo models and "
                                      "EfficientNet-Lite) when neither is given; learned needs an aggregator",
                         "order": "implies --criterion calibrated (zoo and EfficientNet-Lite models: their shipped "
                                  "order when not given)",
                         "aggregate": "or several comma-separated, evaluated on the same searches",
                         "aggregator": "zoo models: the shipped one",
                         "units": "zoo models: their shipped units"})
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", "-j", type=int, default=DEFAULT_WORKERS,
                   help=f"processes reading images (default: {DEFAULT_WORKERS}, as timm's validate.py; "
                        "0 reads in the main process)")
    p.add_argument("--limit", type=int, default=None, help="evaluate a seeded random subset of N images")
    p.add_argument("--shift", type=int, default=0, help="also evaluate copies shifted by up to PIXELS")
    add_wrap_args(p, "seed", notes={"seed": "also of --limit's subset and --shift's offsets"})
    p.add_argument("--task", choices=TASKS, default="classification",
                   help="what the model predicts (default: classification); segmentation: --data holds images/ and "
                        "masks/")
    p.add_argument("--ignore-index", type=int, default=255, help="segmentation: unlabelled mask value (default: 255)")
    add_tta_args(p)
    add_output_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    if args.criterion is None and args.order is not None:
        args.criterion = "calibrated"
    elif args.order is not None and args.criterion != "calibrated":
        raise CLIError(f"--order is the state order of --criterion calibrated, not of --criterion {args.criterion}")
    budgets = parse_budgets(args.budget)
    args.aggregates = parse_aggregates(args.aggregate)
    device = resolve_device(args.device)
    for flag, value in (("--batch-size", args.batch_size), ("--limit", args.limit)):
        if value is not None and value <= 0:
            raise CLIError(f"{flag} must be positive, got {value}")
    if args.shift < 0:
        raise CLIError(f"--shift must be >= 0, got {args.shift}")
    if args.task == "segmentation":
        return _run_segmentation(args, budgets, device)
    if args.criterion is not None and args.criterion not in CRITERIA:
        raise CLIError(f"unknown criterion {args.criterion!r}: expected one of {', '.join(CRITERIA)}")
    if args.workers < 0:
        raise CLIError(f"--workers must be >= 0, got {args.workers}")
    outputs = check_out_dir(args.out, ["results.json", "results.csv", *PLOT_FILES])
    rank, world = distributed.setup(device)
    try:
        code = _run(args, budgets, device, rank, world, outputs)
    except BaseException:
        distributed.teardown(wait=False)
        raise
    distributed.teardown()
    return code


def _run(args: argparse.Namespace, budgets: list[int], device: torch.device, rank: int, world: int,
         outputs) -> int:
    data = scan_folder(args.data)
    loaded = load_cli_model(args)
    pre = loaded.preprocess
    if args.shift >= pre.input_size:
        raise CLIError(f"--shift {args.shift} is not smaller than the {pre.input_size}-pixel input: "
                       "every shifted copy would be blank")
    order = list(range(len(data.paths)))
    if args.limit is not None and args.limit < len(order):
        perm = torch.randperm(len(order), generator=torch.Generator().manual_seed(args.seed)).tolist()
        order = sorted(perm[:args.limit])
    total_images = len(order)
    # shifts are drawn for the whole (global) list, so a sharded run shifts each image as one process would
    all_offsets = random_offsets(total_images, args.shift, args.seed) if args.shift else None
    quiet = args.quiet or rank != 0
    k = output_classes(loaded.model, pre.in_chans, pre.input_size)  # from the output shape, not the pixels
    # the folders' class indices: --class-map, ImageNet ids or names (detected), or sorted positions; checked
    found = folder_labels(data.classes, k, args.class_map, used={data.labels[i] for i in order})
    labels_from = found.source
    labels = [found.index[c] for c in data.labels]
    if found.note and rank == 0:
        print(found.note, file=sys.stderr)
    # torchrun: every world-th image (ShardSampler); one process reads with --workers processes
    loader = folder_loader(data, order, pre, batch_size=args.batch_size, workers=args.workers, offsets=all_offsets,
                           sampler=distributed.ShardSampler(total_images, rank, world), labels=labels,
                           pin_memory=device.type == "cuda")
    unreadable: list[str] = []
    aggregator = args.aggregator or loaded.aggregator
    if args.criterion is None or (args.criterion == "calibrated" and args.order is None):  # the shipped order
        args.criterion = default_search(args.criterion, args.order or loaded.order)["criterion"]
        args.order = args.order or (loaded.order if args.criterion == "calibrated" else None)
    needers = aggregator_needers(args.aggregates, args.criterion)
    if needers and aggregator is None:
        raise CLIError(f"{' / '.join(needers)} need{'s' * (len(needers) == 1)} --aggregator FILE "
                       "(train one with: undiscard train-aggregator)")
    settings = Settings.from_args(args, aggregate=args.aggregates[0], aggregator=aggregator if needers else None,
                                  units=args.units if args.units is not None else loaded.units)
    model = wrap(loaded.model.to(device), budget=1, **settings.as_kwargs())
    shard_size = len(loader.sampler)
    stream = _device_batches(loader, device, unreadable)
    if args.tta is not None:
        if len(args.aggregates) > 1:
            raise CLIError("--tta takes one --aggregate (each view's phase aggregation), got "
                           f"{', '.join(args.aggregates)}")
        tta = build_tta(args, loaded, model, quiet)
        with progress_bar(shard_size, f"{loaded.name} + TTA", enabled=not quiet) as bar:
            rows = evaluate_tta_stream(loaded.name, tta, stream, budgets, progress=bar.update, baseline=True)
    else:
        with progress_bar(shard_size, loaded.name, enabled=not quiet) as bar:
            rows = evaluate_stream(loaded.name, model, stream, budgets,
                                   variants=[(a, args.align) for a in args.aggregates],
                                   progress=bar.update)
    summed = distributed.sum_counts([r.counts or {} for r in rows])
    rows = [row_from_counts(r, c) for r, c in zip(rows, summed)]
    unreadable = distributed.gather_lists(unreadable)
    if not distributed.is_main():
        return 0
    result = [r.as_dict() for r in rows]
    for r in result:  # cost is in every row; family and method say what it compares at that cost
        r["family"], r["method"] = family(r), method_label(r)
    skipped = {"non_image_files": data.skipped_non_image, "unreadable_images": sorted(unreadable),
               "not_read": [{"path": s.path, "reason": s.reason} for s in data.skipped]}
    payload = {"results": result, "data": str(args.data), "labels": labels_from, "images": total_images - len(unreadable),
               "processes": world, "skipped": skipped}
    payload = stamp(payload)  # commit, date, version: on stdout as in results.json
    if outputs is not None:  # every file of the run replaces the old ones together (undiscard._atomic.OutputSet)
        with outputs as staging:
            write_json(staging / "results.json", payload)
            write_csv(staging / "results.csv", result)
            write_plots(result, staging)
    if args.json:
        emit_json(payload)
    else:
        top1 = [k for k, _ in COLUMNS].index("top1")
        cols = COLUMNS[:top1 + 1] + [("top5", "top-5")] + COLUMNS[top1 + 1:]
        print(format_table(result, cols))
    if data.skipped_non_image or unreadable:
        print(f"skipped {data.skipped_non_image} non-image files and {len(unreadable)} unreadable images",
              file=sys.stderr)
    if data.skipped:
        print(f"not read: {describe_skipped(data.skipped)}", file=sys.stderr)
    return 0


def _device_batches(loader, device: torch.device, unreadable: list[str]) -> Iterator[Batch]:
    """The loader's batches on ``device`` as (images, labels, shifted or None); unreadable paths are
    appended to ``unreadable`` and batches with no readable image left out."""
    seen = 0
    for batch in loader:
        unreadable.extend(batch.unreadable)
        seen += len(batch.unreadable) + len(batch.labels)
        if len(batch.labels):
            yield (batch.images.to(device), batch.labels.to(device),
                   None if batch.shifted is None else batch.shifted.to(device))
    if seen == len(unreadable):
        raise UndiscardError(f"none of the {seen} image files given could be read")


SIZE_DIVISOR = 32  # what a segmenter's multi-scale TTA views are padded to


def _run_segmentation(args: argparse.Namespace, budgets: list[int], device: torch.device) -> int:
    """``--task segmentation`` (see the module docstring): the folder is read into memory."""
    aggregates = args.aggregates
    tta_aggregate = getattr(args, "tta_aggregate", "mean")
    if args.tta is not None and tta_aggregate not in DENSE_AGGREGATES:
        raise CLIError(f"--tta-aggregate {tta_aggregate!r} is not a dense aggregate: expected one of "
                       f"{', '.join(DENSE_AGGREGATES)}")
    outputs = check_out_dir(args.out, ["results.json", "results.csv"])
    folder = scan_seg_folder(args.data)
    loaded = load_cli_model(args)
    pre = loaded.preprocess
    x01, y, names = read_seg_folder(folder, pre.in_chans, segmentation_input_size(loaded, args), args.limit)
    if args.shift >= min(x01.shape[-2:]):
        raise CLIError(f"--shift {args.shift} is not smaller than the {min(x01.shape[-2:])}-pixel images")
    net = loaded.model.to(device)
    x = normalize_batch(x01, pre.mean, pre.std).to(device)
    with torch.no_grad():
        k = wrap(net, budget=1)(x[:1]).shape[1]
    bad = (y != args.ignore_index) & ((y < 0) | (y >= k))
    if bad.any():
        raise CLIError(f"masks hold labels up to {int(y[y != args.ignore_index].max())} but {loaded.name} has {k} "
                       f"classes (pixels of --ignore-index {args.ignore_index} are not counted)")
    xs = offsets = None
    if args.shift:
        shifted01, offsets = shift_images(x01, args.shift, args.seed)
        xs = normalize_batch(shifted01, pre.mean, pre.std).to(device)
    if args.criterion is None or (args.criterion == "calibrated" and args.order is None):  # the shipped order
        args.criterion = default_search(args.criterion, args.order or loaded.order)["criterion"]
        args.order = args.order or (loaded.order if args.criterion == "calibrated" else None)
    model = wrap(net, budget=1, task="segmentation", criterion=args.criterion, aggregate=aggregates[0],
                 align=args.align, seed=args.seed, **wrap_options(args))
    if args.tta is not None:
        if len(aggregates) > 1:
            raise CLIError(f"--tta takes one --aggregate (each view's phase aggregation), got {', '.join(aggregates)}")
        pad = tuple(-m / s for m, s in zip(pre.mean, pre.std)) if len(pre.mean) > 1 else -pre.mean[0] / pre.std[0]
        tta = TTA(model, args.tta, tta_aggregate, task="segmentation", size_divisor=SIZE_DIVISOR, pad_value=pad)
        predict, keys = tta_predictions(tta, budgets), list(budgets)

        def describe(b):
            return dict(model=loaded.name, method=f"TTA {tta.policy_name}" + (" x ours" if b > 1 else ""), budget=b,
                        views=len(tta.views), aggregate=f"{aggregates[0]}+{tta_aggregate}" if b > 1 else tta_aggregate)
    else:
        predict = search_predictions(model, budgets, [(a, model.align) for a in aggregates])
        keys = [(b, (a, model.align)) for b in budgets for a in (aggregates if b > 1 else aggregates[:1])]

        def describe(key):
            return dict(model=loaded.name, method="ours" if key[0] > 1 else "network", budget=key[0], views=1,
                        aggregate=key[1][0] if key[0] > 1 else "-")
    quiet = args.quiet
    with progress_bar(len(y), loaded.name, enabled=not quiet) as bar:
        tallies, seconds = run_pairs(x, y.to(device), predict, keys, shifted=xs, offsets=offsets,
                                     batch_size=args.batch_size, tally=lambda: model.task.tally(k, args.ignore_index),
                                     progress=bar.update)
    rows = describe_rows(tallies, describe, seconds)
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
        print(format_table(rows, SEGMENTATION_COLUMNS))
    if folder.unmatched:
        print(f"skipped {len(folder.unmatched)} names with an image or a mask but not both", file=sys.stderr)
    if folder.skipped:
        print(f"not read: {describe_skipped(folder.skipped)}", file=sys.stderr)
    return 0
