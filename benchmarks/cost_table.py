"""Cost table: what ``wrap(net, budget=B)`` costs per image, measured, against B, for many models.

For every row (a model, an input size, the ``wrap`` arguments it is used with) and budget B this reports

- ``cost``: ``model.last_cost`` after a call (FLOPs the call ran, in plain forwards; setup excluded:
  ``prepare`` and one warm-up call run first), and ``cost / B``; the library promises ``cost <= B``
  plus one run of the head on the aggregated features, and less where states are recomputed from a
  cut on a cached activation;
- ``wall x``: the median wall time of the call over the median of the plain ``net(x)``, timed
  alternately (plain, wrapped, plain, ...) so machine load hits both alike.

Rows are builders in :data:`ROWS` (``@row("name")``): add one by writing a function that returns a
:class:`Case`. Models with random weights are seeded; zoo models and EfficientNet-Lite0 have their real
weights. Run from the repository root (one thread by default)::

    python benchmarks/cost_table.py                          # every row, B = 2, 4, 8, 16
    python benchmarks/cost_table.py --rows timm:vit_tiny_patch16_224,zoo:resnet_basic --budgets 2,4
    python benchmarks/cost_table.py --criteria entropy,offset --out benchmarks/results/cost_table

``--out PATH`` writes ``PATH.json`` and ``PATH.md`` (with the command, date and commit).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

import undiscard
from undiscard.errors import UndiscardError
from undiscard.evaluation.report import stamp
from undiscard.models.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
GOAL = 0.25  # every model within B + 0.25 plain forwards at B = 2, 4, 8


@dataclass
class Case:
    """One row's model (eval mode), input batch and ``wrap`` keyword arguments."""

    net: nn.Module
    x: Tensor
    wrap: dict[str, Any] = field(default_factory=dict)
    note: str = ""


ROWS: dict[str, Callable[[], Case]] = {}


def row(name: str) -> Callable[[Callable[[], Case]], Callable[[], Case]]:
    """Register a row builder under ``name``."""
    def deco(fn: Callable[[], Case]) -> Callable[[], Case]:
        ROWS[name] = fn
        return fn
    return deco


def _images(n: int, channels: int, size: int) -> Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(1))


def _timm(name: str, size: int, **kw: Any) -> Callable[[], Case]:
    def build() -> Case:
        torch.manual_seed(0)
        import timm

        net = timm.create_model(name, pretrained=False, num_classes=1000, **kw).eval()
        return Case(net, _images(2, 3, size), note=f"timm, random weights, {size} px")
    return build


def _tv(name: str, size: int) -> Callable[[], Case]:
    def build() -> Case:
        torch.manual_seed(0)
        import torchvision

        net = torchvision.models.get_model(name, weights=None).eval()
        return Case(net, _images(2, 3, size), note=f"torchvision, random weights, {size} px")
    return build


def _zoo(name: str) -> Callable[[], Case]:
    def build() -> Case:
        loaded = load_model(f"zoo:{name}")
        return Case(loaded.model.eval(), _images(8, 1, 32), {"units": loaded.units},
                    note="zoo, real weights, 32 px, its default units")
    return build


def _segzoo(name: str) -> Callable[[], Case]:
    def build() -> Case:
        from undiscard.zoo import segmentation as segzoo

        net = segzoo.create_model(name)
        return Case(net, _images(2, 1, 96), {"task": "segmentation"}, note="zoo segmenter, real weights, 96 px")
    return build


for _name, _size, _kw in [("vit_tiny_patch16_224", 64, {"img_size": 64}), ("deit_tiny_patch16_224", 64, {"img_size": 64}),
                          ("swin_tiny_patch4_window7_224", 128, {"img_size": 128, "window_size": 4}),
                          ("convnext_atto", 128, {}), ("convnext_nano", 128, {}), ("resnet18", 128, {}),
                          ("efficientnet_b0", 128, {}), ("mobilenetv3_small_100", 128, {}), ("regnetx_002", 128, {}),
                          ("pvt_v2_b0", 128, {}), ("mobilevit_xxs", 128, {})]:
    row(f"timm:{_name}")(_timm(_name, _size, **_kw))
for _name in ("resnet18", "mobilenet_v3_small"):
    row(f"torchvision:{_name}")(_tv(_name, 128))
for _name in ("resnet_basic", "resnext", "mobilenetv2", "convnext", "swin", "pvtv2", "mobilevit"):
    row(f"zoo:{_name}")(_zoo(_name))


@row("efficientnet-lite0")
def _lite0() -> Case:
    return Case(load_model("efficientnet-lite0").model.eval(), _images(2, 3, 224), note="real ImageNet weights, 224 px")


for _name in ("seg_fpn", "seg_deeplabv3plus", "seg_segformer"):
    row(f"zoo:{_name}")(_segzoo(_name))


def _hf(model_class: str, config: Callable[[Any], Any], size: int, task: str | None = None) -> Callable[[], Case]:
    """A Hugging Face ``transformers`` model from a config (the named architecture's, random weights)."""
    def build() -> Case:
        torch.manual_seed(0)
        import transformers

        net = getattr(transformers, model_class)(config(transformers)).eval()
        return Case(net, _images(2, 3, size), {"task": task} if task else {},
                    note=f"Hugging Face {model_class}, random weights, {size} px")
    return build


