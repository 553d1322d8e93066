"""Peak memory and time of ``undiscard calibrate`` as the number of images grows (a subprocess per run).

Each run is ``python -m undiscard calibrate ARGS --limit N`` in a child process; its peak resident memory is
the child's ``ru_maxrss`` (``resource.getrusage(RUSAGE_CHILDREN)``, read after it exits: runs are measured one
at a time, each in a fresh interpreter through ``--one``), its time the wall clock. With a label-free
objective ``--data`` is any folder of images; otherwise a labelled folder DIR/CLASS/IMAGE.

    python benchmarks/bench_calibrate_memory.py --limits 5,10,20 -- --model efficientnet-lite0 \\
        --objective consistency --data undiscard/data/photos/calibration --pairs-per-image 2 --threads 1
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from undiscard.evaluation.report import stamp


def one(limit: int, rest: list[str]) -> dict:
    """Run one calibration in a child process; its peak RSS (MiB), seconds and the order's own record."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "order.json"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "undiscard", "calibrate", *rest, "--limit", str(limit),
                               "--out", str(out), "--quiet"], capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "calibrate failed")
        meta = json.loads(out.read_text())["meta"]
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"limit": limit, "images": meta["images"], "peak_rss_mb": peak, "seconds": seconds,
            "calibrate_seconds": meta.get("seconds"), "store_mb": meta.get("store_mb")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limits", default="5,10,20", help="comma-separated --limit values")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # internal: one run, JSON out
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="-- then the arguments of undiscard calibrate")
    args = ap.parse_args()
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    if args.one is not None:
        print(json.dumps(stamp(one(args.one, rest))))
        return
    rows = []
    for limit in (int(v) for v in args.limits.split(",")):  # each in its own interpreter: ru_maxrss is per child
        proc = subprocess.run([sys.executable, __file__, "--one", str(limit), "--", *rest], capture_output=True,
                              text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"--limit {limit:4d}: {r['images']:5d} images  peak RSS {r['peak_rss_mb']:7.0f} MiB  "
              f"{r['seconds']:7.1f} s  store {r['store_mb'] or 0:7.1f} MiB", flush=True)
    print(json.dumps(stamp({"rows": rows}), indent=1))


if __name__ == "__main__":
    main()
