"""Files the package reads and writes: tagged ``torch.save`` files (aggregators: one writer, one reader
with one-line errors) and model weights (state_dicts or checkpoints)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UndiscardError

__all__ = ["save_tagged", "load_tagged", "load_weights"]


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


def load_weights(model: nn.Module, path: str) -> None:
    """Load a state_dict or checkpoint file into ``model``; a mismatch raises one clear error."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UndiscardError(f"weights file not found: {path}") from None
    except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
        raise UndiscardError(f"cannot read weights file {path}: not a PyTorch state_dict or checkpoint "
                             f"({type(err).__name__}: {str(err).strip()[:120]})") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise UndiscardError(f"weights file {path} holds no state_dict")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3])[:300]
        raise UndiscardError(f"weights in {path} do not fit the model: {detail}") from None
