"""Probes a careful user tries on the command line: each gets one line on stderr
with exit status 2 (bad input), 130 (Ctrl-C) or 1 (unexpected), or works — never a traceback, a hang, or a
half-written result file. Also the image decoding rules those probes rely on (16-bit, RGBA, CMYK, ...)."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from undiscard import zoo
from undiscard.cli import main
from undiscard.cli.common import CLIError, parse_budgets, resolve_device
from undiscard.data.folder import ImageReadError, load_image

MODEL = "resnet_basic" if zoo.weights_path("resnet_basic").exists() else None
needs_model = pytest.mark.skipif(MODEL is None, reason="no trained zoo weights in this checkout")
ZOO = f"zoo:{MODEL}"
GEOMETRY = {"in_chans": 3, "input_size": 16, "crop_pct": 0.875, "pad_to": None}  # resize + centre-crop path
PADDED = {"in_chans": 1, "input_size": 32, "crop_pct": 1.0, "pad_to": 32}  # the zoo's zero-pad path


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG file declaring ``width`` x ``height`` 8-bit grayscale pixels (no pixel data needed:
    PIL checks the size when it opens the file)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """One small file per probe: good ones in every colour mode, and broken ones."""
    import io

    from PIL import Image

    d = tmp_path_factory.mktemp("probe_images")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    paths = {k: d / v for k, v in {
        "rgb": "rgb.png", "gray16": "gray16.png", "rgba": "rgba.png", "cmyk": "cmyk.jpg", "palette": "pal.png",
        "palette_transparent": "pal_t.png", "one": "one.png", "bilevel": "bilevel.png", "la": "la.png",
        "float_ok": "float_ok.tif", "float_bad": "float_bad.tif", "corrupt": "corrupt.png",
        "truncated_jpeg": "trunc.jpg", "truncated_png": "trunc.png", "bomb": "bomb.png"}.items()}
    Image.fromarray(rgb).save(paths["rgb"])
    Image.fromarray(np.linspace(0, 65535, 400).round().astype(np.uint16).reshape(20, 20)).save(paths["gray16"])
    Image.fromarray(rng.integers(0, 256, (20, 20, 4), dtype=np.uint8), "RGBA").save(paths["rgba"])
    Image.fromarray(rgb).convert("CMYK").save(paths["cmyk"])
    Image.fromarray(rgb).convert("P").save(paths["palette"])
    Image.fromarray(rgb).convert("P").save(paths["palette_transparent"], transparency=b"\x00" * 256)
    Image.new("L", (1, 1), 200).save(paths["one"])
    Image.fromarray(rng.integers(0, 2, (20, 20), dtype=np.uint8).astype(bool)).save(paths["bilevel"])
    Image.fromarray(rng.integers(0, 256, (20, 20, 2), dtype=np.uint8), "LA").save(paths["la"])
    Image.fromarray(np.linspace(0, 1, 400, dtype=np.float32).reshape(20, 20)).save(paths["float_ok"])
    Image.fromarray(np.full((20, 20), 300.0, np.float32)).save(paths["float_bad"])
    paths["corrupt"].write_bytes(b"this is not a png")
    for fmt, key in (("JPEG", "truncated_jpeg"), ("PNG", "truncated_png")):
        buf = io.BytesIO()
        Image.fromarray(rgb).resize((64, 64)).save(buf, fmt)
        paths[key].write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
    paths["bomb"].write_bytes(png_header(30000, 30000))  # 9e8 pixels declared, 60 bytes on disk
    return paths


def cli(argv: list[str]) -> int:
    """``undiscard ARGV`` in-process: its exit status, also when argparse exits by itself."""
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code)


def one_line_error(capsys, code: int, expected: int = 2) -> str:
    """The command's stderr, asserted to be exactly one line, no traceback, with exit status ``expected``."""
    err = capsys.readouterr().err.strip()
    assert code == expected, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ---- decoding: each colour mode converted deliberately, broken files refused in one line ----------------

