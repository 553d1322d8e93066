"""Real segmenters under ``wrap(task="segmentation")`` : torchvision's FCN, DeepLabV3 and
LR-ASPP (``{"out": ...}`` dict outputs), smp's Unet, FPN, DeepLabV3+ and Segformer with random weights,
and the trained segmentation zoo.

For each: budget 1 is the network's output bit for bit; every state a budget-2 search finds equals the
network run with that fixed state (``run_state``) and the independent hook reference of
:mod:`tests.test_dense_task` (each searched layer's phase written out from its stride-1 computation,
sliced), and the aggregate is the per-pixel mean of those outputs aligned at output resolution: by the
phase offsets of the units that move the output (the default, traced from the output's lineage: a unit
whose input a decoder skip also reads does not; :data:`MOVES` says which, per model), and by the whole
offset with ``align="offset"``. U-Net-style
decoders read every encoder stage: lineage tracing keeps one unit per downsampling block (its strided conv
and strided shortcut together) and merges nothing across the skips.
"""
from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch
from torch import nn

import undiscard
from undiscard._compat import import_torchvision
from undiscard.analysis.geometry import state_offset
from undiscard.analysis.outputs import select_output

from .test_dense_task import check_states, reference_output, shifted_by_hand

pytestmark = pytest.mark.usefixtures("one_thread")
HAS_SMP = importlib.util.find_spec("segmentation_models_pytorch") is not None
needs_smp = pytest.mark.skipif(not HAS_SMP, reason="segmentation_models_pytorch (undiscard[seg]) not installed")
K = 4


def _smp():
    import_torchvision()  # smp imports timm, which imports torchvision: the CPU workaround first
    import segmentation_models_pytorch as smp

    return smp


def _tv():
    return import_torchvision().models.segmentation


# name: (builder, input (C, H, W), dtype)
MODELS = {
    "tv fcn_resnet50": (lambda: _tv().fcn_resnet50(weights=None, weights_backbone=None, num_classes=K),
                        (3, 32, 32), torch.float32),
    "tv deeplabv3_mobilenet_v3_large": (
        lambda: _tv().deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=K),
        (3, 32, 32), torch.float64),
    "tv lraspp_mobilenet_v3_large": (
        lambda: _tv().lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=K),
        (3, 32, 32), torch.float64),
    "smp Unet": (lambda: _smp().Unet("resnet18", encoder_weights=None, classes=K, decoder_channels=(32, 16, 8, 8, 8)),
                 (3, 32, 32), torch.float64),
    "smp FPN": (lambda: _smp().FPN("resnet18", encoder_weights=None, classes=K, decoder_pyramid_channels=32,
                                   decoder_segmentation_channels=32), (3, 64, 64), torch.float64),
    "smp DeepLabV3Plus": (lambda: _smp().DeepLabV3Plus("resnet18", encoder_weights=None, classes=K,
                                                       decoder_channels=32), (3, 32, 32), torch.float64),
    "smp Segformer": (lambda: _smp().Segformer("mit_b0", encoder_weights=None, classes=K,
                                               decoder_segmentation_channels=32), (3, 64, 64), torch.float64),
}
SMP = [n for n in MODELS if n.startswith("smp")]
# per searched unit (default units), whether it moves the output: every path from the input to the logits
# runs through it. FCN/DeepLabV3 read only the last stage; LR-ASPP's low branch reads the stride-8 stage,
# after both searched blocks; smp's U-Net reads the stride-2 stem (before the max-pool) and every stage;
# FPN reads stages from stride 4 (after the max-pool, before layer2 and layer3); DeepLabV3+ reads layer1
# (after the max-pool, before layer2); SegFormer's MLP decoder reads the 1/4 stage, before both searched
# patch embeddings. The segmentation zoo's models are these families.
MOVES = {"tv fcn_resnet50": (True,), "tv deeplabv3_mobilenet_v3_large": (True, True),
         "tv lraspp_mobilenet_v3_large": (True, True), "smp Unet": (False, False, False),
         "smp FPN": (True, False, False), "smp DeepLabV3Plus": (True, False), "smp Segformer": (False, False),
         "seg_deeplabv3plus": (True, False), "seg_fpn": (True, False, False), "seg_segformer": (False, False)}


