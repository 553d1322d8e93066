"""Writing files into a user's folders without ever clobbering what undiscard did not create.

Every file the package writes goes through this module:

- :func:`atomic_write` (one file): the bytes go to a new temporary file beside the target, created with
  ``O_CREAT | O_EXCL`` (and ``O_NOFOLLOW``), so an existing file or a planted symbolic link is never
  opened; its name is random and hidden (``.NAME.undiscard-PID-RANDOM.tmpSUFFIX``), so two writers of one
  target never collide. Only when complete is it renamed over the target (``os.replace``, which replaces
  a directory entry and never writes through a link); on any failure, Ctrl-C included, it is removed
  and the target is untouched.
- :class:`OutputSet` (the files of one run, e.g. ``results.json``, ``results.csv`` and the plots of
  ``undiscard eval --out DIR``): every file is written into a fresh private staging folder inside the
  target folder (``.undiscard-run-PID-RANDOM``); once all are complete a journal listing them is written
  there and each is renamed into place. A run killed before the journal changes nothing; a run killed
  while renaming (between two renames) leaves the staging folder with its journal, and the next run
  that writes into that folder finishes the renames before anything else, so the set is never left
  mixed between two runs once anything writes there again.

What a target may be (checked by :func:`check_target` before any work, and again just before the
rename): absent, or a regular file that ``replace`` accepts (by default any regular file: the names a
command writes in its ``--out`` directory, or the file ``--out FILE`` names). A symbolic link, a
directory, a FIFO, a device or a socket is never replaced; an input of the run never either. Each
refusal is one :class:`ResultWriteError` line naming the path and what to do.

Stale temporary files and staging folders of earlier runs are removed only when they are provably ours:
the name has this module's pattern (or the pattern of earlier undiscard versions,
``.NAME.PID.RANDOM.tmpSUFFIX``), the entry is a regular file (a real folder for staging) owned by this
user, and the process whose id the name holds is no longer running (or, for a staging folder, is this
process and no longer writing it: a commit that failed half-way). Recovery runs whenever a run checks
or writes an output folder.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import stat
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Sequence

from .errors import UndiscardError

__all__ = ["file_kind", "ResultWriteError", "check_writable_dir", "check_target", "atomic_write", "atomic_path", "OutputSet",
           "recover_directory", "STAGING_PREFIX"]

STAGING_PREFIX = ".undiscard-run-"
_JOURNAL = ".journal.json"  # inside a staging folder: the names to rename, written once all are complete
_TMP = re.compile(r"^\..+\.undiscard-(\d+)-[0-9a-f]{8}\.tmp(\.[^.]*)?$")
_LEGACY_TMP = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp(\.[^.]*)?$")  # earlier versions' atomic_path
_STAGING = re.compile(r"^" + re.escape(STAGING_PREFIX) + r"(\d+)-[0-9a-f]{8}$")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_BINARY = getattr(os, "O_BINARY", 0)

Replace = Callable[[Path], bool]  # may an existing regular file at this target be replaced?
_ACTIVE: set[str] = set()  # staging folders this process is writing now (never recovered while in here)
_ACTIVE_LOCK = threading.Lock()


class ResultWriteError(UndiscardError, OSError):
    """A result file could not be written, or its target may not be replaced (one line naming the file)."""


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


def file_kind(mode: int) -> str:
    """What a non-regular file is, for messages, from its ``st_mode``: ``a directory``, ``a FIFO (named
    pipe)``, ``a socket``, ``a device`` (or ``not a regular file``)."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_target(path: str | Path, replace: Replace | None = None, inputs: Sequence[str | Path] = (),
                 hint: str = "choose another output") -> Path:
    """``path`` if undiscard may write a file there: absent, or a regular file (not a link) that
    ``replace`` accepts (None: any) and that is none of ``inputs``. Else one :class:`ResultWriteError`."""
    path = Path(path)
    for source in inputs:
        if _same_file(path, Path(source)) or os.path.abspath(path) == os.path.abspath(source):
            raise ResultWriteError(f"{path} is one of the input files: undiscard never overwrites its input ({hint})")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    except OSError as err:
        raise ResultWriteError(f"cannot write {path}: {err.strerror or err}") from None
    if stat.S_ISLNK(st.st_mode):
        raise ResultWriteError(f"{path} is a symbolic link: undiscard never writes through or replaces a link "
                               f"(remove it, or {hint})")
    if not stat.S_ISREG(st.st_mode):
        raise ResultWriteError(f"{path} is {file_kind(st.st_mode)}, not a file: undiscard does not replace it "
                               f"(remove or rename it, or {hint})")
    if replace is not None and not replace(path):
        raise ResultWriteError(f"{path} exists and was not written by undiscard: not replaced (remove it, or {hint})")
    return path


