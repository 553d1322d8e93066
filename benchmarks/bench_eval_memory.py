"""Peak memory of ``undiscard eval`` against the number of images: it must stay flat.

Writes N random 256x256 RGB PNGs into ``--root`` (10 class folders), then runs
``undiscard eval --model torchvision:mobilenet_v3_small --budget 1 --shift 4`` on them (224-px input,
random weights: memory, not accuracy, is measured) in a fresh process per N, and reports the peak
resident set size of the largest process (``getrusage(RUSAGE_CHILDREN).ru_maxrss``: the eval process
or one of its loader workers) and the wall time. Never a timed test; figures go to benchmarks/README.md.

    python benchmarks/bench_eval_memory.py --sizes 500,2000 --workers 0,2
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def make_folder(root: Path, n: int) -> Path:
    from PIL import Image

    d = root / f"n{n}"
    if d.is_dir() and sum(1 for _ in d.rglob("*.png")) == n:
        return d
    rng = np.random.default_rng(0)
    for i in range(n):
        c = d / f"class{i % 10}"
        c.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # smooth-ish content, compresses like a photo
        Image.fromarray(small).resize((256, 256), Image.Resampling.BILINEAR).save(c / f"{i:05d}.png")
    return d


def measure(folder: Path, workers: int, batch_size: int) -> tuple[float, float]:
    """(peak RSS in MiB of the largest process, wall seconds) of one eval run in a fresh process."""
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t, r.returncode)")
    cmd = [sys.executable, "-m", "undiscard", "eval", "--model", "torchvision:mobilenet_v3_small", "--data",
           str(folder), "--budget", "1", "--shift", "4", "--batch-size", str(batch_size), "--workers", str(workers),
           "--quiet", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, env=env, check=True)
    kib, seconds, rc = out.stdout.split()
    if rc != "0":
        raise SystemExit(f"eval failed: {out.stderr[-2000:]}")
    return int(kib) / 1024, float(seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="500,2000")
    p.add_argument("--workers", default="0,2")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--root", type=Path, default=Path("/tmp/undiscard_bench_images"))
    args = p.parse_args()
    print("| images | --workers | peak RSS, largest process (MiB) | wall (s) |")
    print("|--:|--:|--:|--:|")
    for n in (int(s) for s in args.sizes.split(",")):
        folder = make_folder(args.root, n)
        for w in (int(s) for s in args.workers.split(",")):
            rss, seconds = measure(folder, w, args.batch_size)
            print(f"| {n} | {w} | {rss:.0f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
