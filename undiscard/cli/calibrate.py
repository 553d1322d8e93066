"""``undiscard calibrate``: rank a model's states once on labelled images, for ``criterion="calibrated"``.

Every state of the searched units is evaluated on the labelled images of ``--data`` (never the test set:
for zoo models the held-out validation part of the Fashion-MNIST training split), then states are added
greedily, each time the one that makes the aggregate (``--aggregate``, aligned unless ``--no-align``)
most accurate (:mod:`undiscard.fitting.calibration`). The result is a small JSON file that
``wrap(net, criterion="calibrated", order=FILE)`` uses: budget B evaluates its first B states, and never
more than the order's ``stop``, the shortest greedy prefix that was most accurate (``--no-stop``: no limit).

``--task segmentation`` ranks a segmenter's states by the aggregate's mIoU on a segmentation folder
(``DIR/images`` and ``DIR/masks``, as ``undiscard eval --task segmentation`` reads; ``--limit N``: its
first N pairs); the states' outputs are kept on disk in float16 until ranked (a chunk of images at a time in memory).

    python scripts/export_seg_folder.py /tmp/seg_val --split val --limit 500
    undiscard calibrate --task segmentation --model zoo:seg_fpn --data /tmp/seg_val --out fpn_order.json

Without labels, ``--objective consistency`` (or the smooth ``agreement``, ``kl``) ranks states by how alike the
aggregate's predictions are on pairs of views of the images of ``--data`` (any folder of images, read at any
depth): per image, ``--pairs-per-image`` crops and the same scenes displaced by 1..``--max-shift`` pixels of real
content (:mod:`undiscard.data.pairs`). Its states and views are kept on disk (float16), so memory stays within
about ``--memory-mb`` plus the model, whatever the number of images; the order's meta records the time and
the peak memory.

    undiscard calibrate --model efficientnet-lite0 --objective consistency --data DIR_OF_PHOTOS --out lite0.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..analysis.geometry import num_states
from ..data.folder import normalize_batch
from ..data.seg_folder import read_seg_folder, scan_seg_folder
from ..fitting.calibration import calibrate
from ..fitting.objectives import OBJECTIVES, get_objective
from ..search.orders import save_order
from ..settings import Settings
from ..wrapper import wrap
from .common import (
    TASKS,
    CLIError,
    add_fit_output_args,
    add_labelled_data_args,
    add_model_args,
    add_wrap_args,
    check_out_file,
    emit_json,
    load_cli_model,
    load_labelled,
    progress_bar,
    resolve_device,
    segmentation_input_size,
    set_threads,
)

DEFAULT_GREEDY = 16


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("calibrate", help="rank states on labelled images (criterion='calibrated')",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_labelled_data_args(p, "labelled images (--task segmentation: a folder DIR/images, DIR/masks)")
    p.add_argument("--task", choices=TASKS, default="classification",
                   help="what the model predicts (default: classification)")
    p.add_argument("--ignore-index", type=int, default=255, help="segmentation: unlabelled mask value (default: 255)")
    p.add_argument("--out", type=Path, required=True, help="state order file to write (JSON; a missing "
                                                           "directory is created)")
    add_wrap_args(p, "aggregate", "align", notes={"aggregate": "the one the order is ranked for",
                                                  "align": "--no-align ranks for unaligned aggregation"})
    p.add_argument("--greedy", type=int, default=DEFAULT_GREEDY,
                   help=f"greedy steps; later states follow by their own accuracy (default: {DEFAULT_GREEDY})")
    p.add_argument("--stop", action=argparse.BooleanOptionalAction, default=True,
                   help="limit searches to the most accurate greedy prefix (default: on)")
    add_wrap_args(p, "aggregator", "units", notes={"aggregator": "for --aggregate attention (zoo models: the "
                                                                 "shipped one when not given)"})
    p.add_argument("--batch-size", type=int, default=None, help="images per search (default: 256; segmentation 16)")
    p.add_argument("--limit", type=int, default=None,
                   help="use a seeded random subset of N labelled images (segmentation: the folder's first N pairs; "
                        "label-free: its first N images)")
    p.add_argument("--objective", choices=OBJECTIVES, default="accuracy",
                   help="what the order maximises: accuracy (labelled --data, the default), or without labels "
                        "consistency, agreement, kl (on pairs of views of the images of --data)")
    p.add_argument("--pairs-per-image", type=int, default=4, help="label-free: pairs of views per image (default: 4)")
    p.add_argument("--max-shift", type=int, default=16, help="label-free: largest displacement in pixels (default: 16)")
    p.add_argument("--memory-mb", type=float, default=1024,
                   help="working memory for the states, besides the model (default: 1024)")
    add_wrap_args(p, "seed", notes={"seed": "also of --limit's subset and of the label-free pairs"})
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_fit_output_args(p)  # --json, --device, --quiet
    return p




def _classification_inputs(args: argparse.Namespace, device: torch.device):
    """(model name, network, units, normalised images, labels, data described, shipped aggregator)."""
    loaded = load_cli_model(args)
    x01, y, described = load_labelled(args, loaded, args.quiet)
    pre = loaded.preprocess
    units = args.units if args.units is not None else loaded.units
    return loaded.name, loaded.model, units, normalize_batch(x01, pre.mean, pre.std).to(device), y, described, \
        loaded.aggregator


def _segmentation_inputs(args: argparse.Namespace, device: torch.device):
    """As :func:`_classification_inputs`, from a segmentation folder; ``--ignore-index`` pixels become -1
    (the segmentation score counts only labels that are classes)."""
    folder = scan_seg_folder(args.data)
    loaded = load_cli_model(args)
    pre = loaded.preprocess
    x01, y, names = read_seg_folder(folder, pre.in_chans, segmentation_input_size(loaded, args), args.limit)
    y = torch.where(y == args.ignore_index, -1, y)
    units = args.units if args.units is not None else loaded.units
    return loaded.name, loaded.model, units, normalize_batch(x01, pre.mean, pre.std).to(device), y, \
        f"{args.data} ({len(names)} image/mask pairs)", None


def _unlabelled_inputs(args: argparse.Namespace, directory: str):
    """(model name, network, units, views, displaced views, data described, shipped aggregator) for a label-free
    objective: pairs cut from the images of ``--data`` (``--limit``: its first N), kept on disk in ``directory``."""
    from ..data.pairs import folder_pairs, image_files

    if args.pairs_per_image < 1 or args.max_shift < 1:
        raise CLIError("--pairs-per-image and --max-shift must be positive")
    loaded = load_cli_model(args)
    files = image_files(args.data)[:args.limit]
    a, b = folder_pairs(files, loaded.preprocess, args.pairs_per_image, args.max_shift, args.seed, directory)
    units = args.units if args.units is not None else loaded.units
    return loaded.name, loaded.model, units, a, b, (f"{args.data} ({len(files)} unlabelled images, "
                                                     f"{len(a)} pairs displaced by 1-{args.max_shift} px)"), \
        loaded.aggregator


def run(args: argparse.Namespace) -> int:
    if not get_objective(args.objective).needs_labels:
        if args.task == "segmentation":
            raise CLIError(f"--objective {args.objective} is for classifiers; segmentation calibrates with labels")
        with tempfile.TemporaryDirectory(prefix="undiscard-views-") as directory:
            return _run(args, directory)
    return _run(args, None)


def _run(args: argparse.Namespace, directory: str | None) -> int:
    segmentation = args.task == "segmentation"
    label_free = directory is not None
    if args.batch_size is None:
        args.batch_size = 16 if segmentation else 256
    for flag in ("batch_size",):
        if getattr(args, flag) <= 0:
            raise CLIError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.greedy < 0:
        raise CLIError(f"--greedy must be >= 0, got {args.greedy}")
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be positive, got {args.limit}")
    set_threads(args.threads)
    device = resolve_device(args.device)
    outputs, _ = check_out_file(args.out, "order.json", log=False)  # a link or a directory there: refused now
    if label_free:
        name, net, units, x, shifted, described, shipped = _unlabelled_inputs(args, directory)
        y = None
    else:
        name, net, units, x, y, described, shipped = (_segmentation_inputs if segmentation
                                                      else _classification_inputs)(args, device)
        shifted = None
    aggregator = (args.aggregator or shipped) if args.aggregate == "attention" else None
    if args.aggregate == "attention" and aggregator is None:
        raise CLIError("--aggregate attention needs --aggregator FILE (train one with: undiscard train-aggregator)")
    settings = Settings.from_args(args, units=units, aggregator=aggregator,
                                  task="segmentation" if segmentation else None)
    model = wrap(net.to(device), budget=1, **settings.as_kwargs())
    states = num_states(model.prepare(x[:1].to(device)).search_units)
    t0 = time.perf_counter()
    meta = {"model": name, "data": described, "seed": args.seed, "limit": args.limit,
            "torch": str(torch.__version__)}
    if label_free:
        meta.update({"pairs_per_image": args.pairs_per_image, "max_shift": args.max_shift})
    rows = 2 * len(x) if label_free else len(y)
    with progress_bar(rows + min(args.greedy, states - 1), f"{name} calibrate", enabled=not args.quiet) as bar:
        order = calibrate(model, x, None if y is None else y.to(device), greedy=args.greedy,
                          batch_size=args.batch_size, progress=bar.update, meta=meta, stop=args.stop,
                          dtype=torch.float16 if segmentation or label_free else None, objective=args.objective,
                          shifted=shifted, memory_mb=args.memory_mb, workdir=directory)
    order.meta["seconds"] = time.perf_counter() - t0
    with outputs as staging:  # written under a new name and renamed: never through a link, never colliding
        save_order(order, staging / args.out.name)
    summary = {"model": name, "task": args.task, "out": str(args.out), "units": order.units,
               "states": [list(s) for s in order.states[:min(len(order.states), args.greedy + 1)]],
               "stop": order.stop, "greedy_accuracy": order.meta["greedy_accuracy"], "images": order.meta["images"],
               "seconds": order.meta["seconds"], "objective": args.objective,
               "peak_rss_mb": order.meta["peak_rss_mb"]}
    if args.json:
        emit_json(summary)
    else:
        metric = "mIoU" if segmentation else ("top-1" if not label_free else args.objective)
        for b, (s, acc) in enumerate(zip(order.states, order.meta["greedy_accuracy"]), 1):
            print(f"budget {b:2d}: + state {list(s)}  aggregate {metric} {100 * acc:.2f}")
        if order.stop is not None:
            print(f"searches stop after {order.stop} state{'s' * (order.stop > 1)} (the best prefix)")
        print(f"wrote {args.out} ({summary['seconds']:.0f} s, peak memory {summary['peak_rss_mb']:.0f} MB)",
              file=sys.stderr)
    return 0
