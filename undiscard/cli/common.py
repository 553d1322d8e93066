"""What every subcommand shares: output options, progress bars, budgets parsing, error reporting."""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import UndiscardError

__all__ = ["CLIError", "add_output_args", "parse_budgets", "progress_bar", "emit_json", "resolve_device"]


class CLIError(UndiscardError):
    """Bad command-line input; reported as one line, exit status 2."""


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a machine-readable result on stdout")
    p.add_argument("--out", type=Path, default=None, help="directory for result files (JSON, CSV, PNG)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def parse_budgets(text: str) -> list[int]:
    try:
        budgets = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise CLIError(f"--budget must be comma-separated integers, got {text!r}") from None
    if not budgets or any(b <= 0 for b in budgets):
        raise CLIError(f"budgets must be positive integers, got {text!r}")
    return budgets


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CLIError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"device {name!r} requested but CUDA is not available")
    return device


@contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True) -> Iterator[Any]:
    """A tqdm bar on stderr (or a no-op object when tqdm is missing or disabled); ``bar.update(n)``."""
    bar = None
    if enabled:
        try:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True, leave=False)
        except ImportError:
            bar = None

    class _Null:
        def update(self, n: int = 1) -> None: ...
        def set_description(self, d: str) -> None: ...

    try:
        yield bar if bar is not None else _Null()
    finally:
        if bar is not None:
            bar.close()


def emit_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")
