"""Markdown tables for the README from ``undiscard demo --json`` results files.

    python scripts/results_tables.py zoo results/demo_full/results.json
        model x budget: clean top-1, shifted top-1, consistency, cost (entropy aggregation, aligned)
    python scripts/results_tables.py aggregators results/agg_*/results.json
        per model and budget: every (criterion, aggregate, align) found across the files
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from undiscard.report import format_table  # noqa: E402


def load(paths: list[str]) -> list[dict]:
    rows: list[dict] = []
    for p in paths:
        rows += json.loads(Path(p).read_text())["results"]
    return rows


def zoo_table(rows: list[dict], aggregate: str = "entropy") -> str:
    """Rows of one aggregation with alignment on (and the label-free EfficientNet-Lite0 rows)."""
    ours = [r for r in rows if not r.get("tta")]
    keep = [r for r in ours if (r.get("aggregate"), r.get("align")) == (aggregate, True) or r.get("top1") is None]
    cols = [("model", "model"), ("budget", "B"), ("top1", "top-1"), ("top1_shifted", "top-1 shifted"),
            ("consistency", "consistency"), ("cost", "cost x")]
    return format_table(keep, cols, markdown=True)


def aggregator_table(rows: list[dict]) -> str:
    rows = [r for r in rows if not r.get("tta") and r.get("top1") is not None]
    seen: set = set()
    unique = []
    for r in sorted(rows, key=lambda r: (r["model"], r["budget"], r["criterion"], r["aggregate"], not r["align"])):
        key = (r["model"], r["budget"], r["criterion"], r["aggregate"], r["align"])
        if key in seen or (r["budget"] == 1 and r["criterion"] != "entropy"):
            continue
        if r["budget"] == 1 and (r["aggregate"], r["align"]) != ("entropy", True):
            continue  # budget 1 is the model itself whatever the aggregation
        seen.add(key)
        unique.append({**r, "align": "on" if r["align"] else "off"})
    cols = [("model", "model"), ("budget", "B"), ("criterion", "criterion"), ("aggregate", "aggregate"),
            ("align", "align"), ("top1", "top-1"), ("top1_shifted", "top-1 shifted"), ("consistency", "consistency"),
            ("cost", "cost x")]
    return format_table(unique, cols, markdown=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=("zoo", "aggregators"))
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    rows = load(args.files)
    print(zoo_table(rows) if args.kind == "zoo" else aggregator_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