def _pil_rgb(path: Path) -> torch.Tensor:
    """What torchvision/timm read: PIL's own RGB conversion, centre-cropped like GEOMETRY, in [0, 1]."""
    from PIL import Image

    from undiscard.data.folder import resize_and_crop

    with Image.open(path) as img:
        rgb = img.convert("RGBA").convert("RGB") if img.mode == "P" and "transparency" in img.info \
            else img.convert("RGB")
        out = resize_and_crop(rgb, GEOMETRY["input_size"], GEOMETRY["crop_pct"])
    return torch.from_numpy(np.asarray(out, dtype=np.float32) / 255.0).permute(2, 0, 1)


@pytest.mark.parametrize("kind", ["rgb", "rgba", "cmyk", "palette", "palette_transparent", "bilevel", "la"])
def test_eight_bit_modes_are_pils_rgb_conversion(images, kind):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "palette images with transparency" warning either
        x = load_image(images[kind], **GEOMETRY)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert torch.equal(x, _pil_rgb(images[kind]))


def test_sixteen_bit_png_is_scaled_not_clipped(images):
    from PIL import Image

    with Image.open(images["gray16"]) as img:
        assert img.mode.startswith("I;16")  # what PIL makes of it: 16-bit grayscale
        raw = np.asarray(img).astype(np.float64)
    x = load_image(images["gray16"], **PADDED)  # 20x20 zero-padded to 32x32: no resampling
    inner = x[0, 6:26, 6:26].double().numpy()
    np.testing.assert_allclose(inner, raw / 65535.0, atol=1e-6)
    assert len(np.unique(inner)) == 400 and inner.max() == 1.0  # PIL's L conversion leaves 5 levels: 0..4, 255
    rgb = load_image(images["gray16"], **GEOMETRY)  # a 3-channel model: the gray repeated
    assert rgb.shape == (3, 16, 16) and torch.equal(rgb[0], rgb[2]) and 0.0 <= rgb.min() <= rgb.max() <= 1.0
    assert len(rgb[0].unique()) > 100


def png16(a: np.ndarray) -> bytes:
    """A PNG file of the uint16 array ``a`` (H, W, 3 or 4): 16 bits per channel, filter 0."""
    h, w, c = a.shape
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    rows = a.astype(">u2").reshape(h, -1)
    raw = b"".join(b"\x00" + r.tobytes() for r in rows)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("kind", ["png48", "png64", "tiff48"])
def test_sixteen_bit_colour_is_read_at_full_precision(tmp_path, kind):
    """PIL opens 48-bit RGB (and 64-bit RGBA) as 8-bit RGB, keeping each sample's high byte; load_image
    reads every sample exactly."""
    from PIL import Image

    a = np.random.default_rng(1).integers(0, 65536, (20, 20, 4 if kind == "png64" else 3), dtype=np.uint16)
    path = tmp_path / ("c.tif" if kind == "tiff48" else "c.png")
    if kind == "tiff48":
        tifffile = pytest.importorskip("tifffile")
        tifffile.imwrite(path, a, photometric="rgb")
    else:
        path.write_bytes(png16(a))
    with Image.open(path) as img:
        assert img.mode in ("RGB", "RGBA")  # PIL's own view: 8 bits per channel
        assert np.array_equal(np.asarray(img)[..., :3], (a[..., :3] >> 8).astype(np.uint8))
    rgb = a[..., :3].astype(np.float64) / 65535.0
    x = load_image(path, **{**PADDED, "in_chans": 3})  # zero-padded: no resampling
    np.testing.assert_allclose(x[:, 6:26, 6:26].permute(1, 2, 0).double().numpy(), rgb, atol=1e-6)
    gray = load_image(path, **PADDED)  # a grayscale model: PIL's L weights, at full precision
    np.testing.assert_allclose(gray[0, 6:26, 6:26].double().numpy(), rgb @ [0.299, 0.587, 0.114], atol=1e-6)
    resized = load_image(path, **GEOMETRY)
    assert resized.shape == (3, 16, 16) and 0.0 <= resized.min() <= resized.max() <= 1.0


def test_float_images_in_range_kept_out_of_range_refused(images):
    x = load_image(images["float_ok"], **PADDED)
    assert x.max() == 1.0 and len(x.unique()) > 300
    with pytest.raises(ImageReadError, match=r"float_bad.tif: float pixel values must be finite and in \[0, 1\]"):
        load_image(images["float_bad"], **PADDED)