# the architectures of microsoft/resnet-50, a ViT-Tiny/16, microsoft/swin-tiny, facebook/convnext-tiny and
# nvidia/mit-b0 (each config's defaults, or the widths that make it one)
row("hf:resnet-50")(_hf("ResNetForImageClassification", lambda t: t.ResNetConfig(num_labels=1000), 128))
row("hf:vit-tiny-patch16")(_hf(
    "ViTForImageClassification", lambda t: t.ViTConfig(image_size=64, hidden_size=192, num_attention_heads=3,
                                                       intermediate_size=768, num_labels=1000), 64))
row("hf:swin-tiny")(_hf(
    "SwinForImageClassification", lambda t: t.SwinConfig(image_size=128, window_size=4, num_labels=1000), 128))
row("hf:convnext-tiny")(_hf("ConvNextForImageClassification",
                                         lambda t: t.ConvNextConfig(num_labels=1000), 128))
row("hf:segformer-b0")(_hf("SegformerForSemanticSegmentation",
                                         lambda t: t.SegformerConfig(num_labels=19), 128, "segmentation"))


# --- measuring ---------------------------------------------------------------------------------
def _wall(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(name: str, budgets: list[int], criteria: list[str], repeats: int, log: Callable[[str], None]) -> dict:
    case = ROWS[name]()
    net, x = case.net, case.x
    out: dict[str, Any] = {"row": name, "note": case.note, "batch": int(x.shape[0]),
                           "input": list(x.shape[1:]), "results": []}
    with torch.no_grad():
        net(x)
        plain = [_wall(lambda: net(x)) for _ in range(repeats)]
    for criterion in criteria:
        for b in budgets:
            entry: dict[str, Any] = {"criterion": criterion, "budget": b}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = undiscard.wrap(net, budget=1, criterion=criterion, **case.wrap)
                    model.prepare(x)
                    if b > model.num_states:
                        raise UndiscardError(f"budget {b} exceeds the {model.num_states} states")
                    model.budget = b
                    with torch.no_grad():
                        model(x)  # warm-up (what a first call sets up is not counted)
                        pairs = [(_wall(lambda: net(x)), _wall(lambda: model(x))) for _ in range(repeats)]
            except UndiscardError as err:
                entry["error"] = str(err)
                out["results"].append(entry)
                log(f"{name} {criterion} B={b}: {err}")
                continue
            plain += [p for p, _ in pairs]
            entry.update(cost=model.last_cost, cost_per_b=model.last_cost / b, cost_ideal=model.last_cost_ideal,
                         wall_x=statistics.median(o for _, o in pairs) / statistics.median(p for p, _ in pairs),
                         searched=[u.name for u in model.search_units], rates=[u.rate for u in model.search_units],
                         split=model.split_method)
            out["results"].append(entry)
            log(f"{name} {criterion} B={b}: cost {entry['cost']:.2f} ({entry['cost_per_b']:.3f} B), "
                f"wall {entry['wall_x']:.2f}x")
    out["plain_s"] = statistics.median(plain)
    return out


def markdown(report: dict) -> str:
    budgets, criteria = report["config"]["budgets"], report["config"]["criteria"]
    lines = ["# Cost per image of `wrap(net, budget=B)`, in plain forwards", "",
             f"Command: `{report['command']}`  ", f"Date: {report['date']}; commit {report['commit']}; "
             f"torch {report['torch']}, {report['threads']} thread(s), {report['platform']}"
             + (f"; load average {report['loadavg'][0]:.1f} before, {report['loadavg'][1]:.1f} after (wall times on a "
                "busy machine are only indicative)" if "loadavg" in report else "") + ".", "",
             "`cost` is `model.last_cost` (FLOPs counted by `torch.utils.flop_counter`, setup excluded); "
             "`wall` is the median wall time over the plain forward's, timed alternately. "
             f"Goal: cost <= B + {GOAL} at B = 2, 4, 8.", ""]
    for criterion in criteria:
        lines += [f"## criterion `{criterion}`", "",
                  "| model | searched (rates) | " + " | ".join(f"B={b} cost (wall x)" for b in budgets) + " |",
                  "|---|---|" + "---:|" * len(budgets)]
        for r in report["rows"]:
            cells, searched = [], ""
            for b in budgets:
                e = next((e for e in r["results"] if e["criterion"] == criterion and e["budget"] == b), None)
                if e is None or "error" in e:
                    cells.append("-")
                    continue
                searched = ", ".join(f"{n} ({k})" for n, k in zip(e["searched"], e["rates"]))
                mark = "" if b > 8 or e["cost"] <= b + GOAL else " **over**"
                cells.append(f"{e['cost']:.2f} ({e['wall_x']:.2f}x){mark}")
            lines.append(f"| {r['row']} | {searched} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names (default: all)")
    p.add_argument("--budgets", default="2,4,8,16")
    p.add_argument("--criteria", default="entropy", help="comma-separated criteria (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        p.error(f"unknown rows {', '.join(unknown)}; known: {', '.join(ROWS)}")
    torch.set_num_threads(args.threads)
    budgets = [int(b) for b in args.budgets.split(",")]
    criteria = [c.strip() for c in args.criteria.split(",") if c.strip()]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    load_before = os.getloadavg()[0]
    rows = [measure(n, budgets, criteria, args.repeats, log) for n in names]
    report = {"command": "python benchmarks/cost_table.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": _commit(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "platform": platform.platform(),
              "loadavg": [load_before, os.getloadavg()[0]],
              "config": {"budgets": budgets, "criteria": criteria, "repeats": args.repeats}, "rows": rows}
    text = markdown(report)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".json").write_text(json.dumps(stamp(report), indent=1))
        Path(args.out + ".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
