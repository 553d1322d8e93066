"""Files the package reads (and its tagged ``torch.save`` files): one check that an input is a readable
regular file, one safe ``torch.load``, tagged files (aggregators, TTA aggregators: one writer, one reader)
and model weights (state_dicts or checkpoints). Writing goes through :mod:`undiscard._atomic`.

Every ``torch.load`` here is ``weights_only=True``: a file holding pickled Python objects other than
tensors, numbers, strings and containers of them (classes, functions, code) is refused for safety — loading
it could run code — with one line saying so; undiscard never offers to turn that protection off.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import stat
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._atomic import atomic_write, file_kind
from .errors import UndiscardError

__all__ = ["check_file", "safe_torch_load", "save_tagged", "load_tagged", "load_weights"]


def check_file(path: str | Path, what: str, error: type[Exception] = UndiscardError) -> Path:
    """``path`` if it is a regular file (links followed); else one ``error`` line: ``WHAT not found: PATH``
    (a dangling link says so), or ``PATH is a directory / a FIFO / ..., not a WHAT`` — never an attempt to
    read it (a FIFO would block)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        dangling = os.path.islink(path)
        raise error(f"{what} not found: {path}" + (" (a symbolic link to a missing file)" if dangling else "")) \
            from None
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror or err}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path} is {file_kind(st.st_mode)}, not {'an' if what[:1] in 'aeiou' else 'a'} {what}")
    return path


def _short(text: str, limit: int = 120) -> str:
    """The first line of ``text``, cut at a word boundary within ``limit`` characters."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(first) <= limit:
        return first
    return first[:limit].rsplit(" ", 1)[0] + " ..."


_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")  # what torch's weights-only unpickler refused


def safe_torch_load(path: str | Path, what: str, error: type[Exception] = UndiscardError,
                    expected: str = "a PyTorch file") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, every failure one ``error`` line naming the file:
    not a regular file (:func:`check_file`), holding pickled objects other than tensors and plain data
    (refused for safety, naming the object), or truncated, damaged or not ``expected`` at all."""
    path = check_file(path, f"{what} file", error)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged file fails in many ways (RuntimeError, OSError, KeyError)
        refused = _GLOBAL.search(str(err)) if isinstance(err, pickle.UnpicklingError) else None
        if refused is not None:
            raise error(f"{what} file {path} holds a pickled Python object ({refused.group(1)}) besides tensors, "
                        "numbers, strings and containers of them: refused for safety, since loading it could run "
                        "code; save a plain state_dict instead") from None
        detail = "" if isinstance(err, (OSError, KeyError, pickle.UnpicklingError)) else \
            f"; {type(err).__name__}: {_short(str(err))}"
        raise error(f"cannot read {what} file {path}: not {expected} (truncated, damaged or another format{detail})") \
            from None


def save_tagged(path: str | Path, fmt: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (tensors, numbers, strings, lists; ``meta`` made JSON-safe) tagged with ``fmt``,
    atomically (:func:`undiscard._atomic.atomic_write`)."""
    path = Path(path)
    blob = {**payload, "format": fmt}
    if "meta" in blob:
        blob["meta"] = json.loads(json.dumps(blob["meta"] or {}, default=str))
    with atomic_write(path) as f:  # never a half-written file, even on Ctrl-C
        torch.save(blob, f)
    return path


def load_tagged(path: str | Path, fmt: str, error: type[Exception], what: str) -> dict[str, Any]:
    """Read a file from :func:`save_tagged`; ``error(one line)`` when missing, not a file, unreadable,
    refused (:func:`safe_torch_load`) or not ``fmt``."""
    blob = safe_torch_load(path, what, error)
    if not isinstance(blob, dict) or blob.get("format") != fmt:
        raise error(f"{path} is not an undiscard {what} file")
    if not isinstance(blob.get("meta", {}), (dict, type(None))):
        raise error(f"{path}: damaged {what} file (its meta is a {type(blob['meta']).__name__}, not a mapping)")
    return blob


def load_weights(model: nn.Module, path: str) -> None:
    """Load a state_dict or checkpoint file into ``model``; a mismatch raises one clear error."""
    obj = safe_torch_load(path, "weights", expected="a PyTorch state_dict or checkpoint")
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise UndiscardError(f"weights file {path} holds no state_dict: not a PyTorch state_dict or checkpoint")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3])[:300]
        raise UndiscardError(f"weights in {path} do not fit the model: {detail}") from None
