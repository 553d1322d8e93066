"""`undiscard eval` and `predict` on an image folder made from the bundled test set."""
from __future__ import annotations

import json

import pytest
import torch

from undiscard import zoo
from undiscard.cli import main
from undiscard.data import CLASS_NAMES, load_fashion_mnist, preprocess

MODEL = next((n for n in zoo.list_models() if zoo.weights_path(n).exists()), None)
pytestmark = pytest.mark.skipif(MODEL is None, reason="no trained zoo weights in this checkout")
N = 24


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    images, labels = load_fashion_mnist("test")
    names = [c.replace("/", "_") for c in CLASS_NAMES]
    for i in range(N):
        d = root / "data" / names[labels[i]]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(d / f"{i:03d}.png")
    (root / "data" / names[labels[0]] / "README.txt").write_text("not an image")
    class_map = root / "classes.json"
    class_map.write_text(json.dumps({n: i for i, n in enumerate(names)}))
    return root / "data", class_map, images[:N], labels[:N]


def run_json(capsys, argv):
    assert main(argv + ["--quiet", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_budget_one_is_the_plain_model(capsys, folder):
    data, class_map, images, labels = folder
    out = run_json(capsys, ["eval", "--model", f"zoo:{MODEL}", "--data", str(data), "--class-map", str(class_map),
                            "--budget", "1,2", "--shift", "3"])
    assert out["images"] == N and out["skipped"]["non_image_files"] == 1
    rows = out["results"]
    assert [r["budget"] for r in rows] == [1, 2]
    cfg = zoo.model_config(MODEL)
    with torch.no_grad():
        pred = zoo.create_model(MODEL)(preprocess(images, cfg["input_size"][-1], cfg["in_chans"])).argmax(-1)
    # the folder is read in sorted class order; accuracy does not depend on order
    assert rows[0]["top1"] == pytest.approx(100 * (pred == torch.as_tensor(labels)).float().mean().item())
    assert all(r["top1_shifted"] is not None and r["consistency"] is not None for r in rows)
    assert rows[1]["cost"] > 1.0


def test_predict_json(capsys, folder):
    data, _, _, _ = folder
    files = sorted(str(p) for p in data.rglob("*.png"))[:2]
    out = run_json(capsys, ["predict", "--model", f"zoo:{MODEL}", "--budget", "2", *files])
    assert [p["image"] for p in out["predictions"]] == files
    for p in out["predictions"]:
        assert len(p["baseline"]) == 5 and len(p["undiscard"]) == 5
        assert p["baseline"][0]["name"] in CLASS_NAMES


def test_weights_that_do_not_fit(capsys, folder, tmp_path):
    data, class_map, _, _ = folder
    bad = tmp_path / "bad.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    assert main(["eval", "--model", f"zoo:{MODEL}", "--data", str(data), "--weights", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "do not fit the model" in err and "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    (["--data", "/nonexistent/dir"], "data directory not found"),
    (["--budget", "0"], "budgets must be positive"),
    (["--budget", "-3"], "budgets must be positive"),
    (["--criterion", "greedy"], "unknown criterion"),
    (["--aggregate", "median"], "--aggregate must list some of"),
    (["--model", "zoo:nope"], "unknown zoo model"),
    (["--model", "timm:not_a_model"], "unknown timm model"),
    (["--weights", "/nonexistent.pt"], "weights file not found"),
    (["--limit", "0"], "--limit must be positive"),
])
def test_eval_bad_input(capsys, folder, extra, message):
    data, class_map, _, _ = folder
    argv = ["eval", "--model", f"zoo:{MODEL}", "--data", str(data), "--quiet"]
    for flag in ("--data", "--model"):
        if flag in extra:
            i = argv.index(flag)
            del argv[i:i + 2]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_empty_and_imageless_folders(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--model", f"zoo:{MODEL}", "--data", str(tmp_path / "empty"), "--quiet"]) == 2
    assert "no class subfolders" in capsys.readouterr().err
    (tmp_path / "textonly" / "a").mkdir(parents=True)
    (tmp_path / "textonly" / "a" / "x.txt").write_text("x")
    assert main(["eval", "--model", f"zoo:{MODEL}", "--data", str(tmp_path / "textonly"), "--quiet"]) == 2
    assert "no images found" in capsys.readouterr().err


def test_unreadable_image_is_skipped_and_counted(capsys, folder, tmp_path):
    import shutil

    data, class_map, _, _ = folder
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    broken = next(copy.iterdir()) / "broken.png"
    broken.write_bytes(b"not a png")
    out = run_json(capsys, ["eval", "--model", f"zoo:{MODEL}", "--data", str(copy), "--class-map", str(class_map),
                            "--budget", "1"])
    assert out["images"] == N and out["skipped"]["unreadable_images"] == [str(broken)]


def test_predict_missing_image(capsys):
    assert main(["predict", "--model", f"zoo:{MODEL}", "/nonexistent.png"]) == 2
    assert "image not found" in capsys.readouterr().err


def test_torchrun_two_processes_equal_one(capsys, folder):
    """`torchrun --nproc-per-node 2 -m undiscard eval` (gloo on CPU) gives the single-process numbers."""
    import os
    import socket
    import subprocess
    import sys

    data, class_map, _, _ = folder
    args = ["eval", "--model", f"zoo:{MODEL}", "--data", str(data), "--class-map", str(class_map),
            "--budget", "1,2", "--shift", "3", "--quiet", "--json"]
    single = run_json(capsys, args[:-2])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:  # a free port, not a fixed one another job may hold
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "undiscard", *args],
                          capture_output=True, text=True, timeout=300, env=env)
    errors = [line for line in proc.stderr.splitlines()
              if any(k in line for k in ("Error", "error:", "terminate called", "Fatal Python error"))]
    assert proc.returncode == 0, "\n".join(errors[:20]) + "\n...\n" + proc.stderr[-1500:]
    multi = json.loads(proc.stdout)  # only rank 0 printed
    assert multi["processes"] == 2 and multi["images"] == single["images"] == N
    exact = ("n", "correct1", "correct5", "correct_shifted", "agree")
    for a, b in zip(single["results"], multi["results"]):
        assert {k: a["counts"][k] for k in exact} == {k: b["counts"][k] for k in exact}
        for key in ("top1", "top5", "top1_shifted", "consistency"):
            assert a[key] == b[key]
        assert a["cost"] == pytest.approx(b["cost"], rel=1e-9)


