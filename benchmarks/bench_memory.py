"""Peak memory of ``wrap(net, budget=B)`` against ``chunk_size``, with the plain forward as the reference.

Every setting runs in a fresh Python process (``--worker``), which builds the torchvision model (random
weights, seed 0, eval mode), one random batch (seed 1), and then either the plain ``net(x)`` or
``wrap(net, budget=B, chunk_size=C)(x)``, all under ``torch.no_grad()``. It reports the process's peak
resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``: everything, Python and torch included,
the wrapped model's setup too), its RSS just before the call (model and batch built, libraries loaded,
``prepare(x)`` done), the peak RSS during the call alone (``VmHWM`` restarted just before it), the bytes
the search keeps for aggregation (the stacked features and logits of the N x B candidates), and the
largest difference of the output from the first chunk size's output. Never a timed test; the figures go to benchmarks/README.md.

    python benchmarks/bench_memory.py                                  # resnet50, batch 32, 224 px, B=16
    python benchmarks/bench_memory.py --model resnet18 --chunks 4,64,256 --markdown
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _status_mib(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` (peak RSS since the last reset) of this process from /proc, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    """Restart ``VmHWM`` from the current RSS (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def worker(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import torch

    import undiscard
    from undiscard._compat import import_torchvision

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = import_torchvision().models.get_model(args.model, weights=None).eval()
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    kept = 0
    with torch.no_grad():
        if args.chunk:
            model = undiscard.wrap(net, budget=args.budget, chunk_size=args.chunk)
            model.prepare(x)  # setup: the private copy of the net, units, split, chain, FLOP counts
        before = _status_mib("VmRSS")
        _reset_peak()
        t = time.perf_counter()
        if args.chunk == 0:
            out = net(x)
        else:
            cands = model.candidates(x)
            out = model.aggregate_candidates(cands)
            feats, logits, _ = cands.stacked  # stacked once by aggregate_candidates
            kept = feats.numel() * feats.element_size() + logits.numel() * logits.element_size()
        seconds = time.perf_counter() - t
        call_peak = _status_mib("VmHWM")
    torch.save(out, args.save)
    print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "before_mib": before,
                      "call_peak_mib": call_peak, "kept_mib": kept / 2 ** 20, "seconds": seconds}))


def run_one(args: argparse.Namespace, chunk: int, save: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--chunk", str(chunk), "--save", str(save), "--model", args.model,
           "--batch", str(args.batch), "--size", str(args.size), "--budget", str(args.budget),
           "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"worker failed (chunk {chunk}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50", help="a torchvision model name (random weights)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--budget", type=int, default=16)
    p.add_argument("--chunks", default="4,16,64,256", help="chunk sizes to measure (comma-separated)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the rows and the configuration here")
    p.add_argument("--markdown", action="store_true", help="print a GitHub table")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)  # 0: the plain forward
    p.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    import torch

    chunks = [int(c) for c in args.chunks.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ref = None
        for chunk in [0] + chunks:
            save = Path(tmp) / f"out{chunk}.pt"
            row = {"setting": "plain" if chunk == 0 else f"chunk_size={chunk}", "chunk": chunk,
                   **run_one(args, chunk, save)}
            out = torch.load(save)
            if chunk:
                ref = out if ref is None else ref
                row["max_diff"] = float((out - ref).abs().max())
            rows.append(row)
            print(f"{row['setting']}: peak {row['peak_mib']:.0f} MiB", file=sys.stderr, flush=True)
    plain = rows[0]["peak_mib"]
    head = ["setting", "peak RSS (MiB)", "peak - plain (MiB)", "RSS before call (MiB)", "call peak - before (MiB)",
            "kept (MiB)", f"max abs diff to chunk {chunks[0]}", "wall (s)"]
    table = [[r["setting"], f"{r['peak_mib']:.0f}", f"{r['peak_mib'] - plain:+.0f}", f"{r['before_mib']:.0f}",
              f"{r['call_peak_mib'] - r['before_mib']:.0f}",
              f"{r['kept_mib']:.0f}" if r["chunk"] else "-", f"{r['max_diff']:.1e}" if r["chunk"] else "-",
              f"{r['seconds']:.1f}"] for r in rows]
    print(f"{args.model}, batch {args.batch}, {args.size} px, budget {args.budget}, {args.threads} thread(s), "
          f"torch {torch.__version__}")
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---" if i == 0 else "--:" for i in range(len(head))) + "|")
        for r in table:
            print("| " + " | ".join(r) + " |")
    else:
        widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(head)]
        print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        for r in table:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    if args.json:
        from undiscard.evaluation.report import stamp

        args.json.write_text(json.dumps(stamp({"config": vars(args) | {"json": str(args.json)}, "rows": rows}), indent=1,
                                        default=str))


if __name__ == "__main__":
    main()
