"""Hugging Face ``transformers`` models (tiny random configs, nothing downloaded: tests/hf_archs.py).

For every classifier family: budget 1 is ``net(pixel_values=x)`` (same output type, same values); the split
is the built-in one (not the hook fallback or graph capture); ``run_state`` equals an independent module-
surgery reference (each unit layer replaced by its ``polyphase`` slice); budget 4 gives the model's output
type with the aggregated logits, and the chain has its own cut before every searched unit (a state
recomputes only from its unit's stage). Segmenters: ``SemanticSegmenterOutput`` through the dense task, with
cuts before the searched units where the split is registered. Loading ``hf:DIR`` and the offline error.
"""
from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

import undiscard  # noqa: E402
from undiscard.errors import UndiscardError  # noqa: E402
from undiscard.layers import polyphase  # noqa: E402
from undiscard.models.loading import load_model  # noqa: E402

from .hf_archs import CLASSIFIERS, SEGMENTERS, SINGLE_UNIT_SEGMENTERS, build  # noqa: E402
from .test_architectures import reference_logits  # noqa: E402

TOL = dict(rtol=1e-9, atol=1e-9)  # float64: a dense and a strided pass round differently only at 1e-15


def _reference(net: nn.Module, units: list, state: dict[int, int], x: torch.Tensor) -> torch.Tensor:
    """Module surgery (each unit layer replaced by its dense-path phase: tests/test_architectures.py)."""
    return reference_logits(net, units, state, x).logits


@pytest.fixture(scope="module", params=sorted(CLASSIFIERS))
def classifier(request, one_thread):
    net, x = build(request.param)
    return request.param, net, x, undiscard.wrap(net, budget=4, example_input=x[:1], extend="zero")


def test_budget_1_is_the_model_with_its_output_type(classifier):
    _, net, x, model = classifier
    with torch.no_grad():
        ours, theirs = model(pixel_values=x, budget=1), net(pixel_values=x)
        assert torch.equal(model(x, budget=1).logits, theirs.logits)
    assert type(ours) is type(theirs) and torch.equal(ours.logits, theirs.logits)
    assert model.last_cost == 1.0


def test_the_built_in_split_is_used(classifier):
    _, net, _, model = classifier
    assert model.split_method == f"registry (transformers {type(net).__name__})"


def test_run_state_matches_a_module_surgery_reference(classifier):
    name, net, x, model = classifier
    rng = random.Random(name)
    searched = [model.units.index(u) for u in model.search_units]
    state = tuple(rng.randrange(1, u.num_phases) for u in model.search_units)
    with torch.no_grad():
        ours = model.run_state(x, state)
    torch.testing.assert_close(ours, _reference(net, model.units, dict(zip(searched, state)), x), **TOL)


def test_budget_4_cuts_before_every_searched_unit(classifier):
    name, net, x, model = classifier
    with torch.no_grad():
        out = model(pixel_values=x)
        cands = model.candidates(x)
        for i, per_image in enumerate(cands):  # the cached, batched search path is run_state's states
            for c in per_image[1:]:
                torch.testing.assert_close(c.logits, model.run_state(x[i:i + 1], c.state)[0], **TOL)
    assert type(out) is type(net(pixel_values=x)) and out.logits.shape == (2, 5)
    assert out.loss is None and getattr(out, "hidden_states", None) is None  # fields of one pass are not carried
    engine = model.prepare(x)
    if len(engine.cut) == 1:  # ViT-style: one unit, the patch embedding, the model's first layer
        assert engine.cut == [0] and len(model.units) == 1
    else:  # each searched unit has a cut of its own, after the input: a state recomputes only its stages
        assert len(set(engine.cut)) == len(engine.cut) and min(engine.cut) > 0
        assert engine.cut == sorted(engine.cut)
    assert model.last_cost <= 4.0 + 0.01  # the budget is the cost (plus one run of the head on the aggregate)


def test_efficientnet_units_leave_out_its_global_pooling(one_thread):
    """HF EfficientNet pools with AvgPool2d(hidden_dim, ceil_mode=True): one window over the whole map, not a
    unit (it would have rate 320 here); its depthwise convs (a Conv2d subclass) are units."""
    net, x = build("efficientnet")
    units = undiscard.find_units(net, x[:1], strict=True)
    assert all(u.rate == 2 for u in units) and len(units) == 5
    assert not any("pooler" in u.name for u in units)


