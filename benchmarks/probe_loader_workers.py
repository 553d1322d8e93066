"""Resident memory of each loader worker while ``folder_loader`` streams a folder.

Reads the PNG folder ``bench_eval_memory.py`` writes (``--root``, default its N=2000 folder) with the
preprocessing of torchvision's mobilenet_v3_small (224 px) and prints, every 15 batches, the RSS (MiB) of
each live worker process, from ``/proc``. ``--segment 0`` uses one DataLoader for the whole folder (the
loader before workers were restarted per segment), otherwise ``SegmentedLoader`` with that segment
(``folder_loader(..., segment=)``).

    python benchmarks/probe_loader_workers.py --workers 2 --segment 0     # grows with the images read
    python benchmarks/probe_loader_workers.py --workers 2 --segment 512   # bounded by the segment
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from undiscard.cli._data import folder_loader
from undiscard.data.folder import scan_folder
from undiscard.models.loading import load_model


def rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS"))


def children() -> list[int]:
    me = os.getpid()
    with open(f"/proc/{me}/task/{me}/children") as f:
        return [int(p) for p in f.read().split()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("/tmp/undiscard_bench_images/n2000"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--segment", type=int, default=512, help="images per set of workers (0: one loader)")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    pre = load_model("torchvision:mobilenet_v3_small").preprocess
    data = scan_folder(args.root)
    loader = folder_loader(data, list(range(len(data.paths))), pre, batch_size=args.batch_size, workers=args.workers,
                           segment=args.segment)
    for i, _ in enumerate(loader):
        if i % 15 == 0:
            print(f"{i * args.batch_size:6d} images: worker RSS (MiB) {[rss_mib(p) for p in children()]}", flush=True)


if __name__ == "__main__":
    main()
