"""``undiscard eval``: baseline vs. undiscard on your own model and image folder.

Reports top-1, top-5 and cost per budget; with ``--shift PIXELS`` also top-1 on seeded randomly shifted
copies (each image translated by an offset with 1 <= max(|dy|, |dx|) <= PIXELS, zero fill, before
normalisation) and shift consistency. Files that are not images are skipped and counted; unreadable
images likewise (both counts are printed and are in the JSON).
"""
from __future__ import annotations

import argparse
import sys

import torch

from ..aggregate import AGGREGATES
from ..data.folder import load_class_map, load_image, normalize_batch, scan_folder
from ..data.shift import random_offsets, shift_images
from .. import distributed
from ..evaluation import evaluate, row_from_counts
from ..report import COLUMNS, format_table, plot_budgets, write_csv, write_json
from ..search import CRITERIA
from .common import (CLIError, add_model_args, add_output_args, emit_json, load_cli_model, parse_budgets,
                     progress_bar, resolve_device)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="evaluate a model on an image folder across budgets", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--data", required=True, help="image folder: DIR/CLASS/IMAGE")
    p.add_argument("--class-map", default=None,
                   help="folder name -> class index: JSON object, or text with one name per line")
    p.add_argument("--budget", default="1,4,8,16", help="comma-separated budgets (default: 1,4,8,16)")
    p.add_argument("--criterion", default="entropy", help=f"one of {', '.join(c for c in CRITERIA if c != 'learned')}")
    p.add_argument("--aggregate", default="entropy", help="mean or entropy")
    p.add_argument("--align", action=argparse.BooleanOptionalAction, default=True, help="align maps by offset")
    p.add_argument("--units", default=None, help="comma-separated unit names or indices to search")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="evaluate a seeded random subset of N images")
    p.add_argument("--shift", type=int, default=0, help="also evaluate copies shifted by up to PIXELS")
    p.add_argument("--seed", type=int, default=0)
    add_output_args(p)
    return p


def _units(text: str | None):
    if text is None:
        return None
    return [int(u) if u.strip().lstrip("-").isdigit() else u.strip() for u in text.split(",") if u.strip()]


def run(args: argparse.Namespace) -> int:
    budgets = parse_budgets(args.budget)
    device = resolve_device(args.device)
    if args.criterion not in CRITERIA or args.criterion == "learned":
        raise CLIError(f"unknown criterion {args.criterion!r}: expected entropy, random or offset")
    if args.aggregate not in AGGREGATES or args.aggregate == "attention":
        raise CLIError(f"unknown aggregate {args.aggregate!r}: expected mean or entropy")
    for flag, value in (("--batch-size", args.batch_size), ("--limit", args.limit)):
        if value is not None and value <= 0:
            raise CLIError(f"{flag} must be positive, got {value}")
    if args.shift < 0:
        raise CLIError(f"--shift must be >= 0, got {args.shift}")
    rank, world = distributed.setup(device)
    try:
        return _run(args, budgets, device, rank, world)
    finally:
        distributed.teardown()


def _run(args: argparse.Namespace, budgets: list[int], device: torch.device, rank: int, world: int) -> int:
    class_map = load_class_map(args.class_map) if args.class_map else None
    data = scan_folder(args.data, class_map)
    loaded = load_cli_model(args)
    pre = loaded.preprocess
    order = list(range(len(data.paths)))
    if args.limit is not None and args.limit < len(order):
        perm = torch.randperm(len(order), generator=torch.Generator().manual_seed(args.seed)).tolist()
        order = sorted(perm[:args.limit])
    total_images = len(order)
    positions = distributed.shard(list(range(total_images)), rank, world)  # torchrun: every world-th image
    order = [order[p] for p in positions]
    # shifts are drawn for the whole (global) list, so a sharded run shifts each image as one process would
    all_offsets = random_offsets(total_images, args.shift, args.seed) if args.shift else None
    images, labels, kept = [], [], []
    quiet = args.quiet or rank != 0
    with progress_bar(len(order), "loading", enabled=not quiet) as bar:
        for p, i in zip(positions, order):
            try:
                images.append(load_image(data.paths[i], pre.in_chans, pre.input_size, pre.crop_pct, pre.pad_to))
                labels.append(data.labels[i])
                kept.append(p)
            except (OSError, ValueError):
                data.skipped_unreadable.append(str(data.paths[i]))
            bar.update(1)
    if not images:
        raise CLIError(f"none of the {len(order)} image files in {args.data} (this process's share) could be read")
    x01 = torch.stack(images)
    y = torch.tensor(labels)
    with torch.no_grad():
        k = loaded.model(normalize_batch(x01[:1], pre.mean, pre.std)).shape[-1]
    if int(y.max()) >= k:
        raise CLIError(f"labels go up to {int(y.max())} but the model has {k} classes: "
                       "pass --class-map (or --num-classes with --weights)")
    x = normalize_batch(x01, pre.mean, pre.std).to(device)
    xs = None
    if all_offsets is not None:
        shifted01, _ = shift_images(x01, args.shift, args.seed, offsets=all_offsets[kept])
        xs = normalize_batch(shifted01, pre.mean, pre.std).to(device)
    with progress_bar(len(y) * len(budgets), loaded.name, enabled=not quiet) as bar:
        rows = evaluate(loaded.name, loaded.model.to(device), x, y.to(device), budgets, shifted=xs,
                        criterion=args.criterion, aggregate=args.aggregate, align=args.align,
                        units=_units(args.units), batch_size=args.batch_size, progress=bar.update)
    summed = distributed.sum_counts([r.counts or {} for r in rows])
    rows = [row_from_counts(r, c) for r, c in zip(rows, summed)]
    unreadable = distributed.gather_lists(data.skipped_unreadable)
    if not distributed.is_main():
        return 0
    result = [r.as_dict() for r in rows]
    skipped = {"non_image_files": data.skipped_non_image, "unreadable_images": sorted(unreadable)}
    payload = {"results": result, "data": str(args.data), "images": total_images - len(unreadable),
               "processes": world, "skipped": skipped}
    if args.out is not None:
        write_json(args.out / "results.json", payload)
        write_csv(args.out / "results.csv", result)
        plot_budgets(result, args.out)
    if args.json:
        emit_json(payload)
    else:
        cols = COLUMNS[:2] + [("top1", "top-1"), ("top5", "top-5")] + COLUMNS[3:]
        print(format_table(result, cols))
    if data.skipped_non_image or unreadable:
        print(f"skipped {data.skipped_non_image} non-image files and {len(unreadable)} unreadable images",
              file=sys.stderr)
    return 0
