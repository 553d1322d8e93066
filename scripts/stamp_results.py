"""Stamp committed result JSONs with where they came from: ``commit``, ``date`` and ``version``.

For each JSON file given (default: every ``*.json`` under ``results/`` and ``benchmarks/results/``) that
lacks them, the values are read from git: the last commit that changed the file (following renames), that
commit's date, and the package version in that commit's ``pyproject.toml``. A file whose top level is a
list becomes ``{"commit", "date", "version", "rows": [...]}``. A state-order file (``"format":
"undiscard-state-order"``, whose own ``version`` is its format's) gets ``commit``, ``date`` and
``package_version`` in its ``meta``. Files that already carry them are left as they are, so running it
again changes nothing. New results are stamped when written (``undiscard.evaluation.report.stamp``).

    python scripts/stamp_results.py            # every committed result JSON
    python scripts/stamp_results.py --check    # list the files that lack a stamp; exit 1 if any
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER_FORMAT = "undiscard-state-order"


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def history_stamp(path: Path) -> dict[str, str]:
    """The commit that last changed the content of ``path`` (renames followed, not counted), its date and the
    package version there."""
    line = _git("log", "--follow", "--diff-filter=AM", "-1", "--format=%h %ad", "--date=short", "--",
                str(path.relative_to(ROOT)))
    if not line:
        raise SystemExit(f"{path}: not in git history (commit it first)")
    commit, date = line.split()
    version = re.search(r'^version\s*=\s*"([^"]+)"', _git("show", f"{commit}:pyproject.toml"), re.M)
    return {"commit": commit, "date": date, "version": version.group(1) if version else None}


def _indent(text: str) -> int:
    second = text.splitlines()[1] if len(text.splitlines()) > 1 else ""
    return max(1, len(second) - len(second.lstrip(" ")))


def stamped(data: object, stamp: dict[str, str]) -> object | None:
    """``data`` with ``stamp`` added where it belongs, or None if it is already stamped."""
    if isinstance(data, list):
        return {**stamp, "rows": data}
    if not isinstance(data, dict):
        raise SystemExit(f"unexpected JSON top level {type(data).__name__}")
    if data.get("format") == ORDER_FORMAT:
        meta = dict(data.get("meta") or {})
        if meta.get("commit") and meta.get("date") and meta.get("package_version"):
            return None
        meta.update({"commit": stamp["commit"], "date": stamp["date"], "package_version": stamp["version"]})
        return {**data, "meta": meta}
    if all(data.get(k) for k in ("commit", "date", "version")):
        return None
    return {**stamp, **{k: v for k, v in data.items() if v is not None or k not in stamp}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", type=Path)
    ap.add_argument("--check", action="store_true", help="only list unstamped files")
    args = ap.parse_args(argv)
    paths = [p.resolve() for p in args.paths] or sorted(
        [*(ROOT / "results").rglob("*.json"), *(ROOT / "benchmarks" / "results").glob("*.json")])
    todo = []
    for path in paths:
        text = path.read_text()
        placeholder = {"commit": "x", "date": "x", "version": "x"}
        if stamped(json.loads(text), placeholder) is None:
            continue
        todo.append(path)
        if not args.check:
            new = stamped(json.loads(text), history_stamp(path))
            path.write_text(json.dumps(new, indent=_indent(text)) + "\n")
        print(path.relative_to(ROOT))
    return 1 if args.check and todo else 0


if __name__ == "__main__":
    sys.exit(main())
