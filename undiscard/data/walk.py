"""Walking a user's folder: every entry is either a file to read or a skipped entry named with its reason.

The one walker of classification folders (``DIR/CLASS/...``, :func:`undiscard.data.folder.scan_folder`)
and segmentation folders (``DIR/images``, ``DIR/masks``, :mod:`undiscard.data.seg_folder`), so nothing a
folder holds is dropped silently:

- regular files are returned, also when reached through a symbolic link;
- folders are entered, symbolic links to folders too, but each real folder once: a link to a folder
  already entered (a loop back to a parent, or a second link to one folder) is skipped and named, so a
  loop cannot make the walk endless and no image is read twice;
- hidden entries (names starting with ``.``: ``.DS_Store``, ``.ipynb_checkpoints``), broken links, link
  loops, FIFOs, sockets, devices and folders that cannot be listed are skipped and named with the reason
  (a FIFO is never opened: reading it would block).

The order is the sorted order of the paths, as ``sorted(Path.rglob("*"))`` gives it.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .._atomic import file_kind

__all__ = ["Skipped", "FolderWalk", "describe_skipped"]


@dataclass(frozen=True)
class Skipped:
    """An entry of a folder that is not read: its path and why."""

    path: str
    reason: str


def describe_skipped(skipped: list[Skipped], limit: int = 3) -> str:
    """``3 entries (a: hidden; b: a FIFO; ...)``: a count and the first few, for a one-line message."""
    shown = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:limit])
    more = f"; and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"{len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} ({shown}{more})"


@dataclass
class FolderWalk:
    """One walk over a folder tree: :meth:`entries` lists one level, :meth:`files` a whole subtree; what
    is not read is appended to :attr:`skipped`. The folders entered are remembered across calls, so a link
    from one class folder into another is skipped rather than read twice."""

    skipped: list[Skipped] = field(default_factory=list)
    _seen: set[tuple[int, int]] = field(default_factory=set)

    def _stat(self, path: Path) -> os.stat_result | None:
        """``os.stat`` through links, or None with the entry recorded as skipped."""
        try:
            return os.stat(path)
        except FileNotFoundError:
            self.skipped.append(Skipped(str(path), "a broken symbolic link (its target does not exist)"
                                        if os.path.islink(path) else "vanished while the folder was read"))
        except OSError as err:
            reason = ("a symbolic link loop" if err.errno == errno.ELOOP
                      else f"cannot be read ({err.strerror or err})")
            self.skipped.append(Skipped(str(path), reason))
        return None

    def enter(self, folder: Path) -> bool:
        """Whether ``folder`` (a directory) is entered: False, and recorded, when it was entered before."""
        st = self._stat(folder)
        if st is None:
            return False
        key = (st.st_dev, st.st_ino)
        if key in self._seen:
            self.skipped.append(Skipped(str(folder), "a link to a folder already read (a loop, or a second link "
                                                     "to one folder)"))
            return False
        self._seen.add(key)
        return True

    def entries(self, folder: Path) -> tuple[list[Path], list[Path]]:
        """The sub-folders and regular files directly in ``folder`` (sorted by name); the rest is skipped.
        Sub-folders are not entered here (see :meth:`enter`)."""
        try:
            names = sorted(os.listdir(folder))
        except OSError as err:
            self.skipped.append(Skipped(str(folder), f"cannot be listed ({err.strerror or err})"))
            return [], []
        dirs, files = [], []
        for name in names:
            path = folder / name
            if name.startswith("."):
                self.skipped.append(Skipped(str(path), "hidden (its name starts with '.')"))
                continue
            st = self._stat(path)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                dirs.append(path)
            elif stat.S_ISREG(st.st_mode):
                files.append(path)
            else:
                self.skipped.append(Skipped(str(path), f"{file_kind(st.st_mode)}, not a file"))
        return dirs, files

    def files(self, folder: Path) -> list[Path]:
        """Every regular file under ``folder`` (entered if not entered yet), in sorted path order."""
        if not self.enter(folder):
            return []
        out: list[Path] = []
        stack = [folder]
        while stack:
            dirs, files = self.entries(stack.pop())
            out += files
            stack += [d for d in dirs if self.enter(d)]
        return sorted(out)