def test_one_pixel_image(images):
    padded = load_image(images["one"], **PADDED)  # the zoo's convention: the pixel in the middle, zeros around
    assert padded.shape == (1, 32, 32) and padded.sum() == pytest.approx(200 / 255) and padded[0, 15, 15] > 0
    resized = load_image(images["one"], **GEOMETRY)
    assert resized.shape == (3, 16, 16) and torch.allclose(resized, torch.full_like(resized, 200 / 255))


@pytest.mark.parametrize("kind, message", [
    ("corrupt", "cannot identify image file"),
    ("truncated_jpeg", "truncated"),
    ("truncated_png", "truncated"),
    ("bomb", "has 900000000 pixels, over PIL's decompression-bomb limit"),
])
def test_broken_images_raise_one_line_naming_the_file(images, kind, message):
    with pytest.raises(ImageReadError, match=message) as info:
        load_image(images[kind], **GEOMETRY)
    assert str(images[kind]) in str(info.value) and "\n" not in str(info.value)


def test_over_the_pixel_limit_is_refused_not_warned(images, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 20x20 = 400: PIL would only warn (limit < 2x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageReadError, match="has 400 pixels, over PIL's decompression-bomb limit of 300"):
            load_image(images["rgb"], **GEOMETRY)


def test_a_resize_over_the_pixel_limit_is_refused(tmp_path, monkeypatch):
    from PIL import Image

    strip = tmp_path / "strip.png"
    Image.new("L", (1, 60)).save(strip)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # the file: 60 pixels; resized: 18 x 1080
    with pytest.raises(ImageReadError, match=r"too elongated: resizing its short side to 18 px"):
        load_image(strip, **GEOMETRY)


def test_integer_arrays_other_than_uint8_are_refused():
    from undiscard.data import to_float

    assert to_float(np.full((1, 2, 2), 255, np.uint8)).max() == 1.0
    with pytest.raises(ValueError, match="uint8 .* or float in \\[0, 1\\], got torch.uint16"):
        to_float(np.full((1, 2, 2), 65535, np.uint16))


# ---- arguments: budgets, limits, devices, usage ----------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("0", "budgets must be positive"), ("-3", "budgets must be positive"), ("", "budgets must be positive"),
    ("abc", "comma-separated integers"), ("1.5", "comma-separated integers"),
    ("1,,2", "empty item"), ("1,2,", "empty item"),
])
def test_bad_budgets(text, message):
    with pytest.raises(CLIError, match=message):
        parse_budgets(text)


def test_good_budgets():
    assert parse_budgets("1, 4,16") == [1, 4, 16]


@needs_model
@pytest.mark.parametrize("flag", ["--budget", "--limit"])
@pytest.mark.parametrize("value", ["0", "-1", "abc"])
def test_eval_budget_and_limit_values(capsys, tmp_path, flag, value):
    code = cli(["eval", "--model", ZOO, "--data", str(tmp_path), "--quiet", flag, value])
    err = one_line_error(capsys, code)
    assert flag.lstrip("-") in err and any(w in err for w in ("positive", "integer", "invalid int"))


@needs_model
def test_budget_above_the_state_count_names_it(capsys, images):
    code = cli(["predict", "--model", ZOO, "--budget", "9999", str(images["rgb"])])
    assert "budget 9999 exceeds the 16 states" in one_line_error(capsys, code)


@needs_model
@pytest.mark.parametrize("argv, message", [
    (["eval", "--data", "FOLDER", "--shift", "1000"], "--shift 1000 is not smaller than the 32-pixel input"),
    (["demo", "--models", "resnet_basic", "--max-shift", "32", "--no-lite0"], "--max-shift 32 is not smaller"),
    (["train-aggregator", "--data", "FOLDER", "--threads", "0", "--out", "x.pt"], "--threads must be positive"),
])
def test_settings_that_would_give_meaningless_numbers(capsys, folder, argv, message):
    argv = [str(folder) if a == "FOLDER" else a for a in argv]
    if argv[0] != "demo":
        argv[1:1] = ["--model", ZOO]
    assert message in one_line_error(capsys, cli(argv + ["--quiet"]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="probes a machine without CUDA")
@pytest.mark.parametrize("name, message", [
    ("cuda", "CUDA is not available"), ("cuda:0", "CUDA is not available"), ("banana", "unknown device"),
    ("cuda:x", "unknown device"), ("meta", "holds no data"), ("", "unknown device"),
])
def test_devices_without_cuda(name, message):
    with pytest.raises(CLIError, match=message):
        resolve_device(name)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="probes a machine without MPS")
