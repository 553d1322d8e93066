"""`undiscard.evaluation.distributed`: sharding helpers, and a process group that really ends when torchrun's children do."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from undiscard.evaluation import distributed

CHILD = textwrap.dedent("""
    import json, os, sys
    import torch
    from undiscard.evaluation import distributed

    rank, world = distributed.setup(torch.device("cpu"))
    import torch._dynamo  # what loading a timm/torchvision model imports, after the group exists
    counts = distributed.sum_counts([{"n": 1.0 + rank, "shifted": float(rank)}])
    ranks = distributed.gather_lists([rank])
    distributed.teardown()
    threads = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
    report = {"rank": rank, "world": world, "counts": counts, "ranks": ranks, "threads": threads}
    with open(os.path.join(os.path.dirname(__file__), f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script: str, nproc: int, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "child.py"
    path.write_text(script)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(path)],
                          capture_output=True, text=True, timeout=300, env=env)


def test_shard_is_a_partition():
    items = list(range(11))
    parts = [list(distributed.ShardSampler(len(items), r, 3)) for r in range(3)]
    assert sorted(x for p in parts for x in p) == items
    assert parts[1] == [1, 4, 7, 10]


def test_single_process_helpers_are_identities():
    assert distributed.setup(torch.device("cpu")) == (0, 1)
    counts = [{"n": 3.0}]
    assert distributed.sum_counts(counts) is counts
    assert distributed.gather_lists([1, 2]) == [1, 2]
    assert distributed.is_main()
    distributed.teardown()  # not initialized: nothing to do


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread names from /proc (Linux)")
def test_teardown_frees_the_group_and_its_threads(tmp_path):
    """Regression: torch.distributed.nn.functional, imported after init (torch._dynamo imports it), kept the
    group alive through default arguments, so its gloo worker threads outlived teardown and one of them
    could abort the interpreter at exit (SIGABRT after the results were printed: 6 of 72 runs)."""
    proc = torchrun(CHILD, 2, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in reports] == [0, 1] and all(r["world"] == 2 for r in reports)
    for r in reports:
        assert r["counts"] == [{"n": 3.0, "shifted": 1.0}]  # summed; "shifted" is a flag
        assert r["ranks"] == [0, 1]
        assert not [t for t in r["threads"] if "gloo" in t], r["threads"]
