"""The segmentation measurement: phase search, dense image-space TTA and both, on the segmentation zoo.

    python scripts/seg_measure.py                  # all 2,000 bundled test canvases, every zoo model
    python scripts/seg_measure.py --limit 500      # the first 500 canvases

Per model, on the bundled test canvases and on copies shifted by a seeded offset with
1 <= max(|dy|, |dx|) <= --max-shift px (black fill; the targets shifted alike, ignore where nothing moved
in): mIoU clean / shifted, pixel shift consistency, pixel accuracy, boundary F1, cost in plain forwards:

- ``ours``: ``wrap(net, task="segmentation")``, entropy criterion, budgets 1, 2, 4, 8, aggregated by
  ``entropy`` and ``mean`` (both on the same searches; budget 1 is the network);
- image-space TTA of the plain network (mean of softmax probabilities, as mmseg): ``flip`` (2 views),
  ``multiscale`` (0.75, 1, 1.25; inputs padded with black to multiples of 32, which the FLOP-counted
  cost includes), ``flip,shift`` (identity, hflip, both shifted by 2 px: 4 views), ``flip,multiscale``;
- ``flip x ours``: ``TTA(wrap(net, ..., task="segmentation"), "flip")`` at 2 and 4 states per view (entropy);
- ``--criterion offset``: ours and flip x ours with the offset order instead (its children are chosen
  before they are computed, so B states cost about B forwards); rows named ``ours (offset)``, written
  to ``seg_measure[_N]_offset.*``. ``--criterion calibrated``: each model's shipped order
  (``undiscard/zoo/orders/NAME.json``, ``scripts/calibrate_zoo.py``; ranked by mIoU on validation canvases),
  budget B evaluating its first min(B, stop) states; rows ``ours (calibrated)``.

``--align`` picks the alignment of ``ours`` (default ``lineage``: each state shifted by the phase offsets of
the units that move the output, :mod:`undiscard.tasks._dense_alignment`; ``offset``: the whole offset, as before;
``none``). ``--reuse FILE --skip tta`` takes the TTA rows from an earlier run's JSON on the same canvases
(they do not depend on the search or its alignment).

Seeded, one thread. Writes results/segmentation/seg_measure.json and .md (after every model).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

import undiscard
from undiscard.data import segmentation as segdata
from undiscard.data.shift import shift_images
from undiscard.evaluation.report import format_table, write_json, write_text
from undiscard.evaluation.runner import describe_rows, plain_predictions, run_pairs, search_predictions, tta_predictions
from undiscard.search.orders import zoo_order_path
from undiscard.tasks.segmentation import SegmentationTask
from undiscard.tta import TTA
from undiscard.zoo import segmentation as segzoo

BUDGETS = (1, 2, 4, 8)
AGGREGATES = ("entropy", "mean")
TTA_POLICIES = ("flip", "multiscale", "flip,shift", "flip,multiscale")
FLIP_OURS = (2, 4)
COLUMNS = [("model", "model"), ("method", "method"), ("budget", "B/view"), ("views", "views"),
           ("aggregate", "aggregate"), ("miou", "mIoU"), ("miou_shifted", "mIoU shifted"),
           ("consistency", "pixel consistency"), ("pixel_acc", "pixel acc"), ("boundary_f1", "boundary F1"),
           ("cost", "cost (forwards)"), ("cost_ideal", "cost ideal")]


def measure(name: str, x: torch.Tensor, y: torch.Tensor, xs: torch.Tensor, offsets: torch.Tensor,
            batch_size: int, skip: set[str], align: bool | str = True,
            reused: list[dict] | None = None, criterion: str = "entropy") -> tuple[list[dict], list[str]]:
    """Every row of one zoo model, and notes on what failed."""
    net = segzoo.create_model(name)
    task = SegmentationTask()
    common = dict(shifted=xs, offsets=offsets, batch_size=batch_size,
                  tally=lambda: task.tally(segdata.NUM_CLASSES, segdata.IGNORE_INDEX))
    rows, notes = [], []
    black = -segdata.MEAN / segdata.STD

    def go(predict, keys, describe):
        tallies, seconds = run_pairs(x, y, predict, keys, **common)
        new = describe_rows(tallies, describe, seconds)
        for r in new:
            print(f"  {r['method']:<22} B={r['budget']} {r.get('aggregate', '-'):<8} mIoU {r['miou']:.2f} "
                  f"shifted {r['miou_shifted']:.2f} consistency {r['consistency']:.2f} cost {r['cost']:.2f}",
                  flush=True)
        rows.extend(new)

    order = {"order": zoo_order_path(name)} if criterion == "calibrated" else {}  # the shipped order
    model = undiscard.wrap(net, budget=1, task="segmentation", criterion=criterion, align=align, **order)
    ours = "ours" if criterion == "entropy" else f"ours ({criterion})"
    if "ours" not in skip:
        try:
            variants = [(a, model.align) for a in AGGREGATES]
            model.prepare(x[:1])
            budgets = [b for b in BUDGETS if b <= model.num_states]  # aps searches one unit: 4 states at rate 2
            keys = [(1, variants[0])] + [(b, v) for b in budgets if b > 1 for v in variants]
            go(search_predictions(model, budgets, variants), keys,
               lambda key: dict(model=f"zoo:{name}", method=ours if key[0] > 1 else "network", budget=key[0],
                                views=1, aggregate=key[1][0] if key[0] > 1 else "-"))
        except Exception as err:  # noqa: BLE001 - a measurement script: record what failed and go on
            notes.append(f"zoo:{name} ours: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
            traceback.print_exc()
            go(plain_predictions(net), [1], lambda key: dict(model=f"zoo:{name}", method="network", budget=1,
                                                              views=1, aggregate="-"))
    if "tta" not in skip:
        ttas = {p: TTA(net, p, "mean", task="segmentation", size_divisor=32, pad_value=black) for p in TTA_POLICIES}

        def predict_tta(batch: torch.Tensor) -> dict:
            out = {}
            for p, tta in ttas.items():
                logits = tta(batch)
                out[p] = (logits, tta.last_cost, tta.last_cost_ideal)
            return out

        go(predict_tta, list(TTA_POLICIES), lambda p: dict(model=f"zoo:{name}", method=f"TTA {p}", budget=1,
                                                            views=len(ttas[p].views), aggregate="mean"))
    else:
        rows.extend(r for r in reused or [] if r["model"] == f"zoo:{name}" and r["method"].startswith("TTA "))
    if "flip_ours" not in skip:
        tta = TTA(model, "flip", "mean", task="segmentation")
        try:
            go(tta_predictions(tta, FLIP_OURS), list(FLIP_OURS),
               lambda b: dict(model=f"zoo:{name}", method=f"flip x {ours}", budget=b, views=2,
                              aggregate="entropy+mean"))
        except Exception as err:  # noqa: BLE001
            notes.append(f"zoo:{name} flip x ours: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
            traceback.print_exc()
    return rows, notes


def verdicts(rows: list[dict]) -> list[str]:
    """The two questions of the segmentation measurement, answered from the rows: does the search raise mIoU at B=4, and does
    flip x ours beat every image-space TTA policy that costs no more than it (measured cost)?"""
    out = []
    by = {}
    for r in rows:
        by.setdefault(r["model"], []).append(r)
    for model, rs in by.items():
        get = lambda m, b, a=None: next((r for r in rs if r["method"] == m and r["budget"] == b  # noqa: E731
                                         and (a is None or r["aggregate"] == a)), None)
        base = get("network", 1)
        ours = sorted({r["method"] for r in rs if r["method"].startswith("ours")})
        for method in ours:
            for a in AGGREGATES:
                o = get(method, 4, a)
                if base and o:
                    d = o["miou"] - base["miou"]
                    out.append(f"{model}: {method} B=4 ({a}) mIoU {o['miou']:.2f} vs {base['miou']:.2f} at B=1: "
                               f"{'raises' if d > 0 else 'does not raise'} it ({d:+.2f}; cost {o['cost']:.2f})")
        tta = [r for r in rs if r["method"].startswith("TTA ")]
        flip = get("TTA flip", 1)
        for fo in (r for r in rs if r["method"].startswith("flip x ")):
            cheaper = [r for r in tta if r["cost"] <= fo["cost"] + 1e-9]
            best = max(cheaper, key=lambda r: r["miou"]) if cheaper else None
            text = (f"{model}: {fo['method']} (B={fo['budget']}/view, cost {fo['cost']:.2f}) mIoU {fo['miou']:.2f}"
                    + (f"; flip alone {flip['miou']:.2f} (cost {flip['cost']:.2f})" if flip else ""))
            if best is not None:
                text += (f"; the best TTA costing no more, {best['method']} (cost {best['cost']:.2f}), "
                         f"{best['miou']:.2f}: {'beats' if fo['miou'] > best['miou'] else 'does not beat'} it")
            out.append(text)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="first N test canvases (default: all 2,000)")
    ap.add_argument("--models", default=",".join(segzoo.list_models()))
    ap.add_argument("--max-shift", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: ours, tta, flip_ours")
    ap.add_argument("--align", default="lineage", choices=["lineage", "offset", "none"])
    ap.add_argument("--criterion", default="entropy", help="search order of ours and flip x ours")
    ap.add_argument("--reuse", type=Path, default=None, help="with --skip tta: an earlier JSON to take TTA rows from")
    ap.add_argument("--out", type=Path, default=Path("results/segmentation"))
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                    help="measure nothing: join the rows of runs made in parallel (--models X --out DIR each) "
                         "into --out's files for --criterion")
    args = ap.parse_args()
    if args.merge:
        return merge(args.merge, args.out, args.criterion)
    align = {"lineage": True, "offset": "offset", "none": False}[args.align]
    reused = json.loads(args.reuse.read_text())["rows"] if args.reuse else None
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    images, masks = segdata.load_seg_test()
    if args.limit:
        images, masks = images[:args.limit], masks[:args.limit]
    raw = torch.from_numpy(images).unsqueeze(1)
    shifted, offsets = shift_images(raw, args.max_shift, args.seed)  # uint8, black (0) fill
    x, xs, y = segdata.to_input(raw), segdata.to_input(shifted), torch.from_numpy(masks).long()
    rows, notes = [], []
    settings = {"canvases": len(images), "max_shift": args.max_shift, "seed": args.seed, "budgets": BUDGETS,
                "aggregates": AGGREGATES, "tta": TTA_POLICIES, "flip_x_ours": FLIP_OURS, "threads": 1,
                "align": args.align, "criterion": args.criterion, "tta_rows_from": str(args.reuse) if args.reuse else None,
                "command": "python " + " ".join(sys.argv)}
    t0 = time.time()
    for name in [m.strip().removeprefix("zoo:") for m in args.models.split(",") if m.strip()]:
        print(f"zoo:{name} ({len(images)} canvases)", flush=True)
        r, n = measure(name, x, y, xs, offsets, args.batch_size, set(filter(None, args.skip.split(","))), align,
                       reused, args.criterion)
        rows += r
        notes += n
        write(output_stem(args.out, args.limit, args.criterion), settings, rows, notes, time.time() - t0)
    print("\n".join(verdicts(rows) + notes))
    return 0


def output_stem(out: Path, limit: int | None, criterion: str) -> Path:
    stem = out / ("seg_measure" if not limit else f"seg_measure_{limit}")
    return stem.with_name(f"{stem.name}_{criterion}") if criterion != "entropy" else stem


def write(stem: Path, settings: dict, rows: list[dict], notes: list[str], seconds: float) -> None:
    """``stem``.json (settings, rows, notes, verdicts) and ``stem``.md (the table and the verdicts)."""
    write_json(stem.with_suffix(".json"), {"settings": settings, "rows": rows, "notes": notes,
                                           "verdicts": verdicts(rows), "wall_seconds": seconds})
    table = format_table(rows, COLUMNS, markdown=True)
    commands = settings.get("commands") or [settings["command"]]
    write_text(stem.with_suffix(".md"), f"{settings['canvases']} test canvases, shifts 1-{settings['max_shift']} px, "
               f"seed {settings['seed']}: " + " and ".join(f"`{c}`" for c in commands) + f"\n\n{table}\n\n"
               + "".join(f"- {v}\n" for v in verdicts(rows)) + "".join(f"- failed: {n}\n" for n in notes))


def merge(paths: list[Path], out: Path, criterion: str) -> int:
    """``--merge``: one result from runs over disjoint models with the same settings."""
    runs = [json.loads(p.read_text()) for p in paths]
    first = runs[0]["settings"]
    same = ("canvases", "max_shift", "seed", "align", "criterion")
    if any(any(r["settings"][k] != first[k] for k in same) for r in runs):
        print(f"error: the runs differ in their settings ({', '.join(same)})", file=sys.stderr)
        return 1
    settings = {**first, "commands": [r["settings"]["command"] for r in runs], "merged_from": [str(p) for p in paths],
                "command": "python " + " ".join(sys.argv)}
    rows = [row for r in runs for row in r["rows"]]
    whole = len(segdata.load_seg_test()[1])  # a run over the whole test split has no _N in its name
    write(output_stem(out, first["canvases"] if first["canvases"] != whole else None, criterion), settings, rows,
          [n for r in runs for n in r["notes"]], max(r["wall_seconds"] for r in runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
