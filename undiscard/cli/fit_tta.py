"""``undiscard fit-tta``: fit a learned TTA aggregator (gps, classtta, augtta) on labelled images.

Logits of every view of ``--policy`` are computed once on ``--data`` (never the test set; for zoo
models a Fashion-MNIST idx directory means its held-out validation part), with ``--budget`` phase states
per view (1 = the plain model; more = the combination with the phase search), and the aggregator is
fitted on them. The file it writes is what ``undiscard eval --tta POLICY --tta-file FILE`` loads.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ..data.folder import normalize_batch
from ..evaluation.report import write_json
from ..tta import FITTED, TTA
from ..wrapper import wrap
from .common import (
    CLASS_MAP_HELP,
    CLIError,
    add_fit_output_args,
    add_model_args,
    add_wrap_args,
    check_out_file,
    emit_json,
    load_cli_model,
    load_labelled,
    progress_bar,
    resolve_device,
)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("fit-tta", help="fit a learned TTA aggregator (gps, classtta, augtta)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--data", required=True, help="labelled images: an idx directory (zoo) or DIR/CLASS/IMAGE")
    p.add_argument("--class-map", default=None, help=CLASS_MAP_HELP)
    p.add_argument("--policy", default="standard", help="flip, standard, expanded, or comma-separated views")
    p.add_argument("--aggregate", default="gps", help=f"one of {', '.join(FITTED)} (default: gps)")
    p.add_argument("--tta-budget", type=int, default=None, help="views to use (gps: greedy steps); default all")
    p.add_argument("--budget", type=int, default=1, help="phase states per view (default: 1, the plain model)")
    add_wrap_args(p, "units")
    p.add_argument("--limit", type=int, default=None, help="use a seeded random subset of N images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True,
                   help="file to write (.pt; a missing directory is created); FILE.json gets the log")
    add_fit_output_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    if args.aggregate not in FITTED:
        raise CLIError(f"--aggregate must be one of {', '.join(FITTED)} (mean and max need no fitting), "
                       f"got {args.aggregate!r}")
    for flag, value in (("--budget", args.budget), ("--tta-budget", args.tta_budget), ("--limit", args.limit)):
        if value is not None and value <= 0:
            raise CLIError(f"{flag} must be positive, got {value}")
    device = resolve_device(args.device)
    outputs, log_path = check_out_file(args.out, "gps.pt")
    loaded = load_cli_model(args)
    x01, y, described = load_labelled(args, loaded, args.quiet)
    pre = loaded.preprocess
    x, y = normalize_batch(x01, pre.mean, pre.std).to(device), y.to(device)
    net = loaded.model.to(device)
    model = net if args.budget == 1 else wrap(net, budget=args.budget,
                                              units=args.units if args.units is not None else loaded.units)
    t0 = time.perf_counter()
    tta = TTA(model, args.policy, args.aggregate, budget=args.tta_budget)
    mean = TTA(model, args.policy, "mean", budget=len(tta.policy))
    with progress_bar(len(y), f"{loaded.name} views", enabled=not args.quiet) as bar, torch.no_grad():
        logits = []
        for s in range(0, len(y), 256):
            logits.append(tta.view_logits(x[s:s + 256], tta.policy))
            bar.update(len(y[s:s + 256]))
        logits = torch.cat(logits)
    with torch.enable_grad():
        tta.aggregator.fit(logits, y)
    with torch.no_grad():
        fitted_acc = float((tta.aggregator(logits[:, tta.aggregator.views()]).argmax(-1) == y).float().mean()) * 100
        mean_acc = float((mean.aggregator(logits).argmax(-1) == y).float().mean()) * 100
    log = {"model": loaded.name, "policy": args.policy, "views": [v.name for v in tta.policy],
           "aggregate": args.aggregate, "views_used": [v.name for v in tta.views], "budget": args.budget,
           "data": described, "images": len(y), "seconds": time.perf_counter() - t0,
           "fit_top1": fitted_acc, "fit_top1_mean_of_all_views": mean_acc}
    with outputs as staging:  # the aggregator and its log replace the old ones together
        tta.save(staging / args.out.name, meta=log)
        write_json(staging / log_path.name, log, indent=1)
    if args.json:
        emit_json(log)
    else:
        print(f"{args.aggregate} on {len(tta.views)} of {len(tta.policy)} views ({', '.join(log['views_used'])}): "
              f"top-1 on the fitting data {fitted_acc:.2f} (mean of all views: {mean_acc:.2f})")
        print(f"wrote {args.out} and {log_path}", file=sys.stderr)
    return 0
