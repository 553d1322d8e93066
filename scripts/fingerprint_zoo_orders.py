"""Add the model fingerprint (:func:`undiscard.search.orders.model_fingerprint`) to the shipped zoo orders.

Orders ranked before fingerprints were recorded carry none, so an order used on another model could not
be told apart. This loads each zoo model (classifiers and, with segmentation-models-pytorch, segmenters),
sets it up with its order's units on one blank input exactly as ``wrap(criterion="calibrated")`` does,
and writes the fingerprint into ``undiscard/zoo/orders/NAME.json``. The states, stop and meta are kept
as they are (checked before writing); ranking them again is ``scripts/calibrate_zoo.py``.

    python scripts/fingerprint_zoo_orders.py [--models resnet_basic,seg_fpn]
"""
from __future__ import annotations

import argparse
import importlib.util
import sys

import torch

import undiscard
from undiscard.search.orders import ORDERS_DIR, load_order, model_fingerprint, save_order


def _model(name: str) -> tuple[torch.nn.Module, tuple[int, ...], str | None]:
    """The zoo network ``name``, its input shape (C, H, W) and its task."""
    if name.startswith("seg_"):
        from undiscard.zoo import segmentation as segzoo

        cfg = segzoo.model_config(name)
        return segzoo.create_model(name), tuple(int(v) for v in cfg["input_size"]), "segmentation"
    from undiscard import zoo

    cfg = zoo.model_config(name)
    return zoo.create_model(name), tuple(int(v) for v in cfg["input_size"]), None


def run(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="comma-separated zoo names (default: every shipped order)")
    args = ap.parse_args(argv)
    names = args.models.split(",") if args.models else sorted(p.stem for p in ORDERS_DIR.glob("*.json"))
    for name in names:
        if name.startswith("seg_") and importlib.util.find_spec("segmentation_models_pytorch") is None:
            print(f"{name}: skipped (segmentation-models-pytorch is not installed)", file=sys.stderr)
            continue
        path = ORDERS_DIR / f"{name}.json"
        order = load_order(path)
        net, shape, task = _model(name)
        model = undiscard.wrap(net, budget=1, criterion="calibrated", order=order, task=task)
        model.prepare(torch.zeros(1, *shape))
        fingerprint = model_fingerprint(model.net, model.search_units)
        before = order.to_json()
        order.fingerprint = fingerprint
        after = order.to_json()
        assert all(after[k] == before[k] for k in before if k != "fingerprint"), name  # states, stop, meta kept
        save_order(order, path)
        print(f"{name}: {fingerprint['class']}, {fingerprint['parameters']} parameters, units "
              f"{', '.join(u['name'] for u in fingerprint['units'])}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