def test_mps_off_apple_silicon_is_one_line(capsys, tmp_path):
    code = cli(["eval", "--model", "zoo:resnet_basic", "--data", str(tmp_path), "--device", "mps", "--quiet"])
    assert "MPS (Apple silicon GPU) is not available" in one_line_error(capsys, code)


@pytest.mark.parametrize("argv, message", [
    ([], "give a command: models, demo, eval"),
    (["eval"], "the following arguments are required: --model, --data"),
    (["eval", "--model", "zoo:resnet_basic"], "required: --data"),
    (["predict", "--model", "zoo:resnet_basic", "--budget", "abc", "x.png"], "invalid int value: 'abc'"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["models", "--quiet"], "unrecognized arguments: --quiet"),
])
def test_usage_errors_are_one_line(capsys, argv, message):
    assert message in one_line_error(capsys, cli(argv))


# ---- --out: a file in the way, a read-only place, a missing directory ------------------------------------

@needs_model
def test_out_problems_are_found_before_any_work(capsys, tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    base = ["eval", "--model", ZOO, "--data", str(tmp_path / "no_data_needed"), "--quiet", "--out"]
    assert "afile is a file, not a directory" in one_line_error(capsys, cli(base + [str(afile)]))
    assert "cannot create directory" in one_line_error(capsys, cli(base + [str(afile / "sub")]))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    err = one_line_error(capsys, cli(base + [str(tmp_path / "new")]))  # root ignores chmod: simulated
    assert "permission denied or read-only" in err


@needs_model
@pytest.mark.parametrize("cmd", ["fit-tta", "train-aggregator"])
def test_out_file_problems(capsys, tmp_path, cmd):
    (tmp_path / "afile").write_text("x")
    base = [cmd, "--model", ZOO, "--data", str(tmp_path), "--quiet", "--out"]
    for out, message in ((tmp_path, "is a directory: give a file name"), (tmp_path / "log.json", "ends in .json"),
                         (tmp_path / "afile" / "x.pt", "is a file, not a directory")):
        assert message in one_line_error(capsys, cli(base + [str(out)]))


@pytest.fixture(scope="module")
def folder(tmp_path_factory, images) -> Path:
    """Six 28x28 grayscale PNGs in two classes, plus the broken files of ``images`` in class b."""
    import shutil

    from PIL import Image

    root = tmp_path_factory.mktemp("probe_folder") / "data"
    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / c / f"{i}.png")
    for kind in ("corrupt", "truncated_jpeg", "truncated_png", "bomb"):
        shutil.copy(images[kind], root / "b" / images[kind].name)
    return root


def no_temporary_files(directory: Path) -> bool:
    return not [p for p in directory.rglob("*") if ".tmp" in p.name]


