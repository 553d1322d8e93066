"""A ViT's patch embedding searched at test time: clean top-1, shifted top-1, consistency and cost.

ViT-style patch embeddings are high-rate units (a 4x4 patch: 16 phases). No pretrained ViT is available
offline here, so this trains one, seeded, on Fashion-MNIST exactly as the classification zoo is trained
(translation crops of -4..+4 px and flips; 55k train / 5k validation images split from the train set;
AdamW, one-cycle schedule, label smoothing 0.1), then measures on the first ``--limit`` test images and
copies shifted by 1..4 px (zero fill, seed 0), for every criterion and budget: the network, the search
(``wrap(net, budget=B, criterion=C)``, entropy aggregation) and flip TTA.

The model is timm's VisionTransformer: 32 px, 1 channel, patch 4 (the unit: rate 4), ``--width``
channels, ``--depth`` blocks, ``--width // 32`` heads (at least 2), class token, 10 classes. Its weights
are not part of the zoo and are not committed: ``--weights FILE`` caches them (trained when missing).

    python scripts/vit_patch_phases.py --epochs 12 --limit 2000 --weights /tmp/vit.pt --out results/vit/vit_patch4
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import undiscard
from undiscard import TTA
from undiscard._compat import import_timm
from undiscard.data import load_fashion_mnist, load_train_val, normalize, resize, shift_images, to_float
from undiscard.data.shift import random_crop_flip
from undiscard.evaluation.report import format_table, stamp, write_json
from undiscard.evaluation.runner import batches, evaluate, evaluate_tta
from undiscard.metrics import topk_correct

BUDGETS = (1, 2, 4, 8, 16)
CRITERIA = ("entropy", "grid", "offset", "random", "aps")


def build(width: int, depth: int) -> torch.nn.Module:
    import_timm()
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=4, in_chans=1, num_classes=10, embed_dim=width, depth=depth,
                             num_heads=max(2, width // 32), mlp_ratio=2.0)


def train(net: torch.nn.Module, args: argparse.Namespace) -> dict:
    """Train ``net`` in place (seeded); the log: per epoch loss and validation top-1, seconds."""
    (xtr, ytr), (xva, yva) = load_train_val(None, val_size=5000, seed=args.seed)
    xtr, xva = resize(to_float(xtr), 32), resize(to_float(xva), 32)
    ytr, yva = torch.as_tensor(ytr), torch.as_tensor(yva)
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.05)
    steps = len(xtr) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps * args.epochs, pct_start=0.1)
    log, t0, c0 = [], time.time(), time.process_time()
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(xtr), generator=gen)
        total = 0.0
        for i in range(steps):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            loss = F.cross_entropy(net(normalize(random_crop_flip(xtr[idx], 4, gen))), ytr[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        net.eval()
        with torch.no_grad():
            val = sum(topk_correct(net(normalize(xva[s])), yva[s], 1) for s in batches(len(xva), 500)) / len(xva)
        log.append({"epoch": epoch + 1, "train_loss": total / steps, "val_top1": 100.0 * val,
                    "seconds": time.time() - t0})
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / steps:.4f}, val top-1 {100 * val:.2f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    return {"epochs": log, "train_seconds": time.time() - t0, "train_cpu_seconds": time.process_time() - c0,
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=2000, help="first N test images (default: 2000)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", default=None, help="cache of the trained weights (trained when missing)")
    ap.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = build(args.width, args.depth)
    training = None
    if args.weights and os.path.isfile(args.weights):
        net.load_state_dict(torch.load(args.weights, weights_only=True))
    else:
        training = train(net, args)
        if args.weights:
            torch.save(net.state_dict(), args.weights)
    net.eval()

    images, labels = load_fashion_mnist("test")
    n = min(args.limit, len(labels))
    padded = resize(to_float(images[:n]), 32)
    x, xs, y = normalize(padded), normalize(shift_images(padded, 4, 0)[0]), torch.as_tensor(labels[:n])
    torch.set_num_threads(1)
    rows = []
    for criterion in CRITERIA:
        model = undiscard.wrap(net, budget=1, criterion=criterion)
        t0 = time.time()
        found = evaluate("vit_patch4", model, x, y, list(BUDGETS), shifted=xs, batch_size=250)
        rows += [r.as_dict() | {"criterion": criterion} for r in found if r.budget > 1 or criterion == CRITERIA[0]]
        print(f"{criterion}: {time.time() - t0:.0f} s", flush=True)
    rows += [r.as_dict() | {"criterion": "-"} for r in evaluate_tta("vit_patch4", TTA(net, policy="flip"), x, y, [1],
                                                                    shifted=xs, batch_size=250)]
    cols = [("criterion", "criterion"), ("budget", "B"), ("tta", "tta"), ("top1", "top-1"),
            ("top1_shifted", "shifted"), ("consistency", "consistency"), ("cost", "cost")]
    table = format_table(rows, cols)
    print(table)
    if args.out:
        report = stamp({"command": "python scripts/vit_patch_phases.py " + " ".join(sys.argv[1:] if argv is None else argv),
                        "settings": vars(args), "training": training, "units": [u.name for u in model.search_units],
                        "rates": [u.rate for u in model.search_units], "rows": rows})
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(args.out + ".json"), report, indent=1)
        Path(args.out + ".md").write_text(f"# ViT, patch 4, on Fashion-MNIST\n\nCommand: `{report['command']}`  \n"
                                          f"Commit {report['commit']}, {report['date']}.\n\n```\n{table}\n```\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
