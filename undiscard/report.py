"""Presenting results: terminal tables, JSON, CSV and atomic result files. Pure formatting; no model code.
The plots are :mod:`undiscard.plots`, the best-method-per-cost summary :mod:`undiscard.summary`.

Every result file undiscard writes (JSON, CSV, PNG, aggregator and TTA files) goes through
:func:`atomic_path`: it is written under a temporary name in the same directory and renamed over the
target only once complete, so an interrupted run (Ctrl-C, a crash, a full disk) never leaves a
half-written file — the target is either the old file, absent, or the complete new one.

Every JSON result says where it came from (:func:`provenance`): the commit of the code that made it, the
date, and the package version, as top-level keys ``commit``, ``date`` and ``version``.
"""
from __future__ import annotations

import csv
import datetime
import functools
import importlib.metadata
import json
import math
import os
import secrets
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import UndiscardError

__all__ = ["format_table", "write_json", "write_csv", "write_text", "atomic_path", "check_writable_dir",
           "ResultWriteError", "provenance", "stamp"]

Rows = Sequence[dict[str, Any]]

COLUMNS = [("model", "model"), ("budget", "B"), ("tta", "TTA"), ("total_budget", "total"), ("criterion", "criterion"),
           ("aggregate", "aggregate"), ("align", "align"), ("top1", "top-1"), ("top1_shifted", "top-1 shifted"),
           ("consistency", "consistency"), ("cost", "cost x")]


_ONLY_IF_VARYING = {"criterion", "align", "total_budget"}  # shown only when rows differ in them


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.2f}"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)


def format_table(rows: Rows, columns: Sequence[tuple[str, str]] = COLUMNS, markdown: bool = False) -> str:
    """A fixed-width (or markdown) table of ``rows``, one column per (key, header)."""
    cols = [(k, h) for k, h in columns if any(r.get(k) is not None for r in rows)
            and (k not in _ONLY_IF_VARYING or len({str(r.get(k)) for r in rows}) > 1)]
    cells = [[_fmt(r.get(k)) for k, _ in cols] for r in rows]
    heads = [h for _, h in cols]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(heads)]
    def line(values: Sequence[str]) -> str:
        parts = [v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts)
    sep = ("|" + "|".join("-" * (w + 2) for w in widths) + "|") if markdown else "  ".join("-" * w for w in widths)
    return "\n".join([line(heads), sep, *(line(c) for c in cells)])


class ResultWriteError(UndiscardError, OSError):
    """A result file could not be written (one line naming the file and the reason)."""


def check_writable_dir(directory: str | Path) -> Path:
    """``directory`` if it is, or can be created as, a directory this process may write to; else one
    :class:`ResultWriteError` line: an existing file in the way, or an unwritable (read-only) ancestor.

    Missing directories are not created here (the writers create them), so a run that fails before
    writing leaves nothing behind. Commands call this before any work, so a bad ``--out`` fails at once.
    """
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise ResultWriteError(f"{d} is a file, not a directory")
    existing = d
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ResultWriteError(f"cannot create directory {d}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ResultWriteError(f"cannot write to {existing}: permission denied or read-only")
    return d


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` (``os.replace``) when the block
    ends normally, deleted when it raises — KeyboardInterrupt included — leaving ``path`` untouched.

    Missing parent directories are created. The temporary name is hidden (``.NAME.PID.RANDOM.tmpSUFFIX``)
    and keeps ``path``'s suffix, so writers that pick a format by extension (matplotlib) still work.
    An OSError (unwritable directory, a parent that is a file, a full disk) becomes one
    :class:`ResultWriteError` line naming ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        check_writable_dir(path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        raise ResultWriteError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


@functools.lru_cache(maxsize=1)
def _commit() -> str | None:
    """The short hash of the git checkout this package runs from, ``-dirty`` when tracked files differ from
    it; None outside a git checkout (an installed wheel) or without git."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=7", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def _package_version() -> str | None:
    try:
        return importlib.metadata.version("undiscard")
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance() -> dict[str, str | None]:
    """``{"commit": ..., "date": ..., "version": ...}``: the short hash of the git checkout the code runs from
    (``-dirty`` when tracked files differ from it; None outside a checkout), today's date (UTC, ISO
    ``YYYY-MM-DD``) and the installed package version, for every result file."""
    return {"commit": _commit(), "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
            "version": _package_version()}


def stamp(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with :func:`provenance`'s keys first; keys the payload already has are kept as they are."""
    return {**provenance(), **payload}


def write_json(path: Path, payload: dict[str, Any], indent: int = 2) -> Path:
    """``payload`` as indented JSON, :func:`stamp`-ed with its provenance, written atomically."""
    return write_text(path, json.dumps(stamp(payload), indent=indent) + "\n")


def write_csv(path: Path, rows: Rows) -> Path:
    """``rows`` as CSV (one column per key seen in any row; lists joined by commas, dicts as JSON), written
    atomically."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _csv_cell(r.get(k)) for k in keys})
    return Path(path)


def _csv_cell(v: Any) -> Any:
    """A CSV cell: lists joined by commas, dicts (the exact ``counts``) as JSON, anything else as is."""
    if isinstance(v, list):
        return _fmt(v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return v
