"""``undiscard eval``: baseline vs. undiscard on your own model and image folder.

Reports top-1, top-5 and cost per budget; with ``--shift PIXELS`` also top-1 on seeded randomly shifted
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
"""
from __future__ import annotations

import argparse
import sys
from typing import Iterator

import torch

from ..data.folder import scan_folder
from ..data.labels import folder_labels, output_classes
from ..data.shift import random_offsets
from ..data.walk import describe_skipped
from ..errors import UndiscardError
from ..evaluation import distributed
from ..evaluation.plots import PLOT_FILES, write_plots
from ..evaluation.report import COLUMNS, format_table, write_csv, write_json
from ..evaluation.runner import (
    Batch,
    evaluate_stream,
    evaluate_tta_stream,
    row_from_counts,
)
from ..evaluation.summary import family, method_label
from ..search.criteria import CRITERIA
from ..settings import Settings
from ..wrapper import wrap
from ._data import DEFAULT_WORKERS, folder_loader
from .common import (
    CLASS_MAP_HELP,
    CLIError,
    add_model_args,
    add_output_args,
    add_wrap_args,
    aggregator_needers,
    check_out_dir,
    emit_json,
    help_text,
    load_cli_model,
    parse_aggregates,
    parse_budgets,
    progress_bar,
    resolve_device,
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
                  notes={"criterion": "calibrated with --order; learned needs an aggregator",
                         "order": "implies --criterion calibrated (zoo models: their shipped order when not given)",
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
    p.add_argument("--task", choices=("classification", "segmentation"), default="classification",
                   help="segmentation: --data holds images/ and masks/ (undiscard.cli.eval_segmentation)")
    p.add_argument("--ignore-index", type=int, default=255, help="segmentation: unlabelled mask value (default: 255)")
    add_tta_args(p)
    add_output_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    if args.criterion is None:
        args.criterion = "calibrated" if args.order is not None else "entropy"
    elif args.order is not None and args.criterion != "calibrated":
        raise CLIError(f"--order is the state order of --criterion calibrated, not of --criterion {args.criterion}")
    if args.task == "segmentation":
        from .eval_segmentation import run_segmentation

        return run_segmentation(args)
    budgets = parse_budgets(args.budget)
    device = resolve_device(args.device)
    if args.criterion not in CRITERIA:
        raise CLIError(f"unknown criterion {args.criterion!r}: expected one of {', '.join(CRITERIA)}")
    args.aggregates = parse_aggregates(args.aggregate)
    for flag, value in (("--batch-size", args.batch_size), ("--limit", args.limit)):
        if value is not None and value <= 0:
            raise CLIError(f"{flag} must be positive, got {value}")
    if args.workers < 0:
        raise CLIError(f"--workers must be >= 0, got {args.workers}")
    if args.shift < 0:
        raise CLIError(f"--shift must be >= 0, got {args.shift}")
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
    needers = aggregator_needers(args.aggregates, args.criterion)
    if needers and aggregator is None:
        raise CLIError(f"{' / '.join(needers)} need{'s' * (len(needers) == 1)} --aggregator FILE "
                       "(train one with: undiscard train-aggregator)")
    if args.criterion == "calibrated" and args.order is None:
        args.order = loaded.order  # a zoo model's shipped order (None: wrap says what is missing)
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
