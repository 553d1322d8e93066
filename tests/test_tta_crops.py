"""Real crop views: a crop is a region of the input resized back, as five-crop TTA does, not a
translation; the ``standard`` policy is its measured order of a fixed pool of views."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from undiscard import TTA, zoo
from undiscard.errors import UndiscardError
from undiscard.tta import parse_view, policy_views
from undiscard.tta.views import (
    POLICIES,
    STANDARD_CROP,
    STANDARD_ORDER,
    crop_box,
    standard_pool,
)

pytestmark = pytest.mark.usefixtures("one_thread")
CORNERS = ("tl", "tr", "bl", "br", "c")


def test_identity_view_is_the_input_bit_for_bit():
    x = torch.randn(3, 3, 17, 23)
    assert torch.equal(parse_view("identity")(x), x)
    assert torch.equal(parse_view("crop:br,1")(x), x)  # a crop of the whole image is the image


@pytest.mark.parametrize("h, w, size", [(32, 32, 0.875), (224, 224, 0.875), (31, 40, 0.6)])
def test_crop_boxes_are_torchvision_five_crop(h, w, size):
    """Corners flush with the image's, the centre where torchvision's five_crop puts it (independent code)."""
    from torchvision.transforms.functional import five_crop

    x = torch.arange(float(h * w)).view(1, 1, h, w)
    ch, cw = round(size * h), round(size * w)
    for where, ref in zip(CORNERS, five_crop(x, [ch, cw])):  # (tl, tr, bl, br, centre)
        top, left, bh, bw = crop_box(h, w, where, size)
        assert torch.equal(x[..., top:top + bh, left:left + bw], ref)


@pytest.mark.parametrize("where", CORNERS)
def test_crop_view_is_the_crop_resized_back(where):
    """A crop view equals torchvision's five-crop region resized back with antialiased bilinear."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import five_crop, resize

    x = torch.randn(2, 3, 32, 32)
    ref = resize(five_crop(x, [28, 28])[CORNERS.index(where)], [32, 32], InterpolationMode.BILINEAR, antialias=True)
    out = parse_view(f"crop:{where},0.875")(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, ref)
    manual = F.interpolate(x[..., 0:28, 0:28] if where == "tl" else x[..., 4:32, 4:32] if where == "br" else
                           x[..., 0:28, 4:32] if where == "tr" else x[..., 4:32, 0:28] if where == "bl" else
                           x[..., 2:30, 2:30], size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(out, manual)


def test_a_crop_reads_only_its_region_and_is_not_a_translation():
    x = torch.randn(1, 1, 32, 32)
    y = x.clone()
    y[..., 24:, :] = 100.0  # change everything outside the top-left 24 x 24
    y[..., :, 24:] = -100.0
    view = parse_view("crop:tl,0.75")
    assert torch.equal(view(x), view(y))  # no pixel from outside the crop, no edge replication
    # a zoom-in: the crop's top-left pixel stays put, the scene grows by 32/24
    flat = torch.zeros(1, 1, 32, 32)
    flat[..., :12, :12] = 1.0  # a square of 12 px at the corner -> 16 px after the 4/3 zoom
    assert int((view(flat) > 0.5).sum()) == 16 * 16
    assert not torch.equal(view(x), parse_view("shift:2,2")(x))


def test_composed_crop_view_and_text_form():
    x = torch.randn(2, 1, 32, 32)
    v = parse_view("hflip + scale:1.1 + crop:tr,.875")
    assert v.name == "hflip+scale:1.1+crop:tr,0.875"
    assert torch.equal(v(x), parse_view("crop:tr,0.875")(parse_view("scale:1.1")(x.flip(-1))))
    assert [w.name for w in policy_views("crop:c,0.75,hflip,shift:1,-2")] == ["crop:c,0.75", "hflip", "shift:1,-2"]


@pytest.mark.parametrize("bad, message", [
    ("crop:tl", "has no size.*shift:D,D"), ("crop:middle,0.5", "crop corner"), ("crop:tl,0", r"\(0, 1\]"),
    ("crop:tl,1.5", r"\(0, 1\]"), ("crop", "takes 2 arguments"), ("crop:tl,0.5,3", "takes 2 arguments"),
])
def test_bad_crops_are_refused_clearly(bad, message):
    with pytest.raises(UndiscardError, match=message):
        parse_view(bad)


def test_standard_policy_is_the_ordered_pool():
    names = POLICIES["standard"]
    assert names == list(STANDARD_ORDER) and sorted(names) == sorted(standard_pool())
    assert len(names) == len(set(names)) == 30 and names[:2] == ["identity", "hflip"]  # flip = its first 2
    assert [v.name for v in policy_views("standard")] == names  # every name is its own canonical text form
    assert [v.name for v in policy_views(",".join(names))] == names  # and survives the comma-separated form
    crops = [n for n in names if "crop:" in n]
    corner_crops = {f"crop:{c},{STANDARD_CROP}" for c in CORNERS[:4]}
    assert len(crops) == 24 and all(n.split("+")[-1] in corner_crops for n in crops)


def test_a_budget_takes_the_first_views_of_the_order():
    net = zoo.create_model("resnext")
    x = torch.randn(4, 1, 32, 32)
    for t in (1, 2, 4, 8):
        tta = TTA(net, "standard", "mean", budget=t)
        assert [v.name for v in tta.views] == list(STANDARD_ORDER[:t])
    with torch.no_grad():
        tta = TTA(net, "standard", "mean", budget=3)
        views = policy_views("standard")[:3]
        assert torch.allclose(tta(x), torch.stack([net(v(x)) for v in views], 1).mean(1), atol=1e-5)
        assert torch.equal(TTA(net, "standard", "mean", budget=1)(x), net(x))
