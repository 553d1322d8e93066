"""``undiscard calibrate``: rank a model's states once on labelled images, for ``criterion="calibrated"``.

Every state of the searched units is evaluated on the labelled images of ``--data`` (never the test set:
for zoo models the held-out validation part of the Fashion-MNIST training split), then states are added
greedily, each time the one that makes the aggregate (``--aggregate``, aligned unless ``--no-align``)
most accurate (:mod:`undiscard.calibration`). The result is a small JSON file that
``wrap(net, criterion="calibrated", order=FILE)`` uses: budget B evaluates its first B states, and never
more than the order's ``stop``, the shortest greedy prefix that was most accurate (``--no-stop``: no limit).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ..calibration import calibrate, save_order
from ..data.folder import normalize_batch
from ..geometry import num_states
from ..report import check_writable_dir
from ..wrapper import wrap
from .common import (CLIError, add_fit_output_args, add_labelled_data_args, add_model_args, emit_json,
                     load_cli_model, load_labelled, parse_units, progress_bar, resolve_device, set_threads)

DEFAULT_GREEDY = 16


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("calibrate", help="rank states on labelled images (criterion='calibrated')",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_labelled_data_args(p, "labelled images")
    p.add_argument("--out", type=Path, required=True, help="state order file to write (JSON; a missing "
                                                           "directory is created)")
    p.add_argument("--aggregate", default="entropy", help="aggregation the order is ranked for (default: entropy)")
    p.add_argument("--no-align", dest="align", action="store_false", help="rank for unaligned aggregation")
    p.add_argument("--greedy", type=int, default=DEFAULT_GREEDY,
                   help=f"greedy steps; later states follow by their own accuracy (default: {DEFAULT_GREEDY})")
    p.add_argument("--stop", action=argparse.BooleanOptionalAction, default=True,
                   help="limit searches to the most accurate greedy prefix (default: on)")
    p.add_argument("--aggregator", default=None, help="attention aggregator file for --aggregate attention "
                                                       "(default: a zoo model's shipped one)")
    p.add_argument("--units", default=None, help="comma-separated unit names or indices (default: the model's)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="use a seeded random subset of N labelled images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_fit_output_args(p)  # --json, --device, --quiet
    return p


def _check_out(path: Path) -> None:
    if path.is_dir():
        raise CLIError(f"--out {path} is a directory: give a file name, e.g. {path / 'order.json'}")
    check_writable_dir(path.parent)


def run(args: argparse.Namespace) -> int:
    for flag in ("batch_size",):
        if getattr(args, flag) <= 0:
            raise CLIError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.greedy < 0:
        raise CLIError(f"--greedy must be >= 0, got {args.greedy}")
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be positive, got {args.limit}")
    set_threads(args.threads)
    device = resolve_device(args.device)
    _check_out(args.out)
    loaded = load_cli_model(args)
    x01, y, described = load_labelled(args, loaded, args.quiet)
    pre = loaded.preprocess
    x = normalize_batch(x01, pre.mean, pre.std).to(device)
    units = parse_units(args.units) if args.units is not None else loaded.units
    aggregator = (args.aggregator or loaded.aggregator) if args.aggregate == "attention" else None
    if args.aggregate == "attention" and aggregator is None:
        raise CLIError("--aggregate attention needs --aggregator FILE (train one with: undiscard train-aggregator)")
    model = wrap(loaded.model.to(device), budget=1, aggregate=args.aggregate, align=args.align, units=units,
                 aggregator=aggregator, seed=args.seed)
    states = num_states(model.prepare(x[:1]).search_units)
    t0 = time.perf_counter()
    meta = {"model": loaded.name, "data": described, "seed": args.seed, "limit": args.limit,
            "torch": str(torch.__version__)}
    with progress_bar(len(y) + min(args.greedy, states - 1), f"{loaded.name} calibrate",
                      enabled=not args.quiet) as bar:
        order = calibrate(model, x, y.to(device), greedy=args.greedy, batch_size=args.batch_size,
                          progress=bar.update, meta=meta, stop=args.stop)
    order.meta["seconds"] = time.perf_counter() - t0
    save_order(order, args.out)
    summary = {"model": loaded.name, "out": str(args.out), "units": order.units,
               "states": [list(s) for s in order.states[:min(len(order.states), args.greedy + 1)]],
               "stop": order.stop, "greedy_accuracy": order.meta["greedy_accuracy"], "images": order.meta["images"],
               "seconds": order.meta["seconds"]}
    if args.json:
        emit_json(summary)
    else:
        for b, (s, acc) in enumerate(zip(order.states, order.meta["greedy_accuracy"]), 1):
            print(f"budget {b:2d}: + state {list(s)}  aggregate top-1 {100 * acc:.2f}")
        if order.stop is not None:
            print(f"searches stop after {order.stop} state{'s' * (order.stop > 1)} (the most accurate prefix)")
        print(f"wrote {args.out} ({summary['seconds']:.0f} s)", file=sys.stderr)
    return 0
