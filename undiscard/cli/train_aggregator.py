"""``undiscard train-aggregator``: train the attention aggregator of a model, backbone frozen.

The labelled images of ``--data`` (never the test set) are split (seeded) into a training part and a
validation part (``--val-fraction``); the aggregator trains on the first with the random-times-learned
criterion at ``--budget`` states per image (capped at the searched units' state count), and every epoch
reports validation top-1 of mean / entropy / attention aggregation at that budget. The result is a file
that ``wrap(..., aggregate="attention", aggregator=FILE)``, ``undiscard eval`` and ``undiscard demo``
load, plus ``FILE.json`` with the settings and the history.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

from ..data.folder import normalize_batch
from ..evaluation.report import write_json
from ..fitting.aggregator import TrainConfig, train_aggregator
from ..settings import Settings
from ..tasks.attention import save_aggregator
from ..wrapper import wrap
from .common import (
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
    set_threads,
)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train-aggregator", help="train the attention aggregator (backbone frozen)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_labelled_data_args(p, "labelled training images")
    p.add_argument("--out", type=Path, required=True,
                   help="aggregator file to write (.pt; a missing directory is created); FILE.json gets the log")
    d = TrainConfig()
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"default: {d.epochs}")
    p.add_argument("--budget", type=int, default=d.budget, help=f"states per image while training (default: {d.budget})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW learning rate (default: {d.lr})")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--limit", type=int, default=None, help="use a seeded random subset of N labelled images")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share held out for validation (default: 0.2)")
    add_wrap_args(p, "units", "align", notes={"align": "--no-align trains without offset alignment"})
    p.add_argument("--rank-weight", type=float, default=d.rank_weight,
                   help="weight of the listwise loss that teaches criterion='learned' to rank states "
                        f"(default: {d.rank_weight}; results/rank: no gain measured on zoo:resnet_basic)")
    p.add_argument("--rank-temperature", type=float, default=d.rank_temperature,
                   help=f"temperature of the ranking target softmax(-per-state CE / T) (default: {d.rank_temperature})")
    add_wrap_args(p, "seed", notes={"seed": "also of the validation split and of training"})
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_fit_output_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    for flag in ("epochs", "budget", "batch_size"):
        if getattr(args, flag) <= 0:
            raise CLIError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.limit is not None and args.limit <= 1:
        raise CLIError(f"--limit must be at least 2, got {args.limit}")
    if not 0 <= args.val_fraction < 1:
        raise CLIError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.lr <= 0:
        raise CLIError(f"--lr must be positive, got {args.lr}")
    if args.rank_weight < 0 or args.rank_temperature <= 0:
        raise CLIError(f"--rank-weight must be >= 0 and --rank-temperature > 0, got {args.rank_weight}, "
                       f"{args.rank_temperature}")
    set_threads(args.threads)
    device = resolve_device(args.device)
    outputs, log_path = check_out_file(args.out)
    loaded = load_cli_model(args)
    x01, y, described = load_labelled(args, loaded, args.quiet)
    pre = loaded.preprocess
    x = normalize_batch(x01, pre.mean, pre.std).to(device)
    y = y.to(device)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed)).to(device)
    n_val = int(round(len(y) * args.val_fraction))
    tr, va = perm[n_val:], perm[:n_val]
    if len(tr) == 0:
        raise CLIError("no training images left after the validation split")
    units = args.units if args.units is not None else loaded.units
    model = wrap(loaded.model.to(device), budget=1,
                 **Settings.from_args(args, aggregate="attention", units=units).as_kwargs())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "untrained aggregator": that is the point here
        model.prepare(x[:1])
    config = TrainConfig(epochs=args.epochs, budget=args.budget, lr=args.lr, batch_size=args.batch_size,
                         seed=args.seed, rank_weight=args.rank_weight, rank_temperature=args.rank_temperature)
    budget = min(args.budget, model.num_states)
    if budget < args.budget and not args.quiet:
        print(f"undiscard train-aggregator: budget {args.budget} capped at the {model.num_states} states of the "
              f"searched units", file=sys.stderr)
    t0 = time.perf_counter()
    with progress_bar(len(tr) * args.epochs, f"{loaded.name} aggregator", enabled=not args.quiet) as bar:
        def progress(n: int, stats: dict) -> None:
            bar.update(n)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(epoch=stats["epoch"], loss=f"{stats['loss']:.3f}")

        result = train_aggregator(model, x[tr], y[tr], config, val=(x[va], y[va]) if n_val else None,
                                  progress=progress)
    assert model.aggregator is not None
    log = {"model": loaded.name, "units": [u.name for u in model.search_units], "align": args.align,
           "data": described, "train_images": len(tr), "val_images": n_val, "budget": result.budget,
           "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
           "rank_weight": args.rank_weight, "rank_temperature": args.rank_temperature, "extend": model.extend,
           "threads": torch.get_num_threads(), "seconds": time.perf_counter() - t0,
           "torch": str(torch.__version__), "history": result.history}
    with outputs as staging:  # the aggregator and its log replace the old ones together
        save_aggregator(staging / args.out.name, model.aggregator, model=loaded.name, units=log["units"],
                        align=args.align, meta=log)
        write_json(staging / log_path.name, log, indent=1)
    if args.json:
        emit_json(log)
    else:
        for h in result.history:
            val = h.get("val", {})
            shown = ", ".join(f"{k} {v:.2f}" for k, v in val.items())
            print(f"epoch {h['epoch']}: loss {h['train_loss']:.4f}  val top-1 at budget {result.budget}: {shown}")
        print(f"wrote {args.out} and {log_path} ({log['seconds']:.0f} s)", file=sys.stderr)
    return 0
