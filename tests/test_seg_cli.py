"""Segmentation on the command line: seg folders (palette/grayscale masks), eval --task segmentation, predict
--mask-out. Four bundled canvases, budget 1 (the network) and flip TTA: no training, no timing."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from undiscard.cli import build_parser, main
from undiscard.data import segmentation as segdata
from undiscard.data.seg_folder import (
    SegFolderError,
    read_mask,
    read_seg_folder,
    scan_seg_folder,
    write_seg_folder,
)

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(importlib.util.find_spec("segmentation_models_pytorch") is None,
                                 reason="segmentation_models_pytorch (undiscard[seg]) not installed")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    images, masks = segdata.load_seg_test()
    root = tmp_path_factory.mktemp("seg")
    write_seg_folder(root, images[:4], masks[:4])
    return root, images[:4], masks[:4]


def test_folder_round_trip(folder, tmp_path):
    root, images, masks = folder
    f = scan_seg_folder(root)
    x, y, names = read_seg_folder(f, in_chans=1)
    assert names == ["0000", "0001", "0002", "0003"]
    assert np.array_equal(y.numpy(), masks.astype(np.int64))  # palette indices are the labels
    assert np.array_equal((x[:, 0] * 255).round().byte().numpy(), images)
    gray = tmp_path / "m.png"
    Image.fromarray(masks[0]).save(gray)  # grayscale ("L") masks read alike
    assert np.array_equal(read_mask(gray), masks[0].astype(np.int64))
    Image.fromarray(np.stack([masks[0]] * 3, -1)).save(tmp_path / "rgb.png")
    with pytest.raises(SegFolderError, match="palette or grayscale"):
        read_mask(tmp_path / "rgb.png")
    with pytest.raises(SegFolderError, match="masks/"):
        scan_seg_folder(tmp_path)


def test_eval_segmentation(folder, capsys):
    root, _, _ = folder
    code = main(["eval", "--task", "segmentation", "--model", "zoo:seg_fpn", "--data", str(root), "--budget", "1",
                 "--shift", "2", "--tta", "flip", "--quiet", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    (row,) = out["results"]
    assert row["views"] == 2 and row["cost"] == 2.0 and row["n"] == 4
    assert 0 <= row["miou"] <= 100 and row["miou_shifted"] is not None and row["consistency"] is not None
    code = main(["eval", "--task", "segmentation", "--model", "zoo:seg_fpn", "--data", str(root), "--budget", "1",
                 "--quiet", "--json"])
    plain = json.loads(capsys.readouterr().out)["results"][0]
    assert code == 0 and plain["method"] == "network" and plain["cost"] == 1.0
    assert main(["eval", "--task", "segmentation", "--model", "zoo:seg_fpn", "--data", str(root / "images")]) == 2


def test_predict_mask(folder, tmp_path):
    root, _, _ = folder
    out = tmp_path / "mask.png"
    assert main(["predict", "--model", "zoo:seg_fpn", str(root / "images" / "0000.png"), "--budget", "1",
                 "--mask-out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.mode == "P" and im.size == (96, 96)
        assert np.asarray(im).max() < segdata.NUM_CLASSES
    assert (tmp_path / "mask.overlay.png").is_file()


def test_commands_dispatch_on_task(folder, tmp_path, capsys, monkeypatch):
    """One module per command, dispatching on ``--task``: eval's segmentation branch runs for --task
    segmentation; predict writes masks for a segmenter by default (``zoo:seg_*`` or --mask-out), top-k
    classes otherwise or with --task classification, and refuses --mask-out with --task classification."""
    from undiscard.cli import eval as eval_cmd, predict

    root, _, _ = folder
    calls = []
    monkeypatch.setattr(eval_cmd, "_run_segmentation", lambda args, *_: calls.append(args.task) or 0)
    assert main(["eval", "--task", "segmentation", "--model", "zoo:seg_fpn", "--data", str(root), "--quiet"]) == 0
    assert calls == ["segmentation"]
    monkeypatch.undo()
    image = str(root / "images" / "0000.png")
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--model", "zoo:seg_fpn", image, "--budget", "1", "--json"]) == 0  # default: masks
    out = json.loads(capsys.readouterr().out)["predictions"][0]
    assert out["mask"] == "0000.mask.png" and (tmp_path / "0000.mask.png").is_file() and "classes" in out
    assert main(["predict", "--model", "zoo:resnet_basic", image, "--budget", "1", "--json", "--top-k", "2"]) == 0
    top = json.loads(capsys.readouterr().out)["predictions"][0]
    assert len(top["baseline"]) == 2 and "mask" not in top
    assert main(["predict", "--task", "classification", "--model", "zoo:resnet_basic", image,
                 "--mask-out", str(tmp_path / "m.png")]) == 2
    assert "--mask-out writes label maps" in capsys.readouterr().err
    for argv in (["--task", "segmentation", "--mask-out", "x.png"], ["--mask-out", "x.png"], ["--task", "segmentation"],
                 ["--task", "classification"], []):
        args = build_parser().parse_args(["predict", "--model", "zoo:resnet_basic", image, *argv])
        assert predict.task_of(args) == ("classification" if "classification" in argv or not argv else "segmentation")
