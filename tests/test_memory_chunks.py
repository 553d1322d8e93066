"""``chunk_size`` bounds the rows of every pass and changes no result.

- The chosen states are the same for chunk_size 1, 7 and 256, and the outputs equal to float64 rounding
  (rtol = atol = 1e-12), for a classifier (entropy and offset criteria, budget 8; calibrated) and a dense
  model. Not bit for bit: a pass of other rows is a matrix product of another shape, and which BLAS or
  oneDNN kernel runs (and how it rounds a row) depends on the shape and on the CPU — an AVX-512 Xeon with
  1 or 2 threads rounds differently from the CPU these tests were written on (``MKL_CBWR=COMPATIBLE``
  shows it here). Bit-for-bit equality is asserted only where one kernel runs on one shape: budget 1
  against ``net(x)``, elsewhere in the suite.
- Every pass after the root runs at most ``chunk_size`` rows; the root runs the whole batch, as the
  plain forward does.
- After stacking, the candidates hold views of the stacked tensors (the features are kept once).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import undiscard
from undiscard.search._candidates import stack_candidates

pytestmark = pytest.mark.usefixtures("one_thread")
CHUNKS = (1, 7, 256)


def classifier() -> nn.Module:
    """Four stride-2 units (a maxpool among them); global pooling and a linear head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval().double()


class TinySeg(nn.Module):
    """Two strided convs and a bilinear upsampling back to the input size: (N, K, H, W) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 6, 3, 2, 1), nn.Conv2d(6, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 2, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.c(F.relu(self.b(F.relu(self.a(x))))))
        return F.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear", align_corners=False)


def batch(n: int = 9, size: int = 32) -> Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def _runs(make, x: Tensor) -> list[tuple[Tensor, list]]:
    with torch.no_grad():
        return [(m(x), m.search(x)) for m in (make(c) for c in CHUNKS)]


@pytest.mark.parametrize("criterion", ["entropy", "offset"])
def test_classification_outputs_do_not_depend_on_chunk_size(criterion):
    net, x = classifier(), batch()
    runs = _runs(lambda c: undiscard.wrap(net, budget=8, criterion=criterion, units=[0, 1, 2, 3], chunk_size=c), x)
    (ref, states), rest = runs[0], runs[1:]
    if criterion == "entropy":
        assert len({s for per in states for s in per}) > 8  # images chose different states
    for out, st in rest:
        assert st == states  # the search itself does not depend on the chunk size
        # passes of other row counts are matrix products of other shapes: equal to float64 rounding
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_calibrated_outputs_do_not_depend_on_chunk_size():
    """Listed states run rows from a cut (images x states per pass), so each chunk size makes passes of
    other row counts, whose matrix products BLAS may round differently (a 1-row pass is even a
    matrix-vector product): every chunk size gives the same outputs to float64 rounding."""
    net, x = classifier(), batch(8)
    order = [(0, 0, 0), (1, 0, 0), (0, 2, 0), (0, 0, 3), (3, 1, 0), (0, 1, 2), (2, 0, 1), (1, 1, 1)]
    with torch.no_grad():
        outs = {c: undiscard.wrap(net, budget=8, criterion="calibrated", order=order, units=[0, 1, 2],
                                  chunk_size=c)(x) for c in (1, 2, 4, 256)}
    for c in (1, 2, 4):
        torch.testing.assert_close(outs[c], outs[256], rtol=1e-12, atol=1e-12)


def test_dense_outputs_do_not_depend_on_chunk_size():
    torch.manual_seed(0)
    net, x = TinySeg().eval().double(), batch(5)
    runs = _runs(lambda c: undiscard.wrap(net, budget=6, task="segmentation", units=[0, 1, 2], chunk_size=c), x)
    assert runs[0][0].shape == (5, 4, 32, 32)
    for out, st in runs[1:]:
        assert st == runs[0][1]
        torch.testing.assert_close(out, runs[0][0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 4, 7, 13])
@pytest.mark.parametrize("criterion", ["entropy", "offset", "calibrated"])
def test_passes_stay_within_chunk_size(chunk, criterion):
    net, x = classifier(), batch()
    order = [(0, 0, 0), (1, 0, 0), (0, 2, 0), (0, 0, 3), (3, 1, 0), (0, 1, 2)]
    model = undiscard.wrap(net, budget=6, criterion=criterion, units=[0, 1, 2], chunk_size=chunk,
                           order=order if criterion == "calibrated" else None)
    engine = model.prepare(x)
    passes: list[tuple[int | None, int]] = []
    handle = engine.register_cost_hook(lambda depth, rows, flops, ideal: passes.append((depth, rows)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    assert passes[0] == passes[-1] == (None, 9)  # the root (the whole batch, like net(x)); the final head
    assert len(passes) > 3
    for depth, rows in passes[1:-1]:  # rows: the states evaluated (images x states for listed states)
        assert 1 <= rows <= chunk, (depth, rows)


def test_candidates_share_the_stacked_storage():
    net, x = classifier(), batch(4)
    model = undiscard.wrap(net, budget=5, units=[0, 1, 2], chunk_size=4)
    with torch.no_grad():
        cands = model.candidates(x)
        before = [[c.features.clone() for c in per] for per in cands]
        feats, logits, _ = stack_candidates(cands, cands.engine)
    for i, per in enumerate(cands):
        for j, c in enumerate(per):
            assert c.features.data_ptr() == feats[i, j].data_ptr() and c.logits.data_ptr() == logits[i, j].data_ptr()
            assert torch.equal(c.features, before[i][j])
    assert stack_candidates(cands, cands.engine)[0] is feats  # stacked once


def test_float32_outputs_agree_across_chunk_sizes_to_rounding():
    """float32 kernels (oneDNN, BLAS) may round a row differently in a batch of another size: the same
    states, outputs equal to float32 rounding."""
    net, x = classifier().float(), batch().float()
    runs = _runs(lambda c: undiscard.wrap(net, budget=8, units=[0, 1, 2, 3], chunk_size=c), x)
    for out, st in runs[1:]:
        torch.testing.assert_close(out, runs[0][0], rtol=1e-5, atol=1e-5)
