"""Every ```python block of README.md and docs/*.md runs as written.

The blocks of one file run in order in one namespace, so a block may use what an earlier block of the
same file defined; files do not share anything. They run on the bundled zoo and data with small
budgets, in a temporary working directory, on one thread, offline (``HF_HUB_OFFLINE=1``). A block that
is an illustration only is preceded by ``<!-- skip-test: REASON -->`` on the line before its fence (blank
lines between are allowed); there are few, and each says why.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\s*$")
SKIP = re.compile(r"^<!--\s*skip-test:\s*(?P<reason>\S.*?)\s*-->$")
MAX_SKIPPED = 3


def python_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """(line of the opening fence, code, skip reason or None) for every ```python block of ``path``."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            start = i
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
            assert end is not None, f"{path.name}:{start + 1}: unclosed ```python block"
            before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            skip = SKIP.match(before)
            blocks.append((start + 1, "\n".join(lines[start + 1:end]) + "\n", skip["reason"] if skip else None))
            i = end
        i += 1
    return blocks


WITH_CODE = [p for p in FILES if any(reason is None for _, _, reason in python_blocks(p))]


@pytest.mark.parametrize("path", WITH_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_block_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    ran = 0
    try:
        for line, code, skip in python_blocks(path):
            if skip is not None:
                continue
            where = f"{path.relative_to(ROOT)}:{line}"
            try:
                exec(compile(code, where, "exec"), namespace)  # noqa: S102 - the documentation's own examples
            except Exception as err:  # noqa: BLE001 - any failure of a documented example is a test failure
                pytest.fail(f"the python block at {where} fails: {type(err).__name__}: {err}")
            ran += 1
    finally:
        torch.set_num_threads(threads)
    assert ran > 0


def test_the_readme_and_docs_have_their_examples():
    """The README's quick start has its four examples, and the block parser sees every fence."""
    readme = [b for b in python_blocks(ROOT / "README.md") if b[2] is None]
    assert len(readme) >= 4
    for path in FILES:
        fences = sum(bool(FENCE.match(line)) for line in path.read_text().splitlines())
        assert fences == len(python_blocks(path)), path.name


def test_skipped_blocks_are_few_and_say_why():
    markers = [(p.name, line) for p in FILES for line in p.read_text().splitlines() if "skip-test" in line]
    skipped = [(p.name, n) for p in FILES for n, _, reason in python_blocks(p) if reason is not None]
    assert len(markers) == len(skipped) <= MAX_SKIPPED, (markers, skipped)  # every marker precedes a block
