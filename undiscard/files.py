"""Small tagged ``torch.save`` files (aggregators): one writer, one reader with one-line errors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_tagged", "load_tagged"]


def save_tagged(path: str | Path, fmt: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (tensors, numbers, strings, lists; ``meta`` made JSON-safe) tagged with ``fmt``."""
    from .report import atomic_path

    path = Path(path)
    blob = {**payload, "format": fmt}
    if "meta" in blob:
        blob["meta"] = json.loads(json.dumps(blob["meta"] or {}, default=str))
    with atomic_path(path) as tmp:  # never a half-written file, even on Ctrl-C
        torch.save(blob, tmp)
    return path


def load_tagged(path: str | Path, fmt: str, error: type[Exception], what: str) -> dict[str, Any]:
    """Read a file from :func:`save_tagged`; ``error(one line)`` when missing, unreadable or not ``fmt``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} file not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line error
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise error(f"cannot read {what} file {path}: {type(err).__name__}: {first}") from None
    if not isinstance(blob, dict) or blob.get("format") != fmt:
        raise error(f"{path} is not an undiscard {what} file")
    return blob
