"""The dense task: ``wrap(seg_net, task="segmentation")`` on (N, K, H, W) logits.

References, all float64:

- a state's output: the *original* network (not the wrapper's copy) with forward hooks that replace each
  searched layer's output by its phase written out from the definition (docs/semantics.md, "Phases"): the layer at
  stride 1 on its input extended past the bottom/right edge by its pad value, sliced ``[dy::R, dx::R]``
  (:func:`dense_phase`) — independent of the phase adapters and of the engine's batched expansions;
- the aggregate: those outputs shifted by hand at output resolution (offset x P output pixels, P the
  rates before the first searched unit; the uncovered rows/columns keep state 0's logits), then averaged
  (``mean``) or weighted per pixel by ``1 - H / log K`` of the shifted logits (``entropy``).
"""
from __future__ import annotations

import math
import warnings
from fractions import Fraction
from typing import Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import undiscard
from undiscard import UndiscardError
from undiscard.analysis.discovery import Unit
from undiscard.analysis.geometry import moved_offsets, output_stride, state_offset
from undiscard.tasks._dense_alignment import reaches
from undiscard.tasks.aggregation import align_filled, align_maps
from undiscard.tasks.base import AutoTask, ClassificationTask
from undiscard.tasks.segmentation import SegmentationTask

pytestmark = pytest.mark.usefixtures("one_thread")
K = 5


# ------------------------------------------------------------------------------------- references
def dense_phase(layer: nn.Module, x: Tensor, phase: int) -> Tensor:
    """Phase ``phase`` of a strided Conv2d / MaxPool2d from its definition: the layer at stride 1 on ``x``
    extended past its bottom/right edge by the pad value (0, -inf), sliced ``[dy::R, dx::R]`` to the
    default output's size."""
    rate = layer.stride if isinstance(layer.stride, int) else layer.stride[0]
    dy, dx = divmod(phase, rate)
    if isinstance(layer, nn.Conv2d):
        default = F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
        ext = F.pad(x, (0, rate - 1, 0, rate - 1))
        dense = F.conv2d(ext, layer.weight, layer.bias, 1, layer.padding, layer.dilation, layer.groups)
    elif isinstance(layer, nn.MaxPool2d):
        default = F.max_pool2d(x, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                               ceil_mode=layer.ceil_mode)
        ext = F.pad(x, (0, rate - 1, 0, rate - 1), value=-math.inf)
        dense = F.max_pool2d(ext, layer.kernel_size, 1, layer.padding, layer.dilation, ceil_mode=layer.ceil_mode)
    else:
        raise TypeError(f"no reference for {type(layer).__name__}")
    ho, wo = default.shape[-2:]
    return dense[..., dy::rate, dx::rate][..., :ho, :wo].contiguous()  # a model may .view() it


