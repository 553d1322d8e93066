"""Presenting results: terminal tables, JSON, CSV and atomic result files. Pure formatting; no model code.
The plots are :mod:`undiscard.evaluation.plots`, the best-method-per-cost summary :mod:`undiscard.evaluation.summary`.

Every file undiscard writes goes through :mod:`undiscard._atomic` (re-exported here: :func:`atomic_path`,
:func:`check_writable_dir`, :class:`ResultWriteError`): written under a new temporary name and renamed
over the target only once complete, never through a link, so an interrupted run (Ctrl-C, a crash, a full
disk) never leaves a half-written file — the target is either the old file, absent, or the complete new
one; the files of one run are replaced together (:class:`~undiscard._atomic.OutputSet`).

Every JSON result says where it came from (:func:`provenance`): the commit of the code that made it, the
date, and the package version, as top-level keys ``commit``, ``date`` and ``version``.
"""
from __future__ import annotations

import csv
import datetime
import functools
import io
import json
import math
import subprocess
from pathlib import Path
from typing import Any, Sequence

from .._atomic import ResultWriteError, atomic_path, check_writable_dir, write_text
from .._version import __version__

__all__ = ["format_table", "write_json", "write_csv", "write_text", "atomic_path", "check_writable_dir",
           "ResultWriteError", "COLUMNS", "SEGMENTATION_COLUMNS", "provenance", "stamp"]

Rows = Sequence[dict[str, Any]]

COLUMNS = [("model", "model"), ("budget", "B"), ("states", "states"), ("tta", "TTA"), ("total_budget", "total"), ("criterion", "criterion"),
           ("aggregate", "aggregate"), ("align", "align"), ("top1", "top-1"), ("top1_shifted", "top-1 shifted"),
           ("consistency", "consistency"), ("cost", "cost x")]

SEGMENTATION_COLUMNS = [("model", "model"), ("method", "method"), ("budget", "B"), ("views", "views"),
                        ("aggregate", "aggregate"), ("miou", "mIoU"), ("pixel_acc", "pixel acc"),
                        ("miou_shifted", "mIoU shifted"), ("consistency", "pixel consistency"),
                        ("boundary_f1", "boundary F1"), ("cost", "cost x")]

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
            and (k not in _ONLY_IF_VARYING or len({str(r.get(k)) for r in rows}) > 1)
            and (k != "states" or any(r.get(k) not in (None, r.get("budget")) for r in rows))]  # a stop capped B
    cells = [[_fmt(r.get(k)) for k, _ in cols] for r in rows]
    heads = [h for _, h in cols]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(heads)]
    def line(values: Sequence[str]) -> str:
        parts = [v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts)
    sep = ("|" + "|".join("-" * (w + 2) for w in widths) + "|") if markdown else "  ".join("-" * w for w in widths)
    return "\n".join([line(heads), sep, *(line(c) for c in cells)])


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


def provenance() -> dict[str, str | None]:
    """``{"commit": ..., "date": ..., "version": ...}``: the short hash of the git checkout the code runs from
    (``-dirty`` when tracked files differ from it; None outside a checkout), today's date (UTC, ISO
    ``YYYY-MM-DD``) and the package version, for every result file."""
    return {"commit": _commit(), "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
            "version": __version__}


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
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _csv_cell(r.get(k)) for k in keys})
    return write_text(path, text.getvalue())


def _csv_cell(v: Any) -> Any:
    """A CSV cell: lists joined by commas, dicts (the exact ``counts``) as JSON, anything else as is."""
    if isinstance(v, list):
        return _fmt(v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return v
