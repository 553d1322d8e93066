"""Markdown tables of ``scripts/aps_variants.py`` results: one table per model, every variant, with the change
against the plain model beside each number, and the command, date and commit of the run.

    python scripts/aps_report.py results/aps/zoo.json results/aps/lite.json > results/aps/tables.md
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(v: float | None, ref: float | None = None) -> str:
    if v is None:
        return "–"
    if ref is None:
        return f"{v:.2f}"
    return f"{v:.2f} ({v - ref:+.2f})"


def table(rows: list[dict]) -> str:
    plain = next((r for r in rows if r["kind"] == "plain"), None)
    ref = plain or {}
    lines = ["| variant | states | cost | top-1 | top-1 shifted | consistency | APS moved |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['states']} | {r['cost']:.3f} | {fmt(r['top1'], ref.get('top1'))} | "
                     f"{fmt(r['top1_shifted'], ref.get('top1_shifted'))} | "
                     f"{fmt(r['consistency'], ref.get('consistency'))} | {r['moved']:.0f}% |")
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    for path in paths:
        data = json.loads(Path(path).read_text())
        print(f"## {path}\n\n`{data['command']}` — {data['date']}, commit {data['commit']}, torch {data['torch']}, "
              f"{data['threads']} thread(s)\n")
        models = list(dict.fromkeys(r["model"] for r in data["rows"]))
        for m in models:
            rows = [r for r in data["rows"] if r["model"] == m]
            first = rows[0]
            what = (f"{first['pairs']} pairs" + (f", {first['labelled']} labelled" if first["labelled"] else ""))
            print(f"### {m} ({what})\n\n{table(rows)}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