def reference_output(net: nn.Module, units: Sequence[Unit], state: Sequence[int], x: Tensor,
                     output=lambda out: out) -> Tensor:
    """The original ``net`` on ``x`` with each searched unit's layers at its phase in ``state`` (hooks)."""
    handles = []
    for unit, phase in zip(units, state):
        for name in unit.layers:
            hook = (lambda p: lambda m, args, out: dense_phase(m, args[0], p))(phase)
            handles.append(net.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            return output(net(x))
    finally:
        for h in handles:
            h.remove()


def shifted_by_hand(out: Tensor, fill: Tensor, dy: int, dx: int) -> Tensor:
    """``out`` (…, H, W) moved down/right by (dy, dx) output pixels, ``fill`` where nothing moves in."""
    res = fill.clone()
    h, w = out.shape[-2:]
    res[..., dy:, dx:] = out[..., :h - dy, :w - dx]
    return res


def check_states(model: undiscard.Undiscard, net: nn.Module, x: Tensor, output=lambda out: out,
                 rtol: float = 1e-7, atol: float = 1e-9) -> list[list[tuple[int, ...]]]:
    """Every searched state's output equals run_state and the hook reference; returns the states."""
    cands = model.candidates(x)
    for i, per in enumerate(cands):
        for c in per:
            xi = x[i:i + 1]
            ref = reference_output(net, model.search_units, c.state, xi, output)[0]
            torch.testing.assert_close(c.logits, ref, rtol=rtol, atol=atol)
            torch.testing.assert_close(model.run_state(xi, c.state)[0], ref, rtol=rtol, atol=atol)
    return [[c.state for c in per] for per in cands]


# ------------------------------------------------------------------------------------- networks
class TinyUNet(nn.Module):
    """A U-Net: a residual downsampling block (strided conv + strided 1x1 shortcut: one unit), a max-pool,
    a strided conv; the decoder reads the stride-2 and stride-1 activations through skips and upsamples
    (nearest, then bilinear) back to the input's resolution."""

    def __init__(self, k: int = K):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.shortcut = nn.Conv2d(4, 6, 1, stride=2)
        self.pool = nn.MaxPool2d(2)
        self.deep = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.up2 = nn.Conv2d(8 + 6, 6, 3, padding=1)
        self.up1 = nn.Conv2d(6 + 4, 4, 3, padding=1)
        self.head = nn.Conv2d(4, k, 1)

    def forward(self, x: Tensor) -> Tensor:
        s0 = F.relu(self.stem(x))
        s1 = F.relu(self.down(s0) + self.shortcut(s0))
        s2 = F.relu(self.deep(self.pool(s1)))
        u = F.interpolate(s2, size=s1.shape[-2:], mode="nearest")
        u = F.relu(self.up2(torch.cat([u, s1], 1)))
        u = F.interpolate(u, size=s0.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(F.relu(self.up1(torch.cat([u, s0], 1))))


class AddSkipNet(nn.Module):
    """An FPN-style decoder: a strided conv (unit 0, its output the skip ``s1``), a max-pool (unit 1) and a
    strided conv (unit 2); the decoder *adds* a lateral 1x1 conv of ``s1`` (read from before units 1 and 2)
    to the upsampled deep map, then upsamples to the input. Every path runs through unit 0; the skip
    bypasses units 1 and 2. (A skip added, not concatenated, broadcasts a one-image batch against the R²
    rows of an expansion: the FPN crash at two images or more.)"""

    def __init__(self, k: int = K):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.deep = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.lateral = nn.Conv2d(6, 8, 1)
        self.head = nn.Conv2d(8, k, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        s1 = F.relu(self.down(F.relu(self.stem(x))))
        u = F.interpolate(F.relu(self.deep(self.pool(s1))), size=s1.shape[-2:], mode="nearest") + self.lateral(s1)
        return self.head(F.interpolate(u, size=x.shape[-2:], mode="bilinear", align_corners=False))


class CoarseNet(nn.Module):
    """Logits at stride 4 of the input, not upsampled (conv s2, conv s2, 1x1 head)."""

    def __init__(self, k: int = K):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.head = nn.Conv2d(6, k, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.b(F.relu(self.a(x)))))


class PooledTo5(CoarseNet):
    """A 5x5 output from any input: at no whole stride of a 32-pixel input."""

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(super().forward(x), 5)


class DictSeg(TinyUNet):
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = super().forward(x)
        return {"out": out, "aux": out[:, :2]}


class NoGradInside(CoarseNet):
    """Runs its layers under ``no_grad``: its output has no autograd lineage to trace."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return super().forward(x)


class TinyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, 2, 1), nn.ReLU(),
                                  nn.Conv2d(6, 6, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(6, K)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x).mean((2, 3)))


def make(cls, *args) -> nn.Module:
    torch.manual_seed(0)
    return cls(*args).eval().double()


def images(n: int = 2, size: int = 32) -> Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def seg(net: nn.Module, **kw) -> undiscard.Undiscard:
    kw.setdefault("task", "segmentation")
    kw.setdefault("extend", "zero")  # the hook references extend past the edge with the pad value (extend="zero")
    return undiscard.wrap(net, **kw)


# ------------------------------------------------------------------------------------- exactness
def test_budget_1_and_phase_0_are_the_network_bit_for_bit():
    net, x = make(TinyUNet), images()
    with torch.no_grad():
        assert torch.equal(seg(net, budget=1)(x), net(x))
        model = seg(net, budget=4, example_input=x[:1])
        assert torch.equal(model(x, budget=1), net(x))
        assert torch.equal(model.run_state(x, (0,) * len(model.search_units)), net(x))
        cands = model.candidates(x)
        assert torch.equal(model.aggregate_candidates(cands, budget=1), net(x))
        assert model.split_method == "output"


def test_unet_units_do_not_merge_across_skips_and_every_state_is_the_reference():
    """Lineage tracing: the strided conv and its strided shortcut are one unit (their outputs are added);
    the decoder's skips (concatenations of earlier activations) merge nothing."""
    net, x = make(TinyUNet), images()
    model = seg(net, budget=8, units=[0, 1, 2], example_input=x[:1])
    assert [(u.name, u.layers) for u in model.units] == [("down", ("down", "shortcut")), ("pool", ("pool",)),
                                                         ("deep", ("deep",))]
    assert model.num_states == 64
    states = check_states(model, net, x)
    assert all(len(per) == 8 and len(set(per)) == 8 for per in states)


def test_mean_and_entropy_aggregate_aligned_outputs_per_pixel():
    """Default units: the max-pool is searched; P = 2 (the block before it), so with align="offset" a state
    at offset (dy, dx) of the pool's 16x16 input grid is shifted by (2 dy, 2 dx) pixels of the 32x32 output."""
    net, x = make(TinyUNet), images()
    for how in ("mean", "entropy"):
        model = seg(net, budget=4, aggregate=how, align="offset")
        with torch.no_grad():
            got = model(x)
        assert [u.name for u in model.search_units] == ["pool"]
        for i, per in enumerate(model.search(x)):
            outs = [reference_output(net, model.search_units, s, x[i:i + 1])[0] for s in per]
            aligned = []
            for s, out in zip(per, outs):
                dy, dx = state_offset(s, [2])
                aligned.append(shifted_by_hand(out, outs[0], 2 * dy, 2 * dx))
            stack = torch.stack(aligned)  # (B, K, H, W)
            if how == "mean":
                want = stack.mean(0)
            else:
                p = stack.softmax(1)
                w = 1 + (p * p.log()).sum(1) / math.log(K)  # 1 - H / log K, (B, H, W)
                want = (stack * (w / w.sum(0))[:, None]).sum(0)
            torch.testing.assert_close(got[i], want)


def test_untrained_attention_is_mean_bit_for_bit():
    net, x = make(TinyUNet), images()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the untrained aggregator is announced
        attention = seg(net, budget=4, aggregate="attention", criterion="offset")
        with torch.no_grad():
            got = attention(x)
    with torch.no_grad():
        assert torch.equal(got, seg(net, budget=4, aggregate="mean", criterion="offset")(x))
    assert attention.aggregator.channels == K  # per pixel, over the K logit channels


@pytest.mark.parametrize("criterion", ["offset", "random", "learned"])
def test_other_criteria_search_and_aggregate(criterion):
    net, x = make(TinyUNet), images()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # learned: the untrained aggregator is announced
        model = seg(net, budget=4, criterion=criterion, aggregate="mean")
        with torch.no_grad():
            out = model(x)
            states = check_states(model, net, x)
    assert out.shape == (2, K, 32, 32) and torch.isfinite(out).all()
    assert all(per[0] == (0,) and len(set(per)) == 4 for per in states)
    if criterion == "offset":
        assert states[0] == [(0,), (1,), (2,), (3,)]


def test_dict_output_selects_out():
    net, x = make(DictSeg), images()
    with torch.no_grad():
        assert torch.equal(seg(net, budget=1)(x), net(x)["out"])
        model = seg(net, budget=4)
        assert model(x).shape == (2, K, 32, 32)
        check_states(model, net, x, output=lambda out: out["out"])


# ------------------------------------------------------------------------------------- alignment
def _unit(rate: int, size: int, spatial: bool = True) -> Unit:
    return Unit(f"u{size}", rate, (f"u{size}",), spatial, (size, size), (-(-size // rate),) * 2)


def test_output_stride_from_geometry():
    units = [_unit(2, 96), _unit(2, 48), _unit(2, 24, spatial=False), _unit(2, 24), _unit(2, 12)]
    assert output_stride(units, [1, 3], (96, 96)) == Fraction(1, 2)  # input resolution: offsets x 2
    assert output_stride(units, [3], (96, 96)) == Fraction(1, 4)  # side units add no stride
    assert output_stride(units, [0], (96, 96)) == 1
    assert output_stride(units, [1], (12, 12)) == 4  # a stride-8 output: offsets in quarter cells
    assert output_stride(units, [1], (192, 192)) == Fraction(1, 4)  # finer than the input
    assert output_stride(units, [1], (5, 5)) is None and output_stride(units, [1], (96, 48)) is None
    odd = [_unit(2, 65), _unit(2, 33)]  # 65 -> 33 -> 17: an output at input resolution is still exact
    assert output_stride(odd, [1], (65, 65)) == Fraction(1, 2) and output_stride(odd, [1], (17, 17)) == 2
    assert output_stride(units, [], (5, 5)) == 1


def test_align_filled_by_hand():
    maps = torch.arange(2 * 16, dtype=torch.float64).view(1, 2, 1, 4, 4)
    offsets = torch.tensor([[[0, 0], [1, 2]]])
    got = align_filled(maps, offsets, 1)
    assert torch.equal(got[0, 0], maps[0, 0])
    want = shifted_by_hand(maps[0, 1], maps[0, 0], 1, 2)
    assert torch.equal(got[0, 1], want)
    # a Fraction stride p/q is a shift of offset * q / p cells: 1/2 doubles the offset
    assert torch.equal(align_maps(maps, offsets, Fraction(1, 2)), align_maps(maps, offsets * 2, 1))
    # a fractional offset: half a cell is the mean of the two neighbours, the uncovered half from state 0
    half = align_filled(maps, torch.tensor([[[0, 0], [1, 0]]]), 2)[0, 1, 0]
    m0, m1 = maps[0, 0, 0], maps[0, 1, 0]
    torch.testing.assert_close(half[1:], (m1[1:] + m1[:-1]) / 2)
    torch.testing.assert_close(half[0], (m1[0] + m0[0]) / 2)


def test_coarse_output_is_aligned_at_fractional_offsets():
    """Logits at stride 4 (8x8 for 32 px), the second conv searched (its input grid at stride 2): an offset
    of one grid pixel is half an output cell — the documented box shift: upsample by 2 (nearest), shift by
    the offset with state 0's upsampled logits where nothing moves in, average-pool by 2."""
    net, x = make(CoarseNet), images()
    model = seg(net, budget=4, aggregate="mean", units=[1])
    with torch.no_grad():
        got = model(x)
    for i, per in enumerate(model.search(x)):
        outs = [reference_output(net, model.search_units, s, x[i:i + 1])[0] for s in per]
        up = [o.repeat_interleave(2, -2).repeat_interleave(2, -1) for o in outs]
        aligned = [F.avg_pool2d(shifted_by_hand(u, up[0], *state_offset(s, [2]))[None], 2)[0]
                   for s, u in zip(per, up)]
        torch.testing.assert_close(got[i], torch.stack(aligned).mean(0))


def test_an_output_at_no_stride_cannot_be_aligned():
    net, x = make(PooledTo5), images()
    with pytest.raises(UndiscardError, match=r"5x5 output .*align=False") as err, torch.no_grad():
        seg(net, budget=4, units=[1])(x)
    assert "\n" not in str(err.value)
    with torch.no_grad():
        model = seg(net, budget=4, units=[1], align=False, aggregate="mean")
        want = [torch.stack([model.run_state(x[i:i + 1], s)[0] for s in per]).mean(0)
                for i, per in enumerate(model.search(x))]
        torch.testing.assert_close(model(x), torch.stack(want))


def _moves(model: undiscard.Undiscard, x: Tensor) -> tuple[bool, ...]:
    engine = model.prepare(x)
    with torch.no_grad():
        logits = model.run_state(x[:1], (0,) * len(model.search_units))
    return model.task.units_moving_output(engine, logits)


def test_lineage_alignment_is_zero_when_a_skip_bypasses_the_unit():
    """TinyUNet's decoder reads the activations before every unit (s0 before ``down``, s1 before ``pool``
    and ``deep``): no unit moves the output, so the default alignment shifts by 0 — align=False, bit for bit
    — while align="offset" shifts by offset x 2."""
    net, x = make(TinyUNet), images()
    model = seg(net, budget=4, aggregate="mean")
    assert _moves(model, x) == (False,)
    all_units = seg(net, budget=4, units=[0, 1, 2])
    assert _moves(all_units, x) == (False, False, False)
    with torch.no_grad():
        got = model(x)
        assert torch.equal(got, seg(net, budget=4, aggregate="mean", align=False)(x))
        assert torch.equal(got, seg(net, budget=4, aggregate="mean", align="lineage")(x))
        assert not torch.equal(got, seg(net, budget=4, aggregate="mean", align="offset")(x))
        offsets = torch.tensor([[[0, 0], [1, 0], [0, 1], [1, 1]]])
        assert torch.equal(model.task.shifts(model.prepare(x), got[:1], offsets, True), torch.zeros_like(offsets))


def test_lineage_alignment_is_the_offset_for_a_plain_stride_network():
    """CoarseNet has no skip: both units move the output, and the default alignment is offset x stride
    (the box shift at a stride-4 output), bit for bit align="offset"."""
    net, x = make(CoarseNet), images()
    for units in ([1], [0, 1]):
        model = seg(net, budget=4, aggregate="entropy", units=units)
        assert _moves(model, x) == (True,) * len(units)
        with torch.no_grad():
            assert torch.equal(model(x), seg(net, budget=4, aggregate="entropy", units=units, align="offset")(x))


def test_lineage_alignment_keeps_the_terms_of_the_units_that_move():
    """AddSkipNet: unit 0 (``down``) dominates the output, units 1 and 2 are bypassed by the skip. Every
    state at batch 3 and budget 8 is the hook reference (the FPN crash: a skip added across an expansion),
    and the aggregate is the states' outputs shifted by unit 0's phase only (P = 1: the stem is stride 1)."""
    net, x = make(AddSkipNet), images(3)
    model = seg(net, budget=8, aggregate="mean", units=[0, 1, 2], example_input=x[:1])
    assert [u.name for u in model.search_units] == ["down", "pool", "deep"]
    assert _moves(model, x) == (True, False, False)
    with torch.no_grad():
        got = model(x)
    states = check_states(model, net, x)
    assert all(len(per) == 8 for per in states)
    for i, per in enumerate(states):
        outs = [reference_output(net, model.search_units, s, x[i:i + 1])[0] for s in per]
        aligned = [shifted_by_hand(o, outs[0], *divmod(s[0], 2)) for s, o in zip(per, outs)]
        torch.testing.assert_close(got[i], torch.stack(aligned).mean(0))


@pytest.mark.parametrize("batch", [2, 3])
def test_a_skip_added_across_an_expansion_runs_at_every_batch_size(batch):
    net, x = make(AddSkipNet), images(batch)
    for criterion in ("entropy", "offset"):  # expansions, and selected children (expand_some)
        model = seg(net, budget=8, criterion=criterion, units=[0, 1, 2])
        check_states(model, net, x)


def test_moved_offsets_keep_the_digits_of_moving_units():
    units = [_unit(2, 32), _unit(2, 16, spatial=False), _unit(4, 16), _unit(2, 4)]
    states = [(a, s, b, c) for a in range(4) for s in (0, 3) for b in range(16) for c in range(4)]
    offsets = torch.tensor([[state_offset(st, [2, 2, 4, 2], [True, False, True, True]) for st in states]])
    for moves in [(True, True, True, True), (False, True, False, True), (True, False, False, False),
                  (False, False, True, False)]:
        kept = [[0 if not (moves[i] and units[i].spatial) else p for i, p in enumerate(st)] for st in states]
        want = torch.tensor([[state_offset(k, [2, 2, 4, 2], [True, False, True, True]) for k in kept]])
        assert torch.equal(moved_offsets(offsets, units, moves), want)


def test_align_names_and_an_untraceable_model():
    net, x = make(CoarseNet), images()
    with pytest.raises(UndiscardError, match=r"align='diagonal'.*'offset'") as err, torch.no_grad():
        seg(net, budget=4, align="diagonal")(x)
    assert "\n" not in str(err.value)
    hidden = make(NoGradInside)
    model = seg(hidden, budget=4, aggregate="mean", units=[1])
    with pytest.warns(UserWarning, match=r"cannot trace .*align='offset'"), torch.no_grad():
        got = model(x)
    with torch.no_grad():
        assert torch.equal(got, seg(hidden, budget=4, aggregate="mean", units=[1], align="offset")(x))


def test_reaches_walks_the_graph_only():
    leaf = torch.randn(3, requires_grad=True)
    other = torch.randn(3, requires_grad=True)
    y = (leaf * 0).sum() + other.detach().sum()
    assert reaches(y, leaf) and not reaches(y, other)  # a zero gradient still reaches: structure, not values
    assert reaches(leaf, leaf) and not reaches(other.detach(), other)


# ------------------------------------------------------------------------------------- the task
def test_detected_from_a_dense_output_and_said_once():
    net, x = make(TinyUNet), images()
    model = undiscard.wrap(net, budget=4)
    assert isinstance(model.task, AutoTask)
    with pytest.warns(UserWarning, match=r"\(N, K, H, W\).*task='segmentation'"), torch.no_grad():
        got = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            model(x)  # said once
            assert torch.equal(got, seg(net, budget=4, extend=model.extend)(x))
    assert model.split_method == "output" and isinstance(model.task.dense, SegmentationTask)
    assert model.task.resolved_name == "segmentation"


def test_classification_stays_the_default_for_class_logits():
    net, x = make(TinyClassifier), images()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            wrapped = undiscard.wrap(net, budget=4)
            assert wrapped.task.resolved_name == "classification"  # before any call, too
            auto = wrapped(x)
            assert wrapped.task.resolved_name == "classification"
            assert torch.equal(auto, undiscard.wrap(net, budget=4, task="classification")(x))
    assert isinstance(undiscard.wrap(net).task, ClassificationTask)


def test_segmentation_of_class_logits_is_one_error():
    net, x = make(TinyClassifier), images()
    with pytest.raises(UndiscardError, match=r"needs \(N, K, H, W\) logits.*\(5,\)") as err, torch.no_grad():
        seg(net, budget=4)(x)
    assert "\n" not in str(err.value)


def test_state_uncertainty_is_the_mean_per_pixel_entropy():
    task = SegmentationTask()
    logits = torch.zeros(2, 4, 3, 3, dtype=torch.float64)
    logits[1, 0, :2] = 50.0  # 6 confident pixels of 9, 3 uniform
    got = task.state_uncertainty(logits)
    torch.testing.assert_close(got, torch.tensor([1.0, 1.0 / 3.0], dtype=torch.float64), atol=1e-15, rtol=0)
    assert task.state_uncertainty(logits.half()).dtype == torch.float32
    assert task.entropy(logits).shape == (2, 3, 3)
    w = task.entropy_weights(logits[None])  # (1, 2 states, 3, 3): per pixel
    assert w.shape == (1, 2, 3, 3)
    torch.testing.assert_close(w[0, :, 0, 0], torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(w[0, :, 2, 2], torch.tensor([0.5, 0.5], dtype=torch.float64))
