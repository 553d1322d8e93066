"""Which prior ranks best, and is entropy worth having at equal cost? Every criterion at budgets 1, 2, 4, 8.

Part 1, the zoo's classifiers (their default units, all of rate 2), first ``--limit`` images of the bundled
Fashion-MNIST test set: clean top-1, top-1 on copies shifted by 1-4 px (seed 0), consistency (same top-1
for the image and its shifted copy) and the measured cost (``last_cost``, in plain forwards), entropy
aggregation, for

- ``entropy``: the lazy search (pops the most confident evaluated state, evaluates its next successor in
  prior order), prior ``grid`` (coarse to fine; on rate-2 units the order of offsets, so ``entropy`` with an
  offset prior is the same search);
- ``entropy+calibrated prior``: the same search trying successors in the order of the model's shipped
  calibrated ranking (unranked states last);
- ``offset``, ``grid`` (static: the same order for every image; identical to each other on rate-2 units),
  ``random`` (static, seed 0), ``calibrated`` (the shipped order).

Part 2, units of rate 4 (where ``grid`` and ``offset`` differ): ``zoo:pvtv2`` searching its stage-0
spatial-reduction conv (a side unit of rate 4) and ``zoo:seg_segformer`` searching its first patch
embedding (rate 4; mIoU on the first ``--seg-limit`` bundled test canvases, shifted by 1-4 px). With one
searched unit the lazy search's root keeps every successor, so ``entropy`` is its prior order; *refine*
(simulated from a search of all 16 states: after the half-rate phases, the quarter-rate ones nearest the
best-scored (lowest-entropy) state evaluated so far first) is the one way outputs could steer it.

    python scripts/compare_priors.py --limit 2000 --seg-limit 500 --out results/priors/compare_priors

Writes OUT.json and OUT.md (command, date and commit inside). One thread by default.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

import undiscard
from undiscard import zoo
from undiscard.analysis.geometry import phase_level
from undiscard.data import load_fashion_mnist, normalize, resize, shift_images, to_float
from undiscard.evaluation.report import stamp
from undiscard.evaluation.runner import evaluate
from undiscard.models.loading import load_model
from undiscard.search.criteria import get_criterion
from undiscard.search.orders import zoo_order_path

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = (1, 2, 4, 8)
CLASSIFIER_CRITERIA = ("entropy", "entropy+calibrated prior", "offset", "grid", "random", "calibrated")
HIGH_RATE = {"pvtv2": "stages.0.blocks.0.attn.sr", "seg_segformer": "encoder.patch_embed1.proj"}


@undiscard.register_criterion("entropy+calibrated prior")
class EntropyCalibratedPrior(type(get_criterion("entropy"))):  # type: ignore[misc]
    """``entropy``, trying successors in the order of ``wrap(order=...)``'s ranking (unranked ones last)."""

    needs_order = True

    def prior(self, ctx, states):
        rank = {s: r for r, s in enumerate(ctx.order.states)}
        return [float(rank.get(tuple(s), len(rank))) for s in states]


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def classifiers(models: list[str], limit: int, log: Callable[[str], None]) -> list[dict]:
    images, labels = load_fashion_mnist("test")
    rows = []
    for name in models:
        loaded = load_model(f"zoo:{name}")
        size, chans = loaded.preprocess.input_size, loaded.preprocess.in_chans
        padded = resize(to_float(images[:limit]), size)
        x, xs = normalize(padded, chans), normalize(shift_images(padded, 4, 0)[0], chans)
        y = torch.as_tensor(labels[:limit])
        for crit in CLASSIFIER_CRITERIA:
            kw = {"order": zoo_order_path(name)} if "calibrated" in crit else {}
            t0 = time.perf_counter()
            for r in evaluate(name, loaded.model, x, y, list(BUDGETS), shifted=xs, criterion=crit,
                              units=loaded.units, **kw):
                rows.append({"part": "classifiers", "model": name, "criterion": crit, "budget": r.budget,
                             "top1": r.top1, "top1_shifted": r.top1_shifted, "consistency": r.consistency,
                             "cost": r.cost, "units": loaded.units})
            log(f"{name} {crit}: {time.perf_counter() - t0:.0f} s; B=8 " +
                ", ".join(f"{k} {rows[-1][k]:.2f}" for k in ("top1", "top1_shifted", "consistency", "cost")))
    return rows


