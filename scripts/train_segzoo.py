"""Train one model of the segmentation zoo on Fashion-MNIST canvases; save fp16 weights and a JSON log.

    python scripts/train_segzoo.py --model seg_fpn [--epochs E] [--seed 0] [--threads 1]
    python scripts/train_segzoo.py --model seg_fpn --probe 30     # throughput only, nothing saved
    torchrun --nproc-per-node 2 scripts/train_segzoo.py --model seg_fpn ...   # data-parallel, one core each

Recipe (per-model values in ``undiscard.zoo.segmentation.train_recipe``): every epoch draws
``canvases_per_epoch`` *fresh* train canvases (``canvas_generator("train", seed)``, indices continuing
across epochs, objects from the 55k Fashion-MNIST train images), so the placement of objects is the
translation augmentation; each canvas is also flipped horizontally with probability ``flip``.
AdamW (no decay on norms and biases), one-cycle schedule (torch OneCycleLR: cosine warm-up over
``warmup`` of the steps, cosine decay), stepped per batch; per-pixel cross-entropy over 11 classes.
``amp="bf16"``: the forward pass runs under CPU bfloat16 autocast with channels_last tensors (fp32
weights and optimizer state; evaluation is always fp32). Validation mIoU / pixel accuracy every epoch
on 500 canvases of the val split (objects from the 5k held-out train images); at the end the test mIoU,
pixel accuracy, per-class IoU and boundary F1 on the bundled 2,000-canvas test split, measured with
the saved fp16 weights. Everything is seeded (torch.manual_seed, one torch.Generator for data order
and flips, the canvases' own SeedSequence). The log records wall time, process CPU time (all threads)
and the 1-minute load average, since the 2 cores may be shared.
Outputs: undiscard/zoo/weights/NAME.pt (fp16 state_dict), undiscard/zoo/logs/NAME.json.

Under ``torchrun`` (gloo, one thread per process) every process trains a different ``batch_size`` of
canvases per step (the global batch is ``batch_size`` x processes; DistributedDataParallel averages the
gradients), so an epoch of ``canvases_per_epoch`` takes 1/processes of the steps; rank r flips with seed
``seed + r`` (rank 0's stream is the single-process one). Only rank 0 validates, tests, prints and saves;
the train loss and pixel accuracy it logs are its own share of the batches, the CPU time is summed over ranks.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from undiscard.data import segmentation as segdata
from undiscard.evaluation import distributed
from undiscard.metrics import segmentation as segmetrics
from undiscard.zoo import segmentation as segzoo
from undiscard.zoo.catalog import fp16_state, run_record

VAL_CANVASES = 500


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: np.ndarray, masks: np.ndarray, bs: int = 100) -> dict:
    """fp32 scores of ``model`` on canvases (N, H, W) uint8 with label maps: miou, pixel_acc, iou (per
    class), boundary_f1 (class-agnostic, 1 px tolerance)."""
    model.eval()
    cm = segmetrics.ConfusionMatrix(segdata.NUM_CLASSES, segdata.IGNORE_INDEX)
    bcounts = torch.zeros(4, dtype=torch.int64)
    for i in range(0, len(images), bs):
        pred = model(segdata.to_input(images[i:i + bs])).argmax(1)
        target = torch.as_tensor(masks[i:i + bs]).long()
        cm.update(pred, target)
        bcounts += segmetrics.boundary_counts(pred, target, tolerance=1)
    return {"miou": cm.miou, "pixel_acc": cm.acc, "iou": [round(float(v), 6) for v in cm.iou],
            "boundary_f1": segmetrics.boundary_f1(bcounts)}


def train_batch(gen: segdata.CanvasGenerator, start: int, bs: int, flip_p: float, g: torch.Generator):
    """Fresh train canvases start..start+bs-1, each flipped horizontally with probability ``flip_p``:
    (input float (B, 1, S, S) normalised, target int64 (B, S, S))."""
    images, masks = gen.batch(range(start, start + bs))
    x, y = segdata.to_input(images), torch.as_tensor(masks).long()
    flip = torch.rand(bs, generator=g) < flip_p
    x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
    return x, y


def main() -> int:
    ap = argparse.ArgumentParser(description="Train one undiscard segmentation zoo model on Fashion-MNIST canvases.")
    ap.add_argument("--model", required=True, choices=segzoo.list_models())
    ap.add_argument("--epochs", type=int, default=None, help="default: the model's recipe")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads (default 1: on a shared 2-core machine 2 threads ran 7x slower per CPU-second)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="per process (default: the model's recipe)")
    ap.add_argument("--canvases-per-epoch", type=int, default=None, help="over all processes (default: the recipe)")
    ap.add_argument("--amp", choices=["fp32", "bf16"], default=None)
    ap.add_argument("--probe", type=float, default=None, metavar="SECONDS",
                    help="measure training throughput for this many seconds, print the projected time, save nothing")
    ap.add_argument("--max-batches", type=int, default=None, help="smoke test: stop each epoch after this many batches")
    ap.add_argument("--no-save", action="store_true", help="do not write weights/log (smoke tests)")
    ap.add_argument("--data", default=None, help="directory with the Fashion-MNIST idx files (default: Debian path)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rank, world = distributed.setup(torch.device("cpu"))
    try:
        return train(args, rank, world)
    finally:
        distributed.teardown()


def train(args: argparse.Namespace, rank: int, world: int) -> int:
    main = rank == 0
    recipe = segzoo.train_recipe(args.model)
    for key in ("epochs", "lr", "amp", "batch_size", "canvases_per_epoch"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    bf16 = recipe["amp"] == "bf16"
    fmt = torch.channels_last if bf16 else torch.contiguous_format

    t0, c0, load0 = time.time(), time.process_time(), os.getloadavg()
    try:
        train_gen = segdata.canvas_generator("train", seed=args.seed, root=args.data)
        val_images, val_masks = segdata.canvas_generator("val", seed=args.seed, root=args.data).batch(range(VAL_CANVASES))
        test_images, test_masks = segdata.load_seg_test()
        test_info = segdata.seg_test_info()
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    model = segzoo.build_model(args.model).to(memory_format=fmt)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe["lr"])
    bs, cpe = recipe["batch_size"], recipe["canvases_per_epoch"]
    steps_per_epoch = cpe // (bs * world)
    if args.max_batches:
        steps_per_epoch = min(steps_per_epoch, args.max_batches)
    total = steps_per_epoch * recipe["epochs"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=max(total, 1),
                                                pct_start=recipe["warmup"], anneal_strategy="cos",
                                                cycle_momentum=False, div_factor=25.0, final_div_factor=1e3)
    g = torch.Generator().manual_seed(args.seed + rank)
    if main:
        print(f"{args.model}: {n_params / 1e6:.3f}M params, {recipe}, {steps_per_epoch} steps/epoch"
              + (f" on each of {world} processes" if world > 1 else ""), flush=True)

    def step(start: int) -> tuple[float, int, int]:
        x, y = train_batch(train_gen, start, bs, recipe["flip"], g)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = net(x.contiguous(memory_format=fmt))
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return loss.item(), int((logits.argmax(1) == y).sum()), y.numel()

    if args.probe:
        model.train()
        step(0)  # warm-up (allocations, oneDNN kernel selection)
        tp, cp, n = time.time(), time.process_time(), 0
        while time.time() - tp < args.probe:
            step(((n + 1) * world + rank) * bs)
            n += 1
        wall, cpu = time.time() - tp, time.process_time() - cp
        if not main:
            return 0
        n *= world  # every process trained as many canvases
        need, cpu = recipe["epochs"] * steps_per_epoch * bs * world, cpu * world
        print(f"probe {args.model}: {n * bs / wall:.1f} canvases/s wall, {n * bs / cpu:.1f} per CPU-second "
              f"(load {os.getloadavg()[0]:.2f}); recipe = {need} canvases: {need / (n * bs / wall) / 60:.1f} min wall "
              f"here, {need / (n * bs / cpu) / 60:.1f} CPU-min ({need / (n * bs / cpu) / 60 / (args.threads * world):.1f} min "
              f"on {args.threads * world} idle cores)", flush=True)
        return 0

    history = []
    for epoch in range(recipe["epochs"]):
        model.train()
        te, ce = time.time(), time.process_time()
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(steps_per_epoch):
            loss, c, n = step(epoch * cpe + (i * world + rank) * bs)
            loss_sum, correct, seen = loss_sum + loss * bs, correct + c, seen + n
            if i % 25 == 0 and main:
                print(f"  epoch {epoch + 1} step {i}/{steps_per_epoch} loss {loss:.4f} ({time.time() - te:.0f}s)", flush=True)
        if not main:
            continue
        val = evaluate(model, val_images, val_masks)
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / (steps_per_epoch * bs),
                        "train_pixel_acc": correct / seen, "val_miou": val["miou"], "val_pixel_acc": val["pixel_acc"],
                        "seconds": time.time() - te, "cpu_seconds": time.process_time() - ce,
                        "load_avg_1min": os.getloadavg()[0]})
        print(f"epoch {epoch + 1}/{recipe['epochs']}: train loss {loss_sum / (steps_per_epoch * bs):.4f} "
              f"val mIoU {val['miou']:.4f} acc {val['pixel_acc']:.4f} ({time.time() - te:.0f}s, "
              f"total {time.time() - t0:.0f}s, CPU {time.process_time() - c0:.0f}s, load {os.getloadavg()[0]:.2f})",
              flush=True)

    train_seconds, train_cpu_seconds = time.time() - t0, time.process_time() - c0
    if world > 1:
        total_cpu = torch.tensor([train_cpu_seconds], dtype=torch.float64)
        torch.distributed.all_reduce(total_cpu)
        train_cpu_seconds = float(total_cpu)
    if not main:
        return 0
    model = model.to(memory_format=torch.contiguous_format)
    state = fp16_state(model)
    eval_model = segzoo.build_model(args.model)
    eval_model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    test = evaluate(eval_model, test_images, test_masks)
    print(f"test mIoU {test['miou']:.4f} pixel acc {test['pixel_acc']:.4f} boundary F1 {test['boundary_f1']:.4f} "
          f"(fp16 weights); per-class IoU {np.round(test['iou'], 3).tolist()}; wall {time.time() - t0:.0f}s", flush=True)

    if not args.no_save:
        cfg = segzoo.model_config(args.model)
        log = {
            "model": args.model, "family": cfg["family"], "params": n_params,
            "input_size": list(cfg["input_size"]), "recipe": recipe, "seed": args.seed,
            "data": {"canvas": asdict(train_gen.config),
                     "train_canvases_seen": recipe["epochs"] * steps_per_epoch * bs * world,
                     "train_sources": len(train_gen.images), "val_canvases": VAL_CANVASES,
                     "val_sources": "5,000 Fashion-MNIST train images held out (train_val_split seed 0)",
                     "test_canvases": len(test_images), "test_seed": test_info["seed"],
                     "test_sources": "Fashion-MNIST test images"},
            "augmentation": f"fresh canvases every epoch (random object positions, scales, occlusion), "
                            f"horizontal flip p={recipe['flip']}",
            "optimizer": "AdamW, OneCycleLR (cosine warm-up, cosine decay) per step, no decay on norms/biases",
            "loss": "per-pixel cross-entropy, 11 classes, unweighted",
            "history": history, "val_miou": history[-1]["val_miou"] if history else None,
            "test_miou": test["miou"], "test_pixel_acc": test["pixel_acc"], "test_iou": test["iou"],
            "test_boundary_f1": test["boundary_f1"], "class_names": segdata.CLASS_NAMES,
            "train_seconds": train_seconds, "train_cpu_seconds": train_cpu_seconds,
            "load_avg_1min_mean_epochs": float(np.mean([h["load_avg_1min"] for h in history])) if history else None,
            **run_record(t0, c0, load0[0], ("timm",)),
            "smp": sys.modules["segmentation_models_pytorch"].__version__, "processes": world,
        }
        wpath = segzoo.CATALOG.save(args.model, state, log)
        print(f"saved {wpath} ({wpath.stat().st_size / 1e6:.2f} MB) and logs/{args.model}.json", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
