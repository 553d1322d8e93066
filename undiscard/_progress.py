"""Progress bars for long work: a tqdm bar on stderr, or a silent stand-in when tqdm is missing or off."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Iterator

__all__ = ["progress_bar"]


class _Silent:
    def update(self, n: int = 1) -> None: ...
    def set_description(self, d: str) -> None: ...


@contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True) -> Iterator[Any]:
    """A tqdm bar on stderr counting images (``bar.update(n)``), closed on exit; a no-op object when
    ``enabled`` is False or tqdm is not installed."""
    bar = None
    if enabled:
        try:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True, leave=False)
        except ImportError:
            bar = None
    try:
        yield bar if bar is not None else _Silent()
    finally:
        if bar is not None:
            bar.close()