def _alive(pid: int) -> bool:
    """Whether process ``pid`` may still be running (True when that cannot be told)."""
    if os.name == "nt" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process, or no permission to ask: running
        return True
    return True


def _stale_staging(pid: int, path: str) -> bool:
    """Whether the staging folder ``path`` of process ``pid`` is no longer being written."""
    if pid == os.getpid():
        with _ACTIVE_LOCK:
            return os.path.abspath(path) not in _ACTIVE
    return not _alive(pid)


def _ours(entry: os.DirEntry, want_dir: bool) -> bool:
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    right_kind = stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)
    return right_kind and (not hasattr(os, "getuid") or st.st_uid == os.getuid())


def recover_directory(directory: str | Path) -> list[str]:
    """Tidy what killed undiscard runs left in ``directory`` (provably ours only, see the module docstring):
    finish the renames of a staging folder with a journal, remove one without, remove stale temporary
    files. Returns one line per thing done (also given as a ``UserWarning`` when a set was finished)."""
    directory = Path(directory)
    done: list[str] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return done
    for entry in entries:
        m = _STAGING.match(entry.name)
        if m and _stale_staging(int(m.group(1)), entry.path) and _ours(entry, want_dir=True):
            done += _recover_staging(directory, Path(entry.path))
            continue
        m = _TMP.match(entry.name) or _LEGACY_TMP.match(entry.name)
        if m and not _alive(int(m.group(1))) and _ours(entry, want_dir=False):
            try:
                os.unlink(entry.path)
                done.append(f"removed {entry.path}, a temporary file of an interrupted run")
            except OSError:
                pass
    return done


def _recover_staging(directory: Path, staging: Path) -> list[str]:
    journal = staging / _JOURNAL
    names: list[str] = []
    if journal.is_file() and not journal.is_symlink():
        try:
            names = [str(n) for n in json.loads(journal.read_text())["files"]]
        except (OSError, ValueError, KeyError, TypeError):
            names = []
    finished = []
    for name in names:
        src = staging / name
        if "/" in name or name.startswith(".") or not src.is_file() or src.is_symlink():
            continue
        try:
            check_target(directory / name)
            os.replace(src, directory / name)
            finished.append(name)
        except (OSError, UndiscardError):
            pass
    left = _remove_staging(staging)
    lines = []
    if finished:
        lines.append(f"finished writing {', '.join(finished)} in {directory}: the run that wrote them was killed "
                     "while moving them into place")
        warnings.warn(lines[-1], UserWarning, stacklevel=3)
    if not left:
        lines.append(f"removed {staging}, the staging folder of an interrupted run")
    return lines


def _remove_staging(staging: Path) -> bool:
    """Remove the regular files and then the staging folder itself; True if something else was left."""
    left = False
    try:
        for entry in os.scandir(staging):
            if _ours(entry, want_dir=False):
                try:
                    os.unlink(entry.path)
                except OSError:
                    left = True
            else:
                left = True
        os.rmdir(staging)
    except OSError:
        return True
    return left