def _build(name: str) -> tuple[nn.Module, torch.Tensor]:
    factory, shape, dtype = MODELS[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision/smp deprecation notes
        net = factory().eval().to(dtype)
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    return net, x


def _marks(name: str):
    return [needs_smp] if name in SMP else []


def _check(name: str, net: nn.Module, x: torch.Tensor, rtol: float, atol: float) -> undiscard.Undiscard:
    with torch.no_grad():
        assert torch.equal(undiscard.wrap(net, budget=1, task="segmentation")(x), select_output(net(x)))
        model = undiscard.wrap(net, budget=2, task="segmentation", aggregate="mean", extend="zero")  # as the reference
        got = model(x)
        assert model.split_method == "output"
        states = check_states(model, net, x, output=select_output, rtol=rtol, atol=atol)
        by_offset = undiscard.wrap(net, budget=2, task="segmentation", aggregate="mean", align="offset",
                                   extend="zero")(x)
        assert model.task.units_moving_output(model.prepare(x), got) == MOVES[name]
    # the aggregate: both states' outputs aligned at output resolution, averaged
    (zero, other), = states
    assert zero == (0,) * len(other) and other != zero
    with torch.no_grad():  # each equals the hook reference (check_states)
        outs = [model.run_state(x, s)[0] for s in (zero, other)]
    first = model.search_units[0]
    scale = x.shape[-1] // first.in_size[1]  # P: the rates before the first searched unit
    rates, spatial = [u.rate for u in model.search_units], [u.spatial for u in model.search_units]
    moved = tuple(p if m else 0 for p, m in zip(other, MOVES[name]))  # the phases that move the output
    for want_state, out in ((other, by_offset), (moved, got)):
        dy, dx = state_offset(want_state, rates, spatial)
        want = (outs[0] + shifted_by_hand(outs[1], outs[0], scale * dy, scale * dx)) / 2
        torch.testing.assert_close(out[0], want, rtol=rtol, atol=atol)
    return model


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in MODELS])
def test_every_state_is_the_network_at_that_state(name):
    net, x = _build(name)
    tol = (1e-7, 1e-9) if x.dtype == torch.float64 else (1e-4, 1e-4)
    model = _check(name, net, x, *tol)
    assert model(x).shape == (1, K, *x.shape[-2:])


@needs_smp
def test_unet_skips_merge_no_units():
    """smp's U-Net decoder concatenates the outputs of every encoder stage: the units are still one per
    strided layer or downsampling block (its strided 3x3 conv with its strided 1x1 shortcut)."""
    net, x = _build("smp Unet")
    model = undiscard.wrap(net, budget=2, task="segmentation", example_input=x, extend="zero")
    assert [u.layers for u in model.all_units] == [
        ("encoder.conv1",), ("encoder.maxpool",),
        *[(f"encoder.layer{i}.0.conv1", f"encoder.layer{i}.0.downsample.0") for i in (2, 3, 4)]]
    assert [u.name for u in model.search_units] == ["encoder.maxpool", "encoder.layer2.0", "encoder.layer3.0"]
    # states that vary the deepest searched unit, whose output the decoder reads through a skip
    for state in [(0, 0, 3), (1, 2, 1)]:
        with torch.no_grad():
            torch.testing.assert_close(model.run_state(x, state), reference_output(net, model.search_units, state, x))


@needs_smp
@pytest.mark.parametrize("name", ["seg_deeplabv3plus", "seg_fpn", "seg_segformer"])
def test_trained_zoo_models(name):
    from undiscard.data import segmentation as segdata
    from undiscard.zoo import segmentation as segzoo

    if not segzoo.weights_path(name).is_file():
        pytest.skip(f"{name} is not trained")
    net = segzoo.create_model(name).double()
    images, _ = segdata.load_seg_test()
    x = segdata.to_input(images[:1]).double()
    model = _check(name, net, x, 1e-7, 1e-9)
    assert model(x).shape == (1, segdata.NUM_CLASSES, 96, 96)


@needs_smp
def test_fpn_searches_batches_of_several_images():
    """smp's FPN adds each lateral (a skip from before layer2 and layer3) to the upsampled deeper map: at
    batch 3 and budget 8 the search used to fail (a size mismatch, 12 against 3 rows), because a one-image
    example broadcast the skip against the expansion's R² rows. Every state is now the hook reference."""
    net, x1 = _build("smp FPN")
    x = torch.cat([x1, x1.flip(-1), x1.flip(-2)])
    model = undiscard.wrap(net, budget=8, task="segmentation", extend="zero")
    with torch.no_grad():
        assert model(x).shape == (3, K, *x.shape[-2:])
    states = check_states(model, net, x, output=select_output)
    assert all(len(per) == 8 for per in states)
