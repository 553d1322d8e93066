"""Order the ``standard`` TTA policy's views by what they add, and compare it with the policy before real crops.

Two commands (results in ``--out``, default ``results/tta_views``):

``order``: logits of every view of :func:`undiscard.tta.views.standard_pool` (flips x scales x the whole
image and its four 7/8 corner crops) on held-out images — the first ``--val-images`` of the validation
part of the Fashion-MNIST train split (held out from zoo training; never the test set) for each zoo
model, and ``--photo-crops`` labelled crops per bundled photo for EfficientNet-Lite0 (seed
``--photo-seed``) — then each view's own top-1, and a greedy order: identity and hflip first (the
``flip`` policy is the first two views of ``standard``), then at each step the view whose addition most
raises the top-1 of the mean of logits (ties: the lower mean NLL), top-1 averaged over the zoo models
and over the two domains (zoo, photos) with equal weight. Writes ``order.json`` and ``order.md``; the
order is what :data:`undiscard.tta.views.STANDARD_ORDER` holds.

``compare``: the first T views of ``standard`` (mean of logits) at T = ``--totals``, before (the 30 views
of the old policy, whose corner "crops" were edge-filled translations by round(H/16) px, written here
as the ``shift`` views they were, in their old order) and now, on the first ``--limit`` zoo test images
(clean, shifted by 1-4 px as ``undiscard demo``, and shift consistency) and on labelled crops of the
bundled photos (another seed) for EfficientNet-Lite0/1/2. Writes ``compare.json`` and ``compare.md``.

Labelled photo crops: each of the four bundled photos with an ImageNet class (chelsea, coffee,
motorcycle, rocket; the astronaut has none) gives seeded random square crops (side 60-100% of the
288-px photo, anywhere in it), each then preprocessed as the model's own evaluation does (centre crop
size/(size+32), bicubic resize); a prediction is right when its top-1 is one of the photo's fitting
classes (the sets of ``tests/test_imagenet_models.py``: five cat breeds, espresso/cup/coffee mug,
moped/motor scooter, missile/projectile/space shuttle). Four scenes only: a sanity check on real photos,
not an ImageNet accuracy.

    python scripts/order_tta_views.py order --threads 1
    python scripts/order_tta_views.py compare --threads 1
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from undiscard import zoo
from undiscard.data import load_fashion_mnist, load_train_val, normalize, resize, shift_images, to_float
from undiscard.data.folder import normalize_batch, resize_and_crop
from undiscard.data.imagenet import imagenet_wnids
from undiscard.data.photos import PHOTO_DIR
from undiscard.evaluation.report import format_table, stamp
from undiscard.evaluation.runner import view_logits
from undiscard.models.loading import load_model
from undiscard.tta.views import POLICIES, standard_pool, translation_policy

FIXED = ("identity", "hflip")
PHOTO_CLASSES = {  # WordNet ids that fit each photo (tests/test_imagenet_models.py)
    "chelsea": {"n02123045", "n02123159", "n02124075", "n02123394", "n02123597"},
    "coffee": {"n07920052", "n07930864", "n03063599"},
    "motorcycle": {"n03785016", "n03791053"},
    "rocket": {"n03773504", "n04008634", "n04266014"},
}
LITE = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")


def zoo_inputs(name: str, split: str, n: int):
    """(net, inputs, shifted inputs or None, correct-class mask (N, K)) of a zoo model."""
    loaded = load_model(f"zoo:{name}")
    size, chans = loaded.preprocess.input_size, loaded.preprocess.in_chans
    if split == "val":
        (_, _), (images, labels) = load_train_val()
    else:
        images, labels = load_fashion_mnist("test")
    padded = resize(to_float(images[:n]), size)
    x = normalize(padded, chans)
    xs = normalize(shift_images(padded, 4, 0)[0], chans) if split == "test" else None
    mask = F.one_hot(torch.as_tensor(labels[:n]).long(), 10).bool()
    return loaded.model, x, xs, mask


def photo_inputs(model_name: str, per_photo: int, seed: int):
    """(net, inputs, correct-class mask (N, 1000)) of labelled random crops of the bundled photos."""
    from PIL import Image

    loaded = load_model(model_name)
    pre = loaded.preprocess
    wnids = imagenet_wnids()
    crops, masks = [], []
    for p, (photo, classes) in enumerate(PHOTO_CLASSES.items()):
        rng = np.random.default_rng([seed, p])
        with Image.open(PHOTO_DIR / f"{photo}.jpg") as img:
            img = img.convert("RGB")
            full = img.size[0]
            for _ in range(per_photo):
                side = int(rng.integers(round(0.6 * full), full + 1))
                top, left = (int(v) for v in rng.integers(0, full - side + 1, size=2))
                crop = resize_and_crop(img.crop((left, top, left + side, top + side)), pre.input_size,
                                       pre.crop_pct, pre.interpolation, pre.crop_first)
                crops.append(torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1))
                masks.append(torch.tensor([w in classes for w in wnids]))
    return loaded.model, normalize_batch(torch.stack(crops), pre.mean, pre.std), torch.stack(masks)


def top1(logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Top-1 (%) of (N, K) logits against a correct-class mask."""
    return 100.0 * float(mask.gather(1, logits.argmax(-1, keepdim=True)).float().mean())