# --- part 2: rate-4 units ----------------------------------------------------------------------
def refine_order(states: list[int], scores: dict[int, float], rate: int) -> list[int]:
    """Phases of one rate-``rate`` unit in the order a refining search evaluates them: level by level
    (:func:`~undiscard.analysis.geometry.phase_level`); within a level past the first, nearest first to the
    lowest-scored phase evaluated so far (ties: the grid order), as of the level's start."""
    grid = sorted(states, key=lambda s: (phase_level(s, rate), s // rate * (s // rate) + s % rate * (s % rate), s))
    out: list[int] = []
    for level in sorted({phase_level(s, rate) for s in grid}):
        here = [s for s in grid if phase_level(s, rate) == level]
        if level >= 2 and out:
            best = min(out, key=lambda s: (scores[s], out.index(s)))
            by, bx = divmod(best, rate)
            here.sort(key=lambda s: (math.hypot(s // rate - by, s % rate - bx), grid.index(s)))
        out += here
    return out


def _reordered(model: undiscard.Undiscard, cands, how: str):
    """Per image, the candidates of a search of every state, in the order of policy ``how``."""
    rate = model.search_units[0].rate
    out = []
    for per in cands:
        by_phase = {c.state[0]: c for c in per}
        if how == "refine":
            ent = model.task.state_uncertainty(torch.stack([c.logits for c in per])).tolist()
            order = refine_order(sorted(by_phase), {c.state[0]: e for c, e in zip(per, ent)}, rate)
        else:
            order = [c.state[0] for c in per]
        out.append([by_phase[s] for s in order])
    return out


def high_rate(limit: int, seg_limit: int, log: Callable[[str], None]) -> list[dict]:
    rows = []
    crits = ("offset", "grid", "entropy", "random", "refine (simulated)")
    # pvtv2: classification
    images, labels = load_fashion_mnist("test")
    loaded = load_model("zoo:pvtv2")
    size, chans = loaded.preprocess.input_size, loaded.preprocess.in_chans
    padded = resize(to_float(images[:limit]), size)
    x, xs = normalize(padded, chans), normalize(shift_images(padded, 4, 0)[0], chans)
    y = torch.as_tensor(labels[:limit])
    units = [HIGH_RATE["pvtv2"]]
    for crit in crits[:-1]:
        for r in evaluate("pvtv2", loaded.model, x, y, list(BUDGETS), shifted=xs, criterion=crit, units=units):
            rows.append({"part": "rate 4", "model": "pvtv2", "unit": units[0], "criterion": crit, "budget": r.budget,
                         "top1": r.top1, "top1_shifted": r.top1_shifted, "consistency": r.consistency, "cost": r.cost})
        log(f"pvtv2 {crit}: B=8 top1 {rows[-1]['top1']:.2f}")
    # refine, simulated from a search of all 16 states (offset order lists them all)
    full = undiscard.wrap(loaded.model, budget=16, criterion="offset", units=units)
    correct = {b: [0, 0, 0] for b in BUDGETS}
    cost: dict[int, float] = {}  # what a search evaluating these states costs (the same states in another order)
    n = 0
    with torch.no_grad():
        for lo in range(0, limit, 250):
            preds = []
            for batch in (x[lo:lo + 250], xs[lo:lo + 250]):
                cands = _reordered(full, full.candidates(batch), "refine")
                preds.append({b: full.aggregate_candidates(cands, b).argmax(-1) for b in BUDGETS})
                cost.update((b, full.candidates_cost(cands, b)[0]) for b in BUDGETS)
            yy = y[lo:lo + 250]
            for b in BUDGETS:
                correct[b][0] += int((preds[0][b] == yy).sum())
                correct[b][1] += int((preds[1][b] == yy).sum())
                correct[b][2] += int((preds[0][b] == preds[1][b]).sum())
            n += len(yy)
    for b in BUDGETS:
        rows.append({"part": "rate 4", "model": "pvtv2", "unit": units[0], "criterion": crits[-1], "budget": b,
                     "top1": 100 * correct[b][0] / n, "top1_shifted": 100 * correct[b][1] / n,
                     "consistency": 100 * correct[b][2] / n, "cost": cost[b]})
    rows += _segformer(seg_limit, crits, log)
    return rows


def _segformer(limit: int, crits: tuple[str, ...], log: Callable[[str], None]) -> list[dict]:
    from undiscard.data import segmentation as segdata
    from undiscard.data.shift import shift_images as shift_u8
    from undiscard.evaluation.runner import run_pairs, search_predictions
    from undiscard.tasks.segmentation import SegmentationTask
    from undiscard.zoo import segmentation as segzoo

    images, masks = segdata.load_seg_test()
    raw = torch.from_numpy(images[:limit]).unsqueeze(1)
    shifted, offsets = shift_u8(raw, 4, 0)
    x, xs, y = segdata.to_input(raw), segdata.to_input(shifted), torch.from_numpy(masks[:limit]).long()
    net = segzoo.create_model("seg_segformer")
    units = [HIGH_RATE["seg_segformer"]]
    task = SegmentationTask()
    common = dict(shifted=xs, offsets=offsets, batch_size=50,
                  tally=lambda: task.tally(segdata.NUM_CLASSES, segdata.IGNORE_INDEX))
    rows = []
    for crit in crits[:-1] + ("calibrated",):
        kw = {"order": zoo_order_path("seg_segformer")} if crit == "calibrated" else {}
        model = undiscard.wrap(net, budget=1, task="segmentation", criterion=crit, units=units, **kw)
        variant = ("entropy", model.align)
        tallies, _ = run_pairs(x, y, search_predictions(model, BUDGETS, [variant]), [(b, variant) for b in BUDGETS],
                               **common)
        rows += _seg_rows(tallies, crit, units)
        log(f"seg_segformer {crit}: B=8 mIoU {rows[-1]['miou']:.2f}")
    full = undiscard.wrap(net, budget=16, task="segmentation", criterion="offset", units=units)

    def predict(batch):
        cands = _reordered(full, full.candidates(batch), "refine")
        return {(b, "entropy"): (full.aggregate_candidates(cands, b), *full.candidates_cost(cands, b)) for b in BUDGETS}

    tallies, _ = run_pairs(x, y, predict, [(b, "entropy") for b in BUDGETS], **common)
    rows += _seg_rows(tallies, crits[-1], units)
    return rows


def _seg_rows(tallies, crit: str, units: list[str]) -> list[dict]:
    out = []
    for (b, _), tally in tallies.items():
        s = tally.row()
        out.append({"part": "rate 4", "model": "seg_segformer", "unit": units[0], "criterion": crit, "budget": b,
                    "miou": s["miou"], "miou_shifted": s["miou_shifted"], "consistency": s["consistency"],
                    "cost": s["cost"]})
    return out


# --- report ------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    rows = report["rows"]
    out = ["# Priors and criteria at equal cost", "", f"Command: `{report['command']}`  ",
           f"Date: {report['date']}; commit {report['commit']}; {report['threads']} thread(s); "
           f"{report['seconds'] / 60:.1f} min.", ""]
    cls = [r for r in rows if r["part"] == "classifiers"]
    if cls:
        models = sorted({r["model"] for r in cls})
        out += [f"## Zoo classifiers (average of {len(models)}: {', '.join(models)}; {report['limit']} test images)",
                "", "| criterion | B | top-1 | top-1 shifted | consistency | cost |", "|---|---:|---:|---:|---:|---:|"]
        for crit in CLASSIFIER_CRITERIA:
            for b in BUDGETS:
                rs = [r for r in cls if r["criterion"] == crit and r["budget"] == b]
                if not rs:
                    continue
                mean = {k: sum(r[k] for r in rs) / len(rs) for k in ("top1", "top1_shifted", "consistency", "cost")}
                out.append(f"| {crit} | {b} | {mean['top1']:.2f} | {mean['top1_shifted']:.2f} | "
                           f"{mean['consistency']:.2f} | {mean['cost']:.2f} |")
        out += ["", "Per model:", "", "| model | criterion | B | top-1 | top-1 shifted | consistency | cost |",
                "|---|---|---:|---:|---:|---:|---:|"]
        out += [f"| {r['model']} | {r['criterion']} | {r['budget']} | {r['top1']:.2f} | {r['top1_shifted']:.2f} | "
                f"{r['consistency']:.2f} | {r['cost']:.2f} |" for r in cls]
    hi = [r for r in rows if r["part"] == "rate 4"]
    if hi:
        out += ["", "## Units of rate 4", "", "| model (unit) | criterion | B | top-1 or mIoU | shifted | consistency | cost |",
                "|---|---|---:|---:|---:|---:|---:|"]
        for r in hi:
            main, shifted = (r["top1"], r["top1_shifted"]) if "top1" in r else (r["miou"], r["miou_shifted"])
            out.append(f"| {r['model']} ({r['unit']}) | {r['criterion']} | {r['budget']} | {_fmt(main)} | "
                       f"{_fmt(shifted)} | {_fmt(r['consistency'])} | {r['cost']:.2f} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--seg-limit", type=int, default=500)
    ap.add_argument("--models", default=",".join(zoo.list_models()))
    ap.add_argument("--parts", default="classifiers,rate4")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/priors/compare_priors")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    parts = args.parts.split(",")
    rows = classifiers(args.models.split(","), args.limit, log) if "classifiers" in parts else []
    if "rate4" in parts:
        rows += high_rate(args.limit, args.seg_limit, log)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    report = {"command": "python scripts/compare_priors.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": commit,
              "threads": torch.get_num_threads(), "limit": args.limit, "seg_limit": args.seg_limit,
              "seconds": time.perf_counter() - t0, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(stamp(report), indent=1))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
