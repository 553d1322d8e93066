"""``undiscard eval``: baseline vs. undiscard on your own model and image folder.

Reports top-1, top-5 and cost per budget; with ``--shift PIXELS`` also top-1 on seeded randomly shifted
copies (each image translated by an offset with 1 <= max(|dy|, |dx|) <= PIXELS, zero fill, before
normalisation) and shift consistency. Files that are not images are skipped and counted; unreadable
images likewise (both counts are printed and are in the JSON).

Images are streamed: a ``torch.utils.data.DataLoader`` with ``--workers`` processes reads, preprocesses
and shifts one batch at a time, so memory stays flat in the folder's size.

Labels: the sorted folder names (0, 1, ...), or ``--class-map`` (a file, or ``imagenet``). A folder whose
subfolders are all ImageNet-1k WordNet ids (``n01440764``, ...) evaluated with a 1000-class model is
labelled with the standard ImageNet indices without a map; that is said on stderr and in the JSON.


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

from ..aggregate import AGGREGATES
from ..data.loading import DEFAULT_WORKERS, folder_loader
from ..data.folder import detect_imagenet_classes, load_class_map, scan_folder
from ..data.imagenet import imagenet_class_map, is_wnid
from .. import distributed
from ..data.shift import random_offsets
from ..errors import UndiscardError
from ..evaluation import Batch, evaluate_stream, evaluate_tta_stream, row_from_counts
from ..layers.extension import EXTEND_MODES
from ..outputs import select_output
from ..plots import write_plots
from ..report import COLUMNS, format_table, stamp, write_csv, write_json
from ..summary import family, method_label
from ..search import CRITERIA
from ..wrapper import wrap
from .common import (CLIError, help_text, add_model_args, add_output_args, aggregator_needers, check_out_dir, emit_json,
                     load_cli_model, parse_aggregates, parse_budgets, parse_units, progress_bar, resolve_device,
                     wrap_options)
from .tta_options import add_tta_args, build_tta


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="evaluate a model on an image folder across budgets", description=help_text(__doc__),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--data", required=True, help="image folder: DIR/CLASS/IMAGE")
    p.add_argument("--class-map", default=None,
                   help="folder name -> class index: JSON object, text with one name per line, or 'imagenet' "
                        "(WordNet-id folders n01440764, ... -> standard ImageNet indices; detected by itself "
                        "when every folder is an ImageNet wnid and the model has 1000 classes)")
    p.add_argument("--budget", default="1,4,8,16", help="comma-separated budgets (default: 1,4,8,16)")
    p.add_argument("--criterion", default=None,
                   help=f"one of {', '.join(CRITERIA)} (default: entropy, or calibrated with --order; learned: needs "
                        "an aggregator)")
    p.add_argument("--order", default=None,
                   help="state order file from `undiscard calibrate` (for this model and its units): "
                        "wrap(criterion='calibrated', order=FILE); implies --criterion calibrated (zoo models: "
                        "their shipped order when not given)")
    p.add_argument("--extend", choices=EXTEND_MODES, default=None,
                   help="what phases read past the bottom/right edge: wrap(extend=...) (default: wrap's own)")
    p.add_argument("--aggregate", default="entropy",
                   help=f"one of {', '.join(AGGREGATES)}, or several comma-separated (evaluated on the same searches)")
    p.add_argument("--aggregator", default=None,
                   help="attention aggregator file (undiscard train-aggregator; zoo models: the shipped one)")
    p.add_argument("--align", action=argparse.BooleanOptionalAction, default=True, help="align maps by offset")
    p.add_argument("--units", default=None, help="comma-separated unit names or indices to search")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", "-j", type=int, default=DEFAULT_WORKERS,
                   help=f"processes reading images (default: {DEFAULT_WORKERS}, as timm's validate.py; "
                        "0 reads in the main process)")
    p.add_argument("--limit", type=int, default=None, help="evaluate a seeded random subset of N images")
    p.add_argument("--shift", type=int, default=0, help="also evaluate copies shifted by up to PIXELS")
    p.add_argument("--seed", type=int, default=0)
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
    check_out_dir(args.out)
    rank, world = distributed.setup(device)
    try:
        code = _run(args, budgets, device, rank, world)
    except BaseException:
        distributed.teardown(wait=False)
        raise
    distributed.teardown()
    return code


def _run(args: argparse.Namespace, budgets: list[int], device: torch.device, rank: int, world: int) -> int:
    class_map = load_class_map(args.class_map) if args.class_map else None
    data = scan_folder(args.data, class_map)
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
    with torch.no_grad():  # the class count, from the output shape (independent of the pixels)
        k = select_output(loaded.model(torch.zeros(1, pre.in_chans, pre.input_size, pre.input_size))).shape[-1]
    labels_from = f"class map {args.class_map}" if args.class_map else "sorted folder names"
    labels = list(data.labels)
    imagenet_index = detect_imagenet_classes(data.classes, k) if class_map is None else None
    if imagenet_index is not None:  # WordNet-id folders: the standard ImageNet indices, not sorted positions
        labels = [imagenet_index[c] for c in labels]
        labels_from = "ImageNet WordNet ids (detected)"
        if rank == 0:
            print(f"class folders are ImageNet WordNet ids: labelled with the standard 1000-class indices "
                  f"({len(data.classes)} classes; --class-map FILE overrides)", file=sys.stderr)
    elif class_map is None and rank == 0 and any(is_wnid(c) for c in data.classes):  # say why not detected
        odd = [c for c in data.classes if c not in imagenet_class_map()]
        why = (f"{len(odd)} of them are not ImageNet-1k WordNet ids ({', '.join(odd[:3])}{' ...' * (len(odd) > 3)})"
               if odd else f"the model has {k} classes, not 1000")
        print(f"class folders look like WordNet ids, but {why}: labels are the sorted folder positions "
              "(pass --class-map to choose)", file=sys.stderr)
    top = max(labels[i] for i in order)
    if top >= k:
        raise CLIError(f"labels go up to {top} but the model has {k} classes: "
                       "pass --class-map (or --num-classes with --weights)")
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
    model = wrap(loaded.model.to(device), budget=1, criterion=args.criterion, aggregate=args.aggregates[0],
                 align=args.align, units=parse_units(args.units) if args.units is not None else loaded.units,
                 aggregator=aggregator if needers else None, seed=args.seed, **wrap_options(args))
    shard_size = len(loader.sampler)
    stream = _device_batches(loader, device, unreadable)
    if args.tta is not None:
        if len(args.aggregates) > 1:
            raise CLIError("--tta takes one --aggregate (each view's phase aggregation), got "
                           f"{', '.join(args.aggregates)}")
        tta = build_tta(args, loaded, model, quiet)
        with progress_bar(shard_size, f"{loaded.name} + TTA", enabled=not quiet) as bar:
            rows = evaluate_tta_stream(loaded.name, tta, stream, budgets, progress=bar.update)
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
    skipped = {"non_image_files": data.skipped_non_image, "unreadable_images": sorted(unreadable)}
    payload = {"results": result, "data": str(args.data), "labels": labels_from, "images": total_images - len(unreadable),
               "processes": world, "skipped": skipped}
    payload = stamp(payload)  # commit, date, version: on stdout as in results.json
    if args.out is not None:
        write_json(args.out / "results.json", payload)
        write_csv(args.out / "results.csv", result)
        write_plots(result, args.out)
    if args.json:
        emit_json(payload)
    else:
        top1 = [k for k, _ in COLUMNS].index("top1")
        cols = COLUMNS[:top1 + 1] + [("top5", "top-5")] + COLUMNS[top1 + 1:]
        print(format_table(result, cols))
    if data.skipped_non_image or unreadable:
        print(f"skipped {data.skipped_non_image} non-image files and {len(unreadable)} unreadable images",
              file=sys.stderr)
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