def nll(logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean -log(probability of the correct classes)."""
    logp = logits.log_softmax(-1)
    return float(-(logp.masked_fill(~mask, float("-inf")).logsumexp(-1)).mean())


def greedy(domains: dict[str, list[tuple[torch.Tensor, torch.Tensor]]], names: list[str]) -> list[dict]:
    """Greedy order of ``names``: the fixed views first, then the view whose addition most raises the
    domain-averaged (model-averaged within a domain) top-1 of the mean of logits; ties: lower NLL."""
    def score(sel: list[int]) -> tuple[float, float, dict]:
        per = {d: [(top1(lg[:, sel].mean(1), m), nll(lg[:, sel].mean(1), m)) for lg, m in items]
               for d, items in domains.items()}
        acc = {d: sum(a for a, _ in v) / len(v) for d, v in per.items()}
        loss = {d: sum(b for _, b in v) / len(v) for d, v in per.items()}
        return sum(acc.values()) / len(acc), sum(loss.values()) / len(loss), acc

    sel = [names.index(v) for v in FIXED]
    steps, prev = [], None
    for k in range(1, len(sel) + 1):
        s, l, acc = score(sel[:k])
        steps.append({"view": names[sel[k - 1]], "top1": s, "nll": l, "per_domain": acc,
                      "gain": None if prev is None else s - prev})
        prev = s
    rest = [i for i in range(len(names)) if i not in sel]
    while rest:
        scored = {i: score(sel + [i]) for i in rest}
        best = max(rest, key=lambda i: (round(scored[i][0], 6), -scored[i][1]))
        sel.append(best)
        rest.remove(best)
        s, l, acc = score(sel)
        steps.append({"view": names[best], "top1": s, "nll": l, "per_domain": acc, "gain": s - prev})
        prev = s
    return steps


def cmd_order(args: argparse.Namespace) -> int:
    names = standard_pool()
    domains: dict[str, list] = {"zoo": [], "photos": []}
    alone: list[dict] = []
    for name in args.models:
        t0 = time.perf_counter()
        net, x, _, mask = zoo_inputs(name, "val", args.val_images)
        refs = translation_policy(x.shape[-1])[2:10:2]  # the old corner "crops" (translations), for reference
        lg = view_logits(net, names + refs, x, args.batch_size)
        domains["zoo"].append((lg[:, :len(names)], mask))
        alone += [{"domain": "zoo", "model": f"zoo:{name}", "view": v, "top1": top1(lg[:, i], mask)}
                  for i, v in enumerate(names + [f"{r} (old crop)" for r in refs])]
        print(f"zoo:{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    if args.photo_crops:
        t0 = time.perf_counter()
        net, x, mask = photo_inputs(LITE[0], args.photo_crops, args.photo_seed)
        refs = translation_policy(x.shape[-1])[2:10:2]
        lg = view_logits(net, names + refs, x, args.photo_batch)
        domains["photos"].append((lg[:, :len(names)], mask))
        alone += [{"domain": "photos", "model": LITE[0], "view": v, "top1": top1(lg[:, i], mask)}
                  for i, v in enumerate(names + [f"{r} (old crop)" for r in refs])]
        print(f"{LITE[0]}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    domains = {d: v for d, v in domains.items() if v}
    combined = greedy(domains, names)
    per_domain = {d: greedy({d: v}, names) for d, v in domains.items()} if len(domains) > 1 else {}
    out = {"order": [s["view"] for s in combined], "greedy": combined, "greedy_per_domain": per_domain,
           "alone": alone, "settings": {k: v for k, v in vars(args).items() if k != "func"}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "order.json").write_text(json.dumps(stamp(out), indent=1, default=str) + "\n")
    rows = [{"k": k + 1, "view": s["view"], "gain": "" if s["gain"] is None else f"{s['gain']:+.2f}",
             "top1": s["top1"], **{f"top1 {d}": a for d, a in s["per_domain"].items()},
             **{f"alone {d}": _mean_alone(alone, d, s["view"]) for d in domains}}
            for k, s in enumerate(combined)]
    cols = [("k", "k"), ("view", "view added"), ("gain", "gain"), ("top1", "top-1 (avg)")]
    cols += [(f"top1 {d}", f"top-1 {d}") for d in domains] + [(f"alone {d}", f"alone {d}") for d in domains]
    table = format_table(rows, cols, markdown=True)
    (args.out / "order.md").write_text(table + "\n")
    print(table)
    print("STANDARD_ORDER = " + repr(tuple(out["order"])))
    return 0


def _mean_alone(alone: list[dict], domain: str, view: str) -> float:
    vals = [r["top1"] for r in alone if r["domain"] == domain and r["view"] == view]
    return sum(vals) / len(vals)


def cmd_compare(args: argparse.Namespace) -> int:
    rows: list[dict] = []
    totals = args.totals
    new = POLICIES["standard"]

    def add(model: str, policies: dict[str, list[str]], x, xs, mask, batch: int) -> None:
        need = sorted({v for p in policies.values() for v in p[:max(totals)]})
        lg = view_logits(net, need, x, batch)
        lgs = view_logits(net, need, xs, batch) if xs is not None else None
        for t in [1] + totals:
            for which, views in policies.items():
                if t == 1 and which != "now":
                    continue
                idx = [need.index(v) for v in views[:t]]
                clean = lg[:, idx].mean(1)
                r = {"model": model, "T": t, "policy": "plain" if t == 1 else which, "top1": top1(clean, mask),
                     "n": len(mask)}
                if lgs is not None:
                    shifted = lgs[:, idx].mean(1)
                    r["top1_shifted"] = top1(shifted, mask)
                    r["consistency"] = 100.0 * float((clean.argmax(-1) == shifted.argmax(-1)).float().mean())
                rows.append(r)

    zoo_order = json.loads((args.out / "order.json").read_text())["greedy_per_domain"]["zoo"] \
        if args.zoo_order else None  # the zoo-only greedy order, for comparison
    for name in args.models:
        t0 = time.perf_counter()
        net, x, xs, mask = zoo_inputs(name, "test", args.limit)
        policies = {"before": translation_policy(x.shape[-1]), "now": new}
        if zoo_order:
            policies["zoo order"] = [s["view"] for s in zoo_order]
        add(f"zoo:{name}", policies, x, xs, mask, args.batch_size)
        print(f"zoo:{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compare.json").write_text(json.dumps(stamp({"results": rows}), indent=1) + "\n")  # partial
    for name in args.lite if args.photo_crops else []:
        t0 = time.perf_counter()
        net, x, mask = photo_inputs(name, args.photo_crops, args.photo_seed)
        add(f"{name} (photos)", {"before": translation_policy(x.shape[-1]), "now": new}, x, None, mask, args.photo_batch)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compare.json").write_text(json.dumps(stamp({"results": rows}), indent=1) + "\n")  # partial
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps(stamp({"results": rows, "settings": settings,
                                                             "policy_now": new}), indent=1, default=str) + "\n")
    cols = [("model", "model"), ("T", "T"), ("policy", "policy"), ("top1", "top-1"),
            ("top1_shifted", "top-1 shifted"), ("consistency", "consistency"), ("n", "images")]
    table = format_table([{c: r.get(c, "-") for c, _ in cols} for r in rows], cols, markdown=True)
    (args.out / "compare.md").write_text(table + "\n")
    print(table)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for cmd, func in (("order", cmd_order), ("compare", cmd_compare)):
        p = sub.add_parser(cmd)
        p.set_defaults(func=func)
        p.add_argument("--models", type=lambda s: [m for m in s.split(",") if m], default=zoo.list_models())
        p.add_argument("--photo-crops", type=int, default=32, help="labelled crops per photo (0: no photos)")
        p.add_argument("--batch-size", type=int, default=250, help="zoo images per forward (x views)")
        p.add_argument("--photo-batch", type=int, default=4, help="photo crops per forward (x views)")
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--out", type=Path, default=Path("results/tta_views"))
    o, c = sub.choices["order"], sub.choices["compare"]
    o.add_argument("--val-images", type=int, default=1000, help="validation images per zoo model")
    o.add_argument("--photo-seed", type=int, default=0)
    c.add_argument("--limit", type=int, default=2000, help="zoo test images")
    c.add_argument("--totals", type=lambda s: [int(t) for t in s.split(",")], default=[2, 4, 8])
    c.add_argument("--lite", type=lambda s: [m for m in s.split(",") if m], default=list(LITE))
    c.add_argument("--photo-seed", type=int, default=1, help="another seed than the order's")
    c.add_argument("--zoo-order", action="store_true",
                   help="also the zoo-only greedy order of order.json (zoo models only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
