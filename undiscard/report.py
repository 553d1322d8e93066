"""Presenting results: terminal tables, JSON, CSV and plots. Pure formatting; no model code.

Every result file undiscard writes (JSON, CSV, PNG, aggregator and TTA files) goes through
:func:`atomic_path`: it is written under a temporary name in the same directory and renamed over the
target only once complete, so an interrupted run (Ctrl-C, a crash, a full disk) never leaves a
half-written file — the target is either the old file, absent, or the complete new one.
"""
from __future__ import annotations

import csv
import json
import math
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import UndiscardError

__all__ = ["format_table", "write_json", "write_csv", "write_text", "plot_budgets", "series_name", "method_name",
           "atomic_path", "check_writable_dir", "ResultWriteError"]

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


def write_json(path: Path, payload: dict[str, Any], indent: int = 2) -> Path:
    """``payload`` as indented JSON, written atomically."""
    return write_text(path, json.dumps(payload, indent=indent) + "\n")


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


def plot_budgets(rows: Rows, out_dir: Path, metrics: Sequence[tuple[str, str]] | None = None) -> list[Path]:
    """PNG plots: each metric vs budget (one line per model), and clean/shifted accuracy vs cost."""
    import matplotlib

    matplotlib.use("Agg")
    metrics = metrics or [("top1", "clean top-1 (%)"), ("top1_shifted", "shifted top-1 (%)"),
                          ("consistency", "shift consistency (%)")]
    metrics = [(k, label) for k, label in metrics if any(r.get(k) is not None for r in rows)]
    accuracy = [(k, label) for k, label in metrics if k != "consistency"]
    ours = [r for r in rows if not r.get("tta")]
    paths = [_panels(ours, metrics, "budget", "budget (states per image)", out_dir / "metrics_vs_budget.png"),
             _panels(ours, accuracy, "cost", "cost (baseline forwards per image)", out_dir / "accuracy_vs_cost.png")]
    if any(r.get("tta") for r in rows):
        paths.append(_method_panels(rows, metrics, out_dir / "tta_comparison.png"))
    return paths


def method_name(row: dict[str, Any]) -> str:
    """What produced a row, without the model: ``ours (entropy)``, ``TTA standard/mean``, ``TTA flip/mean + ours``."""
    if not row.get("tta"):
        return f"ours ({row.get('aggregate')})"
    return f"TTA {row['tta']}" + (" + ours" if row.get("budget", 1) > 1 else "")


def _method_panels(rows: Rows, metrics: Sequence[tuple[str, str]], path: Path) -> Path:
    """Each metric vs total budget (views x states), one line per method, averaged over the models."""
    methods = list(dict.fromkeys(method_name(r) for r in rows))
    lines = []
    for key, _ in metrics:
        per: dict[str, list] = {}
        for m in methods:
            by_total: dict[int, list[float]] = {}
            for r in rows:
                if method_name(r) == m and r.get(key) is not None:
                    by_total.setdefault(int(r.get("total_budget") or r["budget"]), []).append(r[key])
            per[m] = sorted((t, sum(v) / len(v)) for t, v in by_total.items())
        lines.append(per)
    labels = [(k, f"{label}, mean over models") for k, label in metrics]
    return _draw(lines, labels, "total budget (views x states)", path)


def series_name(row: dict[str, Any], rows: Rows) -> str:
    """A row's line label: its model, plus the settings that differ between rows (aggregate, ...)."""
    varying = [k for k in ("criterion", "aggregate", "align", "tta") if len({str(r.get(k)) for r in rows}) > 1]
    extra = ", ".join(f"{k}={row.get(k)}" if k == "align" else str(row.get(k)) for k in varying)
    return f"{row['model']} ({extra})" if extra else str(row["model"])


def _panels(rows: Rows, metrics: Sequence[tuple[str, str]], xkey: str, xlabel: str, path: Path) -> Path:
    """One panel per metric, one line per model (and setting), x on a log2 axis."""
    names = [series_name(r, rows) for r in rows]
    series = list(dict.fromkeys(names))
    lines = [{m: sorted((r[xkey], r[key]) for r, nm in zip(rows, names) if nm == m and r.get(key) is not None)
              for m in series} for key, _ in metrics]
    return _draw(lines, metrics, xlabel, path)


def _draw(lines: list[dict[str, list]], metrics: Sequence[tuple[str, str]], xlabel: str, path: Path) -> Path:
    """One panel per metric; ``lines[i]`` maps a line label to its (x, y) points in panel i."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, (_, label), per in zip(axes[0], metrics, lines):
        for name, pts in per.items():
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    if len(names) <= 8:
        axes[0][0].legend(fontsize=7)
    else:  # many lines: one legend beside the panels, in columns
        fig.legend(handles, names, fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5),
                   ncol=1 + len(names) // 24)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
