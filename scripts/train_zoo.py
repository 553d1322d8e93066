"""Train one model of the undiscard zoo on Fashion-MNIST and save its fp16 weights and a JSON log.

    python scripts/train_zoo.py --model resnet_basic [--epochs E] [--seed 0] [--threads 2]

Recipe (per-model values in ``undiscard.zoo.train_recipe``): 55k training images / 5k validation
images split from the train set with the seed; AdamW, one-cycle schedule (linear warm-up, cosine
decay, stepped per batch), label smoothing; augmentation on whole batches of tensors: the 32x32
zero-padded image is padded 4 px more and randomly cropped back to 32x32 (translations of -4..+4 px
in each direction) and flipped horizontally with probability 1/2. Recipes with ``amp="bf16"`` run the
forward pass under CPU bfloat16 autocast (fp32 weights and optimizer; about 2x faster on CPUs with
AVX512-BF16, exact fp32 evaluation). Validation accuracy every epoch;
test accuracy (10k test set, reporting only) once at the end, measured with the saved fp16 weights.
Everything is seeded (torch.manual_seed and one torch.Generator for data order and augmentation).
Outputs: undiscard/zoo/weights/NAME.pt (fp16 state_dict), undiscard/zoo/logs/NAME.json.
Run from the checkout with the package installed (``pip install -e .``).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

from undiscard import zoo
from undiscard._compat import import_timm
from undiscard.data import load_fashion_mnist, load_train_val, normalize, resize, to_float
from undiscard.data.shift import random_crop_flip
from undiscard.evaluation.runner import batches
from undiscard.metrics import topk_correct
from undiscard.zoo.catalog import fp16_state, run_record

CROP_PAD = 4


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 500) -> float:
    """Top-1 (a fraction) of ``model`` on [0, 1] images ``x``; leaves ``model`` in eval mode."""
    model.eval()
    return sum(topk_correct(model(normalize(x[s])), y[s], 1) for s in batches(len(x), bs)) / len(x)


def lr_at(step: int, total: int, peak: float, warmup: float) -> float:
    w = max(1, int(total * warmup))
    if step < w:
        return peak * (step + 1) / w
    t = (step - w) / max(1, total - w)
    return peak * 0.5 * (1 + math.cos(math.pi * t))


def main() -> int:
    ap = argparse.ArgumentParser(description="Train one undiscard zoo model on Fashion-MNIST.")
    ap.add_argument("--model", required=True, choices=zoo.list_models())
    ap.add_argument("--epochs", type=int, default=None, help="default: the model's recipe")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--amp", choices=["fp32", "bf16"], default=None,
                    help="forward-pass precision while training (default: the model's recipe)")
    ap.add_argument("--max-batches", type=int, default=None, help="smoke test: stop each epoch after this many batches")
    ap.add_argument("--no-save", action="store_true", help="do not write weights/log (smoke tests)")
    ap.add_argument("--data", default=None, help="directory with the Fashion-MNIST idx files (default: Debian path)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    import_timm()
    recipe = zoo.train_recipe(args.model)
    if args.epochs is not None:
        recipe["epochs"] = args.epochs
    if args.lr is not None:
        recipe["lr"] = args.lr
    if args.amp is not None:
        recipe["amp"] = args.amp
    use_bf16 = recipe["amp"] == "bf16"
    cfg = zoo.model_config(args.model)
    size = cfg["input_size"][-1]

    t0, c0, load0 = time.time(), time.process_time(), os.getloadavg()
    try:
        (xtr, ytr), (xva, yva) = load_train_val(args.data, val_size=5000, seed=args.seed)
        xte, yte = load_fashion_mnist("test", args.data)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    xtr, xva, xte = (resize(to_float(a), size) for a in (xtr, xva, xte))  # [0, 1], 32x32
    ytr, yva, yte = (torch.as_tensor(a) for a in (ytr, yva, yte))

    model = zoo.build_model(args.model)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe["lr"])
    gen = torch.Generator().manual_seed(args.seed)
    bs = recipe["batch_size"]
    steps_per_epoch = len(xtr) // bs
    if args.max_batches:
        steps_per_epoch = min(steps_per_epoch, args.max_batches)
    total = steps_per_epoch * recipe["epochs"]
    print(f"{args.model}: {n_params / 1e6:.3f}M params, {recipe}, {steps_per_epoch} steps/epoch", flush=True)

    history, step = [], 0
    for epoch in range(recipe["epochs"]):
        model.train()
        te = time.time()
        perm = torch.randperm(len(xtr), generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(steps_per_epoch):
            idx = perm[i * bs:(i + 1) * bs]
            xb, yb = normalize(random_crop_flip(xtr[idx], CROP_PAD, gen)), ytr[idx]
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, recipe["lr"], recipe["warmup"])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(xb)
                loss = F.cross_entropy(logits, yb, label_smoothing=recipe["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.item() * len(yb)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(yb)
            if i % 100 == 0:
                print(f"  epoch {epoch + 1} step {i}/{steps_per_epoch} loss {loss.item():.4f} "
                      f"({time.time() - te:.0f}s)", flush=True)
        val = accuracy(model, xva, yva)
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                        "val_acc": val, "seconds": time.time() - te, "load_avg_1min": os.getloadavg()[0]})
        print(f"epoch {epoch + 1}/{recipe['epochs']}: train loss {loss_sum / seen:.4f} acc {correct / seen:.4f} "
              f"val acc {val:.4f} ({time.time() - te:.0f}s, total {time.time() - t0:.0f}s)", flush=True)

    train_seconds, train_cpu_seconds = time.time() - t0, time.process_time() - c0
    state = fp16_state(model)
    test_fp32 = accuracy(model, xte, yte)
    eval_model = zoo.build_model(args.model)
    eval_model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    test_acc = accuracy(eval_model, xte, yte)
    print(f"test acc {test_acc:.4f} (fp16 weights; fp32 {test_fp32:.4f}); wall {time.time() - t0:.0f}s", flush=True)

    if not args.no_save:
        log = {
            "model": args.model, "family": cfg["family"], "params": n_params,
            "input_size": list(cfg["input_size"]), "recipe": recipe, "seed": args.seed,
            "augmentation": f"zero-pad {CROP_PAD} px + random crop back (translations -{CROP_PAD}..+{CROP_PAD} px), "
                            "horizontal flip p=0.5",
            "optimizer": "AdamW, one-cycle (linear warm-up, cosine decay) per step, no decay on norms/biases",
            "split": {"train": len(xtr), "val": len(xva), "test": len(xte), "val_from": "train split, seeded"},
            "history": history, "val_acc": history[-1]["val_acc"] if history else None,
            "test_acc": test_acc, "test_acc_fp32": test_fp32,
            # wall time depends on what else runs on the machine; CPU time (process_time, all threads)
            # is the compute actually used, and equals uncontended wall time at --threads 1.
            "train_seconds": train_seconds, "train_cpu_seconds": train_cpu_seconds,
            **run_record(t0, c0, load0[0], ("timm",)),
        }
        wpath = zoo.CATALOG.save(args.model, state, log)
        print(f"saved {wpath} ({wpath.stat().st_size / 1e6:.2f} MB) and logs/{args.model}.json", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