def _temporary(path: Path) -> tuple[Path, int]:
    """A new hidden file beside ``path`` (exclusive create, never through a link) and its descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _BINARY | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = path.with_name(f".{path.name}.undiscard-{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:  # 2^32 names: another writer's, try again
            continue


def _prepare_directory(directory: Path) -> None:
    """Create ``directory`` (checked by :func:`check_writable_dir` first) and tidy what killed runs left."""
    check_writable_dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    recover_directory(directory)


@contextmanager
def _atomic(path: Path, replace: Replace | None) -> Iterator[tuple[Path, IO[bytes]]]:
    """The temporary file of :func:`atomic_write` (its path and an open binary file), renamed over ``path``
    when the block ends normally and removed when it raises."""
    tmp: Path | None = None
    try:
        check_writable_dir(path.parent)
        check_target(path, replace)
        _prepare_directory(path.parent)
        tmp, fd = _temporary(path)
        with os.fdopen(fd, "wb") as f:
            yield tmp, f
        fd = os.open(tmp, os.O_RDONLY | _BINARY | _NOFOLLOW)  # durable before it replaces anything
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        check_target(path, replace)  # again: something may have appeared there while we wrote
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        if isinstance(err, ResultWriteError):
            raise
        raise ResultWriteError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


@contextmanager
def atomic_write(path: str | Path, replace: Replace | None = None) -> Iterator[IO[bytes]]:
    """A binary file to write ``path``'s new content to (see the module docstring); renamed over ``path``
    when the block ends normally, removed when it raises (KeyboardInterrupt included), ``path``
    untouched. Missing parent directories are created. A target that may not be replaced
    (:func:`check_target`: a link, a directory, ...), or an OSError (unwritable directory, full disk), is
    one :class:`ResultWriteError` naming ``path``."""
    with _atomic(Path(path), replace) as (_, f):
        yield f


@contextmanager
def atomic_path(path: str | Path, replace: Replace | None = None) -> Iterator[Path]:
    """As :func:`atomic_write`, for writers that take a file name rather than a file object: the path of
    the temporary file, created empty and exclusively (so the name is ours), for the writer to fill."""
    with _atomic(Path(path), replace) as (tmp, f):
        f.close()
        yield tmp


class OutputSet:
    """The files one run writes into ``directory``, replaced all together or not at all (see the module
    docstring). Constructing it checks every target of ``names`` (:func:`check_target`) and the directory,
    before any work; ``with output_set as staging:`` gives the private staging folder to write the files
    into (by their plain names, with any writer), and commits them when the block ends normally. Only
    the files written are committed; names not in ``names`` are an error. ``inputs``: files of the run that
    must never be written (e.g. ``predict``'s images); ``replace``: which existing regular files may be
    replaced (None: any); ``hint``: what to do instead, for the messages."""

    def __init__(self, directory: str | Path, names: Iterable[str], *, replace: Replace | None = None,
                 inputs: Sequence[str | Path] = (), hint: str = "choose another output") -> None:
        self.directory = Path(directory)
        self.names = list(dict.fromkeys(names))
        self.replace, self.inputs, self.hint = replace, list(inputs), hint
        self._staging: Path | None = None
        bad = [n for n in self.names if not n or "/" in n or os.sep in n or n.startswith(".")]
        if bad:
            raise ResultWriteError(f"cannot write {bad[0]!r} as a result file name")
        check_writable_dir(self.directory)
        if self.directory.is_dir():
            recover_directory(self.directory)  # an earlier run's set finished (or removed) before checking
        self.check()

    def check(self) -> None:
        """Every target may be written (one :class:`ResultWriteError` for the first that may not)."""
        for name in self.names:
            check_target(self.directory / name, self.replace, self.inputs, self.hint)

    def __enter__(self) -> Path:
        _prepare_directory(self.directory)
        self.check()
        while True:
            staging = self.directory / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
            try:
                os.mkdir(staging, 0o700)
                with _ACTIVE_LOCK:
                    _ACTIVE.add(os.path.abspath(staging))
                break
            except FileExistsError:
                continue
            except OSError as err:
                raise ResultWriteError(f"cannot write to {self.directory}: {err.strerror or err}") from None
        self._staging = staging
        return staging

    def __exit__(self, kind, value, traceback) -> None:
        staging, self._staging = self._staging, None
        if staging is None:
            return
        try:
            if kind is not None:
                _remove_staging(staging)
                return
            try:
                self._commit(staging)
            except BaseException:
                if not (staging / _JOURNAL).exists():
                    _remove_staging(staging)
                raise
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE.discard(os.path.abspath(staging))

    def _commit(self, staging: Path) -> None:
        written = sorted(e.name for e in os.scandir(staging))
        unknown = [n for n in written if n not in self.names]
        if unknown:
            raise ResultWriteError(f"internal error: {unknown[0]} was written but is not one of this run's files")
        self.check()  # again, just before replacing anything
        with atomic_write(staging / _JOURNAL) as f:  # from here on, the set is complete: finish it
            f.write(json.dumps({"files": written}).encode())
        pending = list(written)
        try:
            while pending:
                os.replace(staging / pending[0], self.directory / pending[0])
                pending.pop(0)
        except BaseException:  # Ctrl-C, or a failure: try to finish (each rename is instant), then report
            for name in list(pending):
                try:
                    os.replace(staging / name, self.directory / name)
                    pending.remove(name)
                except BaseException:  # noqa: BLE001 - what is left stays for the next run to finish
                    break
            if not pending:
                _remove_staging(staging)
            else:
                raise ResultWriteError(f"cannot move {', '.join(pending)} into {self.directory}: the files are kept "
                                       f"in {staging}, and the next run writing there finishes the move") from None
            raise
        _remove_staging(staging)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`undiscard._atomic.atomic_write`)."""
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))
    return Path(path)