@needs_model
def test_missing_out_directory_is_created_and_unreadable_images_counted(capsys, folder, tmp_path):
    out = tmp_path / "new" / "deep"
    assert cli(["eval", "--model", ZOO, "--data", str(folder), "--budget", "1", "--quiet", "--json",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert payload["images"] == 6 and len(payload["skipped"]["unreadable_images"]) == 4
    assert "4 unreadable images" in captured.err and "Traceback" not in captured.err
    assert json.loads((out / "results.json").read_text()) == payload
    assert {p.name for p in out.iterdir()} == {"results.json", "results.csv", "metrics_vs_budget.png",
                                               "accuracy_vs_cost.png", "pareto.png"}


@needs_model
def test_one_class_folder_works(capsys, folder, tmp_path):
    import shutil

    shutil.copytree(folder / "a", tmp_path / "only" / "a")
    assert cli(["eval", "--model", ZOO, "--data", str(tmp_path / "only"), "--budget", "1", "--quiet",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 3


# ---- predict: one bad file is the command's one-line error -----------------------------------------------

@needs_model
@pytest.mark.parametrize("kind", ["corrupt", "truncated_jpeg", "truncated_png", "bomb"])
def test_predict_on_a_bad_image(capsys, images, kind):
    code = cli(["predict", "--model", ZOO, "--budget", "2", str(images["rgb"]), str(images[kind])])
    assert str(images[kind]) in one_line_error(capsys, code)


@needs_model
def test_predict_on_a_directory(capsys, tmp_path):
    assert "is a directory, not an image file" in one_line_error(capsys, cli(["predict", "--model", ZOO,
                                                                              str(tmp_path)]))


@needs_model
def test_predict_reads_every_mode(capsys, images):
    kinds = ["gray16", "cmyk", "palette_transparent", "rgba", "one", "float_ok"]
    assert cli(["predict", "--model", ZOO, "--budget", "2", "--json", *(str(images[k]) for k in kinds)]) == 0
    predictions = json.loads(capsys.readouterr().out)["predictions"]
    assert [p["image"] for p in predictions] == [str(images[k]) for k in kinds]
    assert all(len(p["undiscard"]) == 5 for p in predictions)


def test_input_smaller_than_a_fixed_size_model_takes(capsys, images):
    if not zoo.weights_path("swin").exists():
        pytest.skip("no swin weights")
    code = cli(["predict", "--model", "zoo:swin", "--input-size", "4", str(images["rgb"])])
    assert "does not run on (1, 4, 4) inputs (--input-size 4)" in one_line_error(capsys, code)


@needs_model
def test_weights_that_are_a_directory(capsys, tmp_path, images):
    code = cli(["predict", "--model", ZOO, "--weights", str(tmp_path), str(images["rgb"])])
    assert "is a directory, not a weights file" in one_line_error(capsys, code)


def test_class_map_that_is_not_text(capsys, images, folder):
    code = cli(["eval", "--model", "zoo:resnet_basic", "--data", str(folder), "--class-map", str(images["rgb"]),
                 "--quiet"])
    assert "is not a text file" in one_line_error(capsys, code)


# ---- Ctrl-C: exit 130, one line, no half-written result file ---------------------------------------------

@needs_model
def test_ctrl_c_while_writing_a_plot_leaves_no_partial_file(capsys, folder, tmp_path, monkeypatch):
    """The files of a run replace the old ones together: Ctrl-C while the plots are written leaves the
    previous run's set as it was (not its JSON replaced and its plots not), and nothing half-written."""
    from matplotlib.figure import Figure

    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics_vs_budget.png").write_bytes(b"the previous run's plot")
    (out / "results.json").write_text('{"previous": true}')

    def interrupted_savefig(self, fname, *args, **kwargs):
        if hasattr(fname, "write"):  # a partial write (to a file object or a name), then Ctrl-C
            fname.write(b"\x89PNG half of it")
        else:
            Path(fname).write_bytes(b"\x89PNG half of it")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", interrupted_savefig)
    code = cli(["eval", "--model", ZOO, "--data", str(folder), "--budget", "1", "--quiet", "--out", str(out)])
    assert one_line_error(capsys, code, expected=130) == "undiscard eval: interrupted"
    assert (out / "metrics_vs_budget.png").read_bytes() == b"the previous run's plot"
    assert json.loads((out / "results.json").read_text()) == {"previous": True}
    assert sorted(p.name for p in out.iterdir()) == ["metrics_vs_budget.png", "results.json"]


@needs_model
def test_ctrl_c_mid_evaluation_writes_nothing(capsys, folder, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("undiscard.cli.eval.evaluate_stream", interrupted)
    code = cli(["eval", "--model", ZOO, "--data", str(folder), "--budget", "1", "--quiet",
                 "--out", str(tmp_path / "out")])
    assert one_line_error(capsys, code, expected=130) == "undiscard eval: interrupted"
    assert not (tmp_path / "out").exists()


@needs_model
def test_ctrl_c_while_saving_a_fitted_tta_file(capsys, folder, tmp_path, monkeypatch):
    real_save = torch.save

    def interrupted_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(10)  # the file cut short, as a kill mid-write leaves it
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    code = cli(["fit-tta", "--model", ZOO, "--data", str(folder), "--policy", "flip", "--aggregate", "augtta",
                 "--quiet", "--out", str(tmp_path / "tta.pt")])
    assert one_line_error(capsys, code, expected=130) == "undiscard fit-tta: interrupted"
    assert list(tmp_path.iterdir()) == []  # neither tta.pt, nor tta.json, nor a temporary file


def test_atomic_path_replaces_only_when_complete(tmp_path):
    from undiscard.evaluation.report import ResultWriteError, atomic_path, write_json

    target = tmp_path / "r.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk on fire")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    write_json(target, {"a": 1})
    assert json.loads(target.read_text())["a"] == 1 and list(tmp_path.iterdir()) == [target]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # the permissions of a plain write
    with pytest.raises(ResultWriteError, match="is a file, not a directory"):
        write_json(target / "sub.json", {})


# ---- Fashion-MNIST paths: say how to get the data --------------------------------------------------------

@needs_model
def test_missing_debian_fashion_mnist_says_how_to_install(capsys, tmp_path, monkeypatch):
    from undiscard.data import fashion_mnist

    missing = tmp_path / "fashion-mnist"
    monkeypatch.setattr("undiscard.data.DEBIAN_ROOT", str(missing))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_ROOT", str(missing))
    code = cli(["train-aggregator", "--model", "zoo:resnet_basic", "--data", str(missing), "--quiet",
                 "--out", str(tmp_path / "a.pt")])
    assert "apt-get install dataset-fashion-mnist" in one_line_error(capsys, code)
    missing.mkdir()
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.load_fashion_mnist("train", missing)


@needs_model
def test_a_test_split_is_never_fitted_on(capsys, tmp_path):
    from undiscard.data import write_idx

    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    code = cli(["fit-tta", "--model", "zoo:resnet_basic", "--data", str(tmp_path), "--quiet",
                 "--out", str(tmp_path / "g.pt")])
    assert "only the test split: fitting never uses it" in one_line_error(capsys, code)


# ---- the last line of defence: warnings, unexpected errors, a closed pipe --------------------------------

def test_unexpected_errors_and_warnings_are_one_line(capsys, monkeypatch):
    from undiscard.cli import models

    def warn_then_fail(args):
        warnings.warn("something odd\nsecond line", UserWarning)
        raise RuntimeError("deep inside\nmore detail")

    monkeypatch.setattr(models, "run", warn_then_fail)
    code = cli(["models"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 2 and "Traceback" not in "".join(err)
    assert err[0] == "undiscard: warning: something odd"
    assert err[1].startswith("undiscard models: error: RuntimeError: deep inside (unexpected; UNDISCARD_DEBUG=1")
    monkeypatch.setenv("UNDISCARD_DEBUG", "1")
    with pytest.raises(RuntimeError, match="deep inside"):
        cli(["models"])


def test_a_closed_pipe_is_quiet(capsys, monkeypatch):
    from undiscard.cli import models

    def closed(args):
        raise BrokenPipeError

    monkeypatch.setattr(models, "run", closed)
    assert cli(["models"]) == 141 and capsys.readouterr().err == ""


@needs_model
def test_no_traceback_reaches_the_terminal(images):
    argv = ["predict", "--model", ZOO, str(images["corrupt"])]
    proc = subprocess.run([sys.executable, "-m", "undiscard", *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@needs_model
def test_predict_searches_the_zoo_models_default_units(capsys, images):
    """One source of defaults: predict searches loaded.units, as eval and demo do."""
    from undiscard.models.loading import load_model

    assert cli(["predict", "--model", ZOO, str(images["rgb"]), "--budget", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["units"] == load_model(ZOO).units == zoo.search_units(MODEL)


def test_version_flag(capsys):
    import undiscard

    assert cli(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"undiscard {undiscard.__version__}"


def test_csv_counts_are_json(tmp_path):
    import csv

    from undiscard.evaluation.report import write_csv

    counts = {"n": 3.0, "correct1": 2.0}
    write_csv(tmp_path / "r.csv", [{"model": "m", "units": ["a", "b"], "counts": counts}])
    with (tmp_path / "r.csv").open() as f:
        row = next(csv.DictReader(f))
    assert json.loads(row["counts"]) == counts and row["units"] == "a,b"


def test_eval_help_has_no_raw_markup(capsys):
    assert cli(["eval", "--help"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":func:" not in out and "--shift" in out
