"""Sharding an evaluation across processes with torch.distributed (``torchrun``).

``torchrun --nproc-per-node N -m undiscard eval ...`` starts N processes with ``WORLD_SIZE``/``RANK``
set; each evaluates every N-th image (:class:`ShardSampler`, ``DistributedSampler``'s split without its
padding or shuffling; the search is per image and independent of batch composition, so the union is the
single-process evaluation), the exact counts are summed with ``all_reduce``, and only rank 0 prints or
writes files. Backend: gloo on CPU, nccl on CUDA.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..metrics.tally import FLAGS

__all__ = ["setup", "teardown", "ShardSampler", "sum_counts", "gather_lists", "is_main"]


def setup(device: torch.device) -> tuple[int, int]:
    """Join the process group if launched by torchrun; return (rank, world size) — (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        # torch.distributed.nn.functional binds ``group=group.WORLD`` as default arguments when first imported
        # (torch._dynamo imports it, so loading a timm/torchvision model does). Imported after the group
        # exists, it holds the group forever: destroy_process_group then cannot free it, its gloo worker
        # threads outlive the interpreter, and one that releases a finished collective's Python tensors
        # during shutdown is killed while holding C++ frames -> "terminate called without an active
        # exception" (SIGABRT) in a run that had already printed its results. Import it first.
        import torch.distributed.nn.functional  # noqa: F401
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def teardown(wait: bool = True) -> None:
    """Leave the process group, which frees it and joins its worker threads.

    ``wait`` first waits for every process to get here (pass False on an error path, where the others may
    never arrive and torchrun stops them instead).
    """
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


class ShardSampler(Sampler[int]):
    """Dataset indices ``rank, rank + world, ...`` below ``n``: the split of ``torch.utils.data.
    DistributedSampler(shuffle=False)``, without its padding to equal shard sizes (a padded image would
    be counted twice) — every index is in exactly one shard, and each index keeps its global value, so
    whatever is drawn per image (the shift offsets of ``eval``) is the same however the run is sharded."""

    def __init__(self, n: int, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def sum_counts(counts: list[dict[str, float]]) -> list[dict[str, float]]:
    """Sum each dict of counts over all processes (exact: float64 sums of integers and costs)."""
    if not dist.is_initialized():
        return counts
    keys = list(counts[0])
    t = torch.tensor([[c[k] for k in keys] for c in counts], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    summed = [dict(zip(keys, row.tolist())) for row in t]
    for c in summed:  # flags, not counts (undiscard.metrics.tally.FLAGS)
        for flag in FLAGS:
            if flag in c:
                c[flag] = float(c[flag] > 0)
    return summed


def gather_lists(items: list[Any]) -> list[Any]:
    """Concatenate a list from every process (rank order)."""
    if not dist.is_initialized():
        return items
    out: list[list[Any]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]