def test_rgb_model_on_grayscale_images_with_a_text_class_map(capsys, folder, tmp_path):
    """A timm model (3 channels, ImageNet preprocessing overridden to 32 px) reads the grayscale PNGs as
    RGB; the class map is a text file, one folder name per line (ImageNet's synset-list format)."""
    import shutil

    data, _, _, _ = folder
    names = [c.replace("/", "_") for c in CLASS_NAMES]
    wnids = [f"n{i:08d}" for i in range(len(names))]  # WordNet-style folder names
    copy = tmp_path / "wnid"
    for name, wnid in zip(names, wnids):
        if (data / name).is_dir():
            shutil.copytree(data / name, copy / wnid)
    text_map = tmp_path / "synsets.txt"
    text_map.write_text("".join(f"{w} {n}, a description\n" for w, n in zip(wnids, names)))
    out = run_json(capsys, ["eval", "--model", "timm:resnet18", "--num-classes", "10", "--input-size", "32",
                            "--crop-pct", "1.0", "--data", str(copy), "--class-map", str(text_map),
                            "--budget", "1,2"])
    assert out["images"] == N and [r["budget"] for r in out["results"]] == [1, 2]
    assert all(0.0 <= r["top1"] <= 100.0 for r in out["results"])


def test_eval_with_tta_counts_every_view(capsys, folder):
    data, class_map, images, labels = folder
    base = ["eval", "--model", f"zoo:{MODEL}", "--data", str(data), "--class-map", str(class_map), "--shift", "2"]
    plain = run_json(capsys, base + ["--budget", "1,2"])["results"]
    baseline, *rows = run_json(capsys, base + ["--budget", "1,2", "--tta", "flip"])["results"]
    assert [(r["budget"], r["tta"], r["tta_views"], r["total_budget"]) for r in rows] == \
        [(1, "flip/mean", 2, 2), (2, "flip/mean", 2, 4)]
    # the plain network's row comes first, measured on the same images: the row without --tta
    assert (baseline["budget"], baseline["tta"], baseline["cost"], baseline["family"]) == (1, None, 1.0, "plain")
    assert baseline["top1"] == plain[0]["top1"] and baseline["top1_shifted"] == plain[0]["top1_shifted"]
    assert rows[0]["cost"] == pytest.approx(2.0)
    assert rows[1]["cost"] == pytest.approx(2 * plain[1]["cost"], rel=0.25)  # flipped images search differently
    assert main(base + ["--tta", "flip", "--tta-aggregate", "gps", "--quiet"]) == 2
    assert "--fit-data" in capsys.readouterr().err


def test_fit_tta_then_eval_with_the_file(capsys, folder, tmp_path):
    data, class_map, _, _ = folder
    out = tmp_path / "gps.pt"
    log = run_json(capsys, ["fit-tta", "--model", f"zoo:{MODEL}", "--data", str(data), "--class-map", str(class_map),
                            "--policy", "standard", "--aggregate", "gps", "--tta-budget", "3", "--out", str(out)])
    assert out.is_file() and len(log["views"]) == 30 and 1 <= len(log["views_used"]) <= 3
    rows = run_json(capsys, ["eval", "--model", f"zoo:{MODEL}", "--data", str(data), "--class-map", str(class_map),
                             "--budget", "1", "--tta", "standard", "--tta-file", str(out)])["results"][1:]
    assert rows[0]["tta_views"] == len(log["views_used"]) and rows[0]["cost"] == pytest.approx(len(log["views_used"]))
    assert main(["eval", "--model", f"zoo:{MODEL}", "--data", str(data), "--tta", "flip", "--tta-file", str(out),
                 "--quiet"]) == 2
    assert "fitted for views" in capsys.readouterr().err


def test_train_aggregator_then_eval_attention(capsys, folder, tmp_path):
    data, class_map, _, _ = folder
    out = tmp_path / "attn.pt"
    log = run_json(capsys, ["train-aggregator", "--model", f"zoo:{MODEL}", "--data", str(data), "--class-map",
                            str(class_map), "--out", str(out), "--epochs", "1", "--budget", "4", "--val-fraction",
                            "0.25"])
    assert out.is_file() and log["budget"] == 4 and log["train_images"] == 18 and len(log["history"]) == 1
    assert set(log["history"][0]["val"]) == {"mean", "entropy", "attention"}
    rows = run_json(capsys, ["eval", "--model", f"zoo:{MODEL}", "--data", str(data), "--class-map", str(class_map),
                             "--budget", "1,4", "--aggregate", "entropy,attention", "--aggregator", str(out)])["results"]
    assert [(r["budget"], r["aggregate"]) for r in rows] == [(1, "entropy"), (1, "attention"), (4, "entropy"),
                                                             (4, "attention")]
    assert rows[0]["top1"] == rows[1]["top1"]  # budget 1 is the model itself, whatever the aggregation
    assert rows[2]["cost"] == rows[3]["cost"]  # one search serves both aggregations