@pytest.mark.parametrize("name", sorted(SEGMENTERS))
def test_segmenters_return_their_output_type(name, one_thread):
    net, x = build(name)
    # MobileNetV2's TF padding makes its stem see 65 px for 64: its 2x2 output has no whole stride to align by
    align = name != "mobilenet_v2_seg"
    model = undiscard.wrap(net, budget=4, task="segmentation", example_input=x[:1], extend="zero", align=align)
    with torch.no_grad():
        theirs = net(pixel_values=x)
        one = model(pixel_values=x, budget=1)
        out = model(pixel_values=x)
    assert model.last_cost <= 4.0 + 0.01  # the budget is the cost
    assert type(one) is type(theirs) and torch.equal(one.logits, theirs.logits)
    assert type(out).__name__ == "SemanticSegmenterOutput" and out.logits.shape == theirs.logits.shape
    assert torch.isfinite(out.logits).all()
    engine = model.prepare(x)
    if name in SINGLE_UNIT_SEGMENTERS:
        assert model.split_method == "output"
    else:
        assert model.split_method == f"output (transformers {type(net).__name__})"
        assert len(set(engine.cut)) == len(engine.cut) and min(engine.cut) > 0
    searched = [model.units.index(u) for u in model.search_units]
    state = tuple(1 for _ in searched)
    with torch.no_grad():
        ours = model.run_state(x, state)
    torch.testing.assert_close(ours, _reference(net, model.units, dict(zip(searched, state)), x), **TOL)


def test_hf_swin_patch_merging_phases_are_the_dense_map_sliced(one_thread):
    """The token adapter: phase (dy, dx) gathers the 2x2 neighbourhoods at (2i + dy, 2j + dx) of the grid
    zero-extended past its bottom/right edge (odd sizes: the layer's own zero padding), then norm and
    reduction in the layer's order; phase 0 is the layer's forward bit for bit."""
    import transformers.models.swin.modeling_swin as swin
    import transformers.models.swinv2.modeling_swinv2 as swinv2

    torch.manual_seed(0)
    for layer in (swin.SwinPatchMerging(dim=3), swinv2.Swinv2PatchMerging((5, 7), dim=3)):
        layer = layer.double().eval()
        h, w, c = 5, 7, 3
        x = torch.randn(2, h * w, c, dtype=torch.float64)
        with torch.no_grad():
            assert torch.equal(polyphase(layer, x, phase=0, args=((h, w),)), layer(x, (h, w)))
            grid = torch.nn.functional.pad(x.view(2, h, w, c), (0, 0, 0, 2 * 4 + 1 - w, 0, 2 * 3 + 1 - h))
            every = polyphase(layer, x, args=((h, w),))
            for s in range(4):
                dy, dx = divmod(s, 2)
                parts = [grid[:, dy + a::2, dx + b::2][:, :3, :4] for a, b in ((0, 0), (1, 0), (0, 1), (1, 1))]
                merged = torch.cat(parts, -1).reshape(2, 12, 4 * c)
                ref = layer.reduction(layer.norm(merged)) if isinstance(layer, swin.SwinPatchMerging) else \
                    layer.norm(layer.reduction(merged))
                torch.testing.assert_close(every[:, s], ref, **TOL)
                torch.testing.assert_close(polyphase(layer, x, phase=s, args=((h, w),)), ref, **TOL)


def test_load_a_save_pretrained_directory_with_its_processor(tmp_path, one_thread):
    import transformers

    net, x = build("convnext")
    net.config.id2label = {i: f"kind{i}" for i in range(5)}
    net.config.label2id = {v: k for k, v in net.config.id2label.items()}
    net.save_pretrained(tmp_path)
    transformers.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875, resample=3,
                                        image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.2, 0.25]).save_pretrained(tmp_path)
    loaded = load_model(f"hf:{tmp_path}")
    pre = loaded.preprocess
    assert (pre.input_size, pre.crop_pct, pre.interpolation) == (32, 0.875, "bicubic")
    assert pre.mean == pytest.approx((0.5, 0.4, 0.3)) and pre.std == pytest.approx((0.2, 0.2, 0.25))
    assert loaded.class_names == [f"kind{i}" for i in range(5)] and loaded.name == f"hf:{tmp_path}"
    with torch.no_grad():
        assert torch.equal(loaded.model.double()(x).logits, net(x).logits)


def test_a_model_missing_offline_is_one_line_naming_the_cache(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UndiscardError) as err:
        load_model("hf:nobody/no-such-model")
    msg = str(err.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE" in msg and "Hugging Face cache (" in msg


def test_the_cli_reports_a_missing_model_in_one_line_with_exit_2(tmp_path):
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(img)
    run = subprocess.run([sys.executable, "-m", "undiscard", "predict", "--model", "hf:nobody/no-such-model", str(img)],
                         capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "HF_HUB_OFFLINE" in run.stderr
