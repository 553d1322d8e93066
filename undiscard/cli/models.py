"""``undiscard models``: the model names that ``--model`` accepts from the bundled zoo."""
from __future__ import annotations

import argparse

from .common import emit_json


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help="list the bundled models (zoo:NAME), one per line")
    p.add_argument("--json", action="store_true", help="print name, accuracy and size as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    from .. import zoo

    names = zoo.list_models()
    if args.json:
        rows = []
        for name in names:
            log = zoo.training_log(name) or {}
            rows.append({"model": f"zoo:{name}", "test_top1": log.get("test_acc"),
                         "weights": zoo.weights_path(name).exists()})
        emit_json({"models": rows})
        return 0
    for name in names:
        print(f"zoo:{name}")
    return 0
