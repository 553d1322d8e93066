"""Where should adaptive polyphase selection (APS, :mod:`undiscard.search.aps`) be applied? Every variant, measured.

For each model, on the same images, beside the plain model and flip TTA (``undiscard.TTA(net, "flip")``):

- APS alone (1 state): at the first spatial unit with each norm (p = 1, 2, inf; channel-normalised or not;
  border cells left out of the score unless ``--border``),
  at the first k units and at all of them (L2 and L2/ch), at the second unit only, at the default searched
  units (all but the first and the last);
- 2 states: APS + the plain model aggregated (the wrapped model's ``entropy`` aggregation, aligned by the
  states' offsets), APS at the first unit + its runner-up phase there (the APS state as the root with a
  neighbour), and flip TTA over APS (the mean of the two views' logits, as ``TTA(..., "mean")``).

Numbers: clean top-1, top-1 on the displaced copies, shift consistency (the share of pairs with the same
top-1), the share of images whose APS state is not all zeros, and the cost in plain forwards (FLOPs counted
by ``torch.utils.flop_counter`` on each pass: ``undiscard.search.aps``).

- zoo classifiers: the first ``--limit`` bundled Fashion-MNIST test images and copies shifted by 1-4 px
  (zero fill, seeded), as ``undiscard demo``;
- EfficientNet-Lite0/1/2 (real ImageNet weights): pairs of crops of the bundled *evaluation* photos
  (:func:`undiscard.data.photos.crop_pairs`: a crop near the centre and the same scene displaced by 1-16 px,
  real content), ``--pairs`` per photo; top-1 on the crops of the labelled photos (any of a photo's classes
  counts).

    python scripts/aps_variants.py --models zoo --out results/aps/zoo.json
    python scripts/aps_variants.py --models efficientnet-lite0,efficientnet-lite1,efficientnet-lite2 \\
        --out results/aps/lite.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

import undiscard
from undiscard.evaluation.report import stamp
from undiscard.search.aps import APSRule
from undiscard.selection import aggregate_states, aps

Predict = Callable[[Tensor], tuple[Tensor, float, float]]  # images -> (logits, cost per image, share moved)


@dataclass(frozen=True)
class Variant:
    label: str
    kind: str  # plain, flip, aps, aps+plain, aps+runner-up, flip*aps, search, flip*search
    units: tuple[int, ...] = ()
    rule: APSRule = field(default_factory=APSRule)
    budget: int = 1  # search: states per view
    criterion: str = "entropy"  # search: wrap's criterion ("calibrated": the model's shipped order)

    @property
    def states(self) -> int:
        if self.kind.endswith("search"):
            return self.budget * (2 if self.kind.startswith("flip") else 1)
        return 1 if self.kind in ("plain", "aps") else 2


def order_variants(n_units: int, criteria: tuple[str, ...] = ("calibrated",)) -> list[Variant]:
    """``--set orders``: plain, flip TTA and APS at the first unit beside the wrapped model's search with its
    shipped calibrated order (its default units) at 2, 4, 8 states, and flip TTA over it at 2 and 4 states per
    view (``--criteria`` adds others, e.g. the default ``entropy``)."""
    out = [Variant("plain", "plain"), Variant("flip TTA", "flip"), Variant("APS first L2", "aps", (0,)),
           Variant("flip TTA x APS first L2", "flip*aps", (0,))]
    for criterion in criteria:
        out += [Variant(f"{criterion} B={b}", "search", budget=b, criterion=criterion) for b in (2, 4, 8)]
        out += [Variant(f"flip TTA x {criterion} B={b}", "flip*search", budget=b, criterion=criterion) for b in (2, 4)]
    return out


def variants(n_units: int, border: bool = False) -> list[Variant]:
    """The variants for a model whose wrapper searches ``n_units`` spatial units (all of them); ``border``:
    every APS rule scores the whole map (:class:`~undiscard.search.aps.APSRule`)."""
    rules = [APSRule(p, c, border) for c in (False, True) for p in (1, 2, math.inf)]
    out = [Variant("plain", "plain"), Variant("flip TTA", "flip")]
    out += [Variant(f"APS first {r.label}", "aps", (0,), r) for r in rules]
    sets = {f"first {k}": tuple(range(k)) for k in range(2, n_units)}
    sets["all"] = tuple(range(n_units))
    for name, units in sets.items():
        out += [Variant(f"APS {name} {r.label}", "aps", units, r)
                for r in (APSRule(2, False, border), APSRule(2, True, border))]
    l2 = APSRule(2, False, border)
    if n_units >= 2:
        out.append(Variant(f"APS second only {l2.label}", "aps", (1,), l2))
    if n_units >= 3:
        out.append(Variant(f"APS default units {l2.label}", "aps", tuple(range(1, n_units - 1)), l2))
    out += [Variant(f"plain + APS first {l2.label}", "aps+plain", (0,), l2),
            Variant(f"plain + APS all {l2.label}", "aps+plain", tuple(range(n_units)), l2),
            Variant(f"APS first {l2.label} + runner-up", "aps+runner-up", (0,), l2),
            Variant(f"flip TTA x APS first {l2.label}", "flip*aps", (0,), l2)]
    return out


def predictor(model: undiscard.Undiscard, net: torch.nn.Module, v: Variant, order: str | None = None) -> Predict:
    flip = undiscard.TTA(net, policy="flip")
    if v.kind.endswith("search"):  # the wrapped model as users get it: its default units, its order
        if v.criterion == "calibrated" and order is None:
            raise SystemExit("criterion calibrated: the model ships no order")
        searched = undiscard.wrap(net, budget=v.budget, criterion=v.criterion,
                                  order=order if v.criterion == "calibrated" else None)
        flipped = undiscard.TTA(searched, policy="flip")

    def moved(states: list[tuple[int, ...]]) -> float:
        return sum(any(s) for s in states) / max(1, len(states))

    def run(x: Tensor) -> tuple[Tensor, float, float]:
        units, p, ch, bd = list(v.units), v.rule.p, v.rule.channel_norm, v.rule.border
        if v.kind == "plain":
            with torch.no_grad():
                return net(x), 1.0, 0.0
        if v.kind == "flip":
            with torch.no_grad():
                out = flip(x)
            return out, flip.last_cost, 0.0
        if v.kind == "aps":
            r = aps(model, x, units, p, ch, border=bd)
            return r.logits, r.cost, moved(r.states)
        if v.kind == "aps+plain":
            plain, r = aps(model, x, [], features=True), aps(model, x, units, p, ch, border=bd, features=True)
            return aggregate_states(model, [plain, r]), plain.cost + r.cost, moved(r.states)
        if v.kind == "aps+runner-up":
            r = aps(model, x, units, p, ch, border=bd, features=True)
            second = aps(model, x, units, p, ch, border=bd, ranks={units[0]: 1}, features=True)
            return aggregate_states(model, [r, second]), r.cost + second.cost, moved(r.states)
        if v.kind == "search":
            with torch.no_grad():
                out = searched(x)
            return out, searched.last_cost, 0.0
        if v.kind == "flip*search":
            with torch.no_grad():
                out = flipped(x)
            return out, flipped.last_cost, 0.0
        if v.kind == "flip*aps":
            a, b = aps(model, x, units, p, ch, border=bd), aps(model, torch.flip(x, dims=(-1,)), units, p, ch, border=bd)
            return (a.logits + b.logits) / 2, a.cost + b.cost, moved(a.states)
        raise ValueError(v.kind)

    return run


def measure(predict: Predict, x: Tensor, xs: Tensor, hits: Tensor, labelled: Tensor, batch: int) -> dict:
    """Clean top-1 (rows with a label), shifted top-1, consistency, cost and moved share over the pairs
    (x[i], xs[i]); ``hits`` (N, K) bool: which classes count as correct for row i."""
    preds, cost, moved = [[], []], 0.0, 0.0
    t0 = time.perf_counter()
    for start in range(0, len(x), batch):
        for k, images in enumerate((x, xs)):
            logits, c, m = predict(images[start:start + batch])
            preds[k].append(logits.argmax(-1))
            cost += c * logits.shape[0]
            moved += m * logits.shape[0] if k == 0 else 0.0
    a, b = torch.cat(preds[0]), torch.cat(preds[1])
    rows = torch.arange(len(a))
    n_lab = int(labelled.sum())
    top1 = float(hits[rows, a][labelled].float().mean()) * 100 if n_lab else None
    top1s = float(hits[rows, b][labelled].float().mean()) * 100 if n_lab else None
    return {"top1": top1, "top1_shifted": top1s, "consistency": float((a == b).float().mean()) * 100,
            "cost": cost / (2 * len(a)), "moved": moved / len(a) * 100, "pairs": len(a), "labelled": n_lab,
            "seconds": time.perf_counter() - t0}


def zoo_data(name: str, limit: int, seed: int):
    from undiscard import zoo
    from undiscard.data import load_fashion_mnist, normalize, resize, shift_images, to_float

    cfg = zoo.model_config(name)
    size, chans = int(cfg["input_size"][-1]), int(cfg["in_chans"])
    images, labels = load_fashion_mnist("test")
    raw, y = resize(to_float(images[:limit]), size), torch.as_tensor(labels[:limit]).long()
    shifted, _ = shift_images(raw, 4, seed)
    hits = torch.nn.functional.one_hot(y, 10).bool()
    return normalize(raw, chans), normalize(shifted, chans), hits, torch.ones(len(y), dtype=torch.bool)


def photo_data(loaded, pairs: int, seed: int, which: str = "evaluation"):
    from undiscard.data.imagenet import imagenet_class_map
    from undiscard.data.photos import crop_pairs, photo_set

    photos = photo_set(which)
    size = loaded.preprocess.input_size
    base, moved, _, owner = crop_pairs([p.image for p in photos], pairs, size, 16, seed)
    index = imagenet_class_map()
    hits = torch.zeros(len(owner), 1000, dtype=torch.bool)
    for i, p in enumerate(owner.tolist()):
        for w in photos[p].labels:
            hits[i, index[w]] = True
    mean = torch.tensor(loaded.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.preprocess.std).view(1, 3, 1, 1)
    return (base - mean) / std, (moved - mean) / std, hits, hits.any(1)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="zoo", help="'zoo' (the 7 classifiers) or comma-separated names")
    ap.add_argument("--limit", type=int, default=2000, help="zoo: test images (default 2000)")
    ap.add_argument("--pairs", type=int, default=8, help="photos: pairs per evaluation photo (default 8)")
    ap.add_argument("--only", default=None, help="comma-separated variant labels to run (default: all)")
    ap.add_argument("--set", choices=("aps", "orders"), default="aps",
                    help="aps: where to apply APS (default); orders: the shipped orders beside plain, flip, APS")
    ap.add_argument("--border", action="store_true", help="APS scores whole maps, border cells included")
    ap.add_argument("--criteria", default="calibrated", help="--set orders: the searches' criteria (default calibrated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from undiscard import zoo
    from undiscard.models.loading import load_model

    names = ([f"zoo:{m}" for m in zoo.list_models() if not m.startswith("seg")] if args.models == "zoo"
             else [m.strip() for m in args.models.split(",")])
    only = None if args.only is None else {s.strip() for s in args.only.split(",")}
    payload = {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "commit": git_commit(), "torch": torch.__version__, "threads": args.threads, "rows": []}
    if args.out.exists():  # resume: keep the rows already measured
        old = json.loads(args.out.read_text())
        payload["rows"] = [r for r in old.get("rows", [])]
    done = {(r["model"], r["variant"]) for r in payload["rows"]}
    for name in names:
        loaded = load_model(name)
        if name.startswith("zoo:"):
            x, xs, hits, labelled = zoo_data(name.removeprefix("zoo:"), args.limit, args.seed)
            batch = 500
        else:
            x, xs, hits, labelled = photo_data(loaded, args.pairs, args.seed)
            batch = 16
        units = undiscard.find_units(loaded.model, x[:1])
        spatial = [i for i, u in enumerate(units) if u.spatial]
        model = undiscard.wrap(loaded.model, budget=1, units=spatial, example_input=x[:1])
        todo = (variants(len(spatial), args.border) if args.set == "aps"
                else order_variants(len(spatial), tuple(c.strip() for c in args.criteria.split(","))))
        for v in todo:
            if (name, v.label) in done or (only is not None and v.label not in only):
                continue
            row = {"model": name, "variant": v.label, "kind": v.kind, "states": v.states,
                   "units": [model.search_units[k].name for k in v.units], "norm": v.rule.label,
                   "budget": v.budget, "criterion": v.criterion if v.kind.endswith("search") else None,
                   **measure(predictor(model, loaded.model, v, loaded.order), x, xs, hits, labelled, batch)}
            payload["rows"].append(row)
            print(f"{name:22s} {v.label:34s} top1 {row['top1']!s:>6.6} shifted {row['top1_shifted']!s:>6.6} "
                  f"cons {row['consistency']:6.2f} cost {row['cost']:5.3f} moved {row['moved']:5.1f}% "
                  f"({row['seconds']:.0f} s)", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(stamp(payload), indent=1) + "\n")


if __name__ == "__main__":
    main()
