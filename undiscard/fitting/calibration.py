"""Calibration: ranking a model's states once on a split that is never the test set (``undiscard calibrate``).

:func:`calibrate` makes a :class:`~undiscard.search.orders.StateOrder` (the ranked states that
``criterion="calibrated"`` evaluates in order): every state of the searched units is evaluated on the
calibration images, then states are added greedily, each time the one whose addition gives the aggregate
(the model's own ``aggregate``/``align``) the best score — with labels, the highest top-1 accuracy (ties by
the lower mean negative log-likelihood, then by the state's index); states left after ``greedy`` steps
follow by their own score. ``stop`` is the shortest greedy prefix with the best aggregate score
(``stop=False``: none), so a model whose discarded phases do not help it (the zoo's Swin) is searched
little or not at all. Without labels, ``objective="consistency"`` (or the smooth ``"agreement"``, ``"kl"``:
:mod:`undiscard.fitting.objectives`) ranks by how alike the aggregate's predictions are on pairs of views
of the same scenes displaced by a few pixels. The states are kept on disk while they are ranked
(:mod:`undiscard.data.store`, :mod:`undiscard.fitting._state_ranking`), so memory stays bounded at any
number of images. ``undiscard calibrate`` (:mod:`undiscard.cli.calibrate`) writes one as a small JSON file;
``scripts/calibrate_zoo.py`` writes one per zoo model to ``undiscard/zoo/orders/NAME.json``
(:func:`~undiscard.search.orders.zoo_order_path`), ranked on the 5,000 held-out validation images of the
training split.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import Tensor

from ..data.store import StateStore
from ..errors import UndiscardError
from ..search._candidates import find_candidates, stack_candidates
from ..search.criteria import SearchContext, get_criterion
from ..search.orders import StateOrder, all_states, model_fingerprint
from ..tasks.aggregation import get_aggregate
from ..tasks.base import StateMaps
from ._state_ranking import rank_states, working_rows
from .objectives import get_objective

if TYPE_CHECKING:  # type hints only
    from ..wrapper import Undiscard

__all__ = ["calibrate", "best_prefix"]


def best_prefix(curve: Sequence[float]) -> int:
    """The length of the shortest prefix of a greedy order with the highest accuracy (``curve[k]``: the
    aggregate's accuracy with the first k + 1 states)."""
    return 1 + max(range(len(curve)), key=lambda k: (curve[k], -k))


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (``ru_maxrss``: KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rows(images: Tensor, labels: Tensor | None, shifted: Tensor | None, pairs: bool,
          name: str) -> tuple[int, Callable[[int, int], Tensor]]:
    """The number of rows calibration evaluates and how to read rows ``a..b-1``: ``images``' rows, or for a
    pair objective ``images`` and ``shifted`` interleaved (row 2i is image i, row 2i+1 its displaced view; ``a``
    and ``b`` even). ``images`` and ``shifted`` may be any tensors sliced by rows (a file-backed
    :class:`~undiscard.data.store.DiskTensor`): only the rows asked for are read. One UndiscardError for
    inputs that do not fit the objective."""
    n = int(images.shape[0])
    if pairs:
        if shifted is None or tuple(shifted.shape) != tuple(images.shape) or n < 1:
            raise UndiscardError(f"objective {name!r} needs pairs of views: images and shifted= of the same shape "
                                 f"(the same scenes displaced by a few pixels), got "
                                 f"{None if shifted is None else tuple(shifted.shape)} for {tuple(images.shape)}")
        return 2 * n, lambda a, b: torch.stack([images[a // 2:b // 2], shifted[a // 2:b // 2]], 1).flatten(0, 1)
    if labels is None or n < 1 or n != labels.shape[0]:
        raise UndiscardError(f"calibration needs labelled images: got {n} images and "
                             f"{0 if labels is None else labels.shape[0]} labels (objective='consistency' needs none)")
    return n, lambda a, b: images[a:b]


@torch.no_grad()
def calibrate(model: "Undiscard", images: Tensor, labels: Tensor | None = None, greedy: int = 16,
              batch_size: int = 256, progress: Callable[[int], None] | None = None, meta: dict[str, Any] | None = None,
              stop: bool = True, dtype: torch.dtype | None = None, *, objective: str = "accuracy",
              shifted: Tensor | None = None, memory_mb: float = 1024, workdir: str | Path | None = None) -> StateOrder:
    """Rank the states of ``model``'s searched units on ``images`` (N, C, H, W).

    ``objective`` (:mod:`undiscard.fitting.objectives`): ``"accuracy"`` (default) needs ``labels`` ((N,) classes;
    (N, H, W) label maps for a dense task) and ranks by the task's score (top-1; mIoU for segmentation);
    ``"consistency"``, ``"agreement"`` and ``"kl"`` need no labels but ``shifted`` (N, C, H, W): the same
    scenes displaced by a few pixels of real content, and rank by how alike the aggregate's predictions on
    the two views are (top-1 agreement; the probability they agree; minus the symmetric KL).

    Every state is evaluated on every image, batch by batch (``progress(images done)`` after each), aligned
    as the model aggregates (its ``aggregate``, ``align`` and aggregator), and written to a
    :class:`~undiscard.data.store.StateStore` (memory-mapped files in a temporary directory under
    ``workdir``; maps and logits kept in ``dtype``, e.g. ``torch.float16``, each combination computed in
    float32); then ranked by :func:`~undiscard.fitting._state_ranking.rank_states` (``progress(1)`` per greedy step),
    streaming the store a chunk of images at a time. Batches and chunks are sized from ``memory_mb`` (and at
    most ``batch_size`` images), never from N, so memory stays bounded at any number of images. With
    ``stop``, the order's ``stop`` is :func:`best_prefix` of the greedy scores. ``meta`` is added to the
    order's record, which also says what it cost: ``seconds``, ``peak_rss_mb`` (this process's peak so far),
    ``store_mb`` and the rows per batch and chunk."""


    t0 = time.perf_counter()
    goal = get_objective(objective)
    n, rows_of = _rows(images, labels if goal.needs_labels else None, shifted, goal.pairs, objective)
    device = next((p.device for p in model.net.parameters()), torch.device("cpu"))
    first = rows_of(0, 2 if goal.pairs else 1).to(device)[:1]
    engine = model.prepare(first)
    units = engine.search_units
    if not units:
        raise UndiscardError("no unit is searched: there is nothing to calibrate")
    states = all_states(units)
    full = StateOrder(states, [u.name for u in units])
    ctx = SearchContext.of(engine, model.task, model.seed, full)
    task = model.task
    entropy = model.aggregate == "entropy"  # each state's entropies once, not once per subset combined
    budget, s = int(memory_mb * 2 ** 20), len(states)
    with torch.no_grad():  # per-row sizes from one image: native features, logits (the maps are as large)
        probe = engine.split.features(first)
        out = engine.split.head(probe)
    feature, output = probe[0].numel() + out[0].numel(), out[0].numel()
    # evaluation: the search's features, their aligned copies and the maps, all states, in float32; the search
    # itself runs at most ``search`` rows (images x states) per pass (~32 input-sized activations each)
    evaluate = working_rows(budget // 2, s * 4 * (3 * feature + 2 * output), batch_size, even=goal.pairs)
    search = working_rows(budget // 2, 32 * 4 * first[0].numel(), model.chunk_size)
    store = StateStore(n, dtype, workdir)
    stride = None
    try:
        for start in range(0, n, evaluate):
            x = rows_of(start, min(n, start + evaluate)).to(device)
            cands = find_candidates(engine, x, s, get_criterion("calibrated"), ctx, chunk_size=search)
            f, lg, off = stack_candidates(cands, engine)
            aligned = task.aligned_states(engine, f, lg, off, model.align)  # once: each state aligns on its own
            del cands, f  # only the aligned maps are combined: the batch's native features are freed here
            if entropy:
                aligned = task.with_entropy(aligned, lg)
            store.write(start, {"maps": aligned.maps, "extra": aligned.extra, "logits": lg},
                        {"entropy": aligned.entropy, "offsets": off})
            stride = aligned.stride
            del aligned, lg, off
            if progress is not None:
                progress(x.shape[0])
        how = get_aggregate(model.aggregate)
        targets = labels.long() if goal.needs_labels and labels is not None else None

        if targets is not None:
            targets = targets.to(device)

        def read(key: str, rows: slice) -> Tensor | None:  # combinations are computed in float32 at least
            t = store.read(key, rows)
            return None if t is None else (t.float() if t.dtype == torch.float16 else t).to(device)

        def chunk(rows: slice) -> tuple[StateMaps, Tensor, Tensor]:
            maps, logits, offsets = read("maps", rows), read("logits", rows), read("offsets", rows)
            assert maps is not None and logits is not None and offsets is not None
            return StateMaps(maps, read("extra", rows), stride, read("entropy", rows)), logits, offsets

        def combine(maps: StateMaps, logits: Tensor, offsets: Tensor, idx: list[int]) -> Tensor:
            return task.combine_aligned(engine, how, maps.select(idx), logits[:, idx], offsets[:, idx],
                                        model.aggregator)

        rows = working_rows(budget, 2 * s * 4 * feature, 1 << 16, even=goal.pairs)
        ranked = rank_states(store, chunk, combine, goal, task, targets, s, greedy, rows, progress)
        store_mb, max_rows = store.nbytes / 2 ** 20, store.max_rows
    finally:
        store.close()
    curve = ranked.curve
    record = {"images": int(images.shape[0]), "aggregate": model.aggregate, "align": bool(model.align),
              "task": task.resolved_name, "objective": objective,
              "greedy_steps": len(curve) - 1, "greedy_accuracy": curve, "greedy_tiebreak": ranked.ties,
              "state_accuracy": {",".join(map(str, states[r])): ranked.own[r][0] for r in ranked.positions},
              "method": (f"greedy: each step adds the state that makes the aggregate score best by {objective!r}"
                         + (" (label-free, on pairs of views)" if goal.pairs else "")),
              "seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb(), "store_mb": store_mb,
              "rows_per_batch": evaluate, "rows_per_search_pass": search, "rows_per_chunk": rows,
              "max_rows_in_memory": max_rows}
    record.update(meta or {})
    if not all(math.isfinite(a) for a in curve):
        raise UndiscardError("calibration produced non-finite scores")
    return StateOrder([states[r] for r in ranked.positions], full.units, record, best_prefix(curve) if stop else None,
                      model_fingerprint(model.net, units))
