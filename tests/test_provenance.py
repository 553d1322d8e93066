"""Every JSON result says where it came from: the commit, the date and the package version.

``undiscard.evaluation.report.write_json`` (eval, demo, the fitting commands, ``seg_measure.py``) stamps them;
the scripts and benchmarks that write JSON themselves pass their payload through ``stamp``; the committed
results were stamped once from their git history by ``scripts/stamp_results.py``.
"""
from __future__ import annotations

import ast
import datetime
import importlib.metadata
import json
import subprocess
from pathlib import Path

import pytest

from undiscard.evaluation import report

ROOT = Path(__file__).resolve().parents[1]
# A JSON line a benchmark's worker process prints to its parent (never a result file); the stamping script,
# whose stamps come from git history.
NOT_RESULTS = {("benchmarks/bench_memory.py", "worker"), ("scripts/stamp_results.py", "main")}


def _git_head() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=7", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def test_write_json_stamps_commit_date_and_version(tmp_path):
    path = report.write_json(tmp_path / "r.json", {"rows": [1, 2]})
    data = json.loads(path.read_text())
    assert list(data)[:3] == ["commit", "date", "version"] and data["rows"] == [1, 2]
    assert data["date"] == datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    assert data["version"] == importlib.metadata.version("undiscard")
    head = _git_head()
    if head is None:
        assert data["commit"] is None
    else:
        assert data["commit"] in (head, head + "-dirty")


def test_stamp_keeps_the_payloads_own_values():
    assert report.stamp({"date": "2026-01-01", "a": 1}) == {**report.provenance(), "date": "2026-01-01", "a": 1}


def test_no_git_means_no_commit(monkeypatch):
    def fail(*args, **kwargs):
        raise FileNotFoundError("git")

    report._commit.cache_clear()
    monkeypatch.setattr(report.subprocess, "run", fail)
    try:
        assert report.provenance()["commit"] is None
    finally:
        report._commit.cache_clear()


def _unstamped_json_writes(path: Path) -> list[str]:
    """The functions of ``path`` (``<module>`` for top-level code) holding a ``json.dump``/``json.dumps`` call
    whose payload is not ``stamp(...)``."""
    found = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else where
            if isinstance(child, ast.Call) and ast.unparse(child.func) in ("json.dump", "json.dumps") and child.args:
                first = child.args[0]
                if not (isinstance(first, ast.Call) and ast.unparse(first.func).endswith("stamp")):
                    found.append(where)
            visit(child, inner)

    visit(ast.parse(path.read_text()), "<module>")
    return found


@pytest.mark.parametrize("folder", ["scripts", "benchmarks"])
def test_scripts_stamp_every_json_they_write(folder):
    rel = lambda p: str(p.relative_to(ROOT))  # noqa: E731
    bad = [f"{rel(p)}:{fn}" for p in sorted((ROOT / folder).glob("*.py")) for fn in _unstamped_json_writes(p)
           if (rel(p), fn) not in NOT_RESULTS]
    assert bad == []


def test_the_committed_results_are_stamped():
    """Every JSON under results/ and benchmarks/results/ carries commit, date and version (state orders:
    in their ``meta``, since an order file's own ``version`` is its format's)."""
    missing = []
    for path in sorted([*(ROOT / "results").rglob("*.json"), *(ROOT / "benchmarks" / "results").glob("*.json")]):
        data = json.loads(path.read_text())
        where = data.get("meta", {}) if data.get("format") == "undiscard-state-order" else data
        keys = ("commit", "date", "package_version") if where is not data else ("commit", "date", "version")
        if not isinstance(where, dict) or any(where.get(k) in (None, "") for k in keys):
            missing.append(str(path.relative_to(ROOT)))
    assert missing == []
