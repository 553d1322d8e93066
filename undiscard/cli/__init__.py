"""The ``undiscard`` command line. Subcommands live in one module each and register here.

Every failure the user can cause (a missing path, an unknown model, a bad budget, an unwritable
``--out``, an unreadable image, an unknown device, ...) is reported as one line on stderr with exit
status 2 — never a traceback; usage errors too (``undiscard eval --help`` shows the usage). Ctrl-C
prints one line and exits with 130, leaving no half-written result file and no mixed set of old and new
ones; no command writes through a link or over a file it did not create (:mod:`undiscard._atomic`).
Anything unexpected (a bug, or a model whose own forward fails)
is one line with exit status 1; ``UNDISCARD_DEBUG=1`` shows its traceback. Warnings are one line each.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Callable, NoReturn, Sequence

import torch

from ..errors import UndiscardError
from . import calibrate, demo, eval, fit_tta, models, predict, train_aggregator

__all__ = ["main", "build_parser"]

SUBCOMMANDS = [models, demo, eval, predict, train_aggregator, fit_tta, calibrate]
DEBUG_ENV = "UNDISCARD_DEBUG"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit status 2), pointing at ``--help`` for the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="undiscard",
        description="Recover the activations that subsampling layers discard, at test time.")
    from .._version import __version__

    parser.add_argument("--version", action="version", version=f"undiscard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        p = module.add_parser(sub)
        p.set_defaults(handler=module.run)
    return parser


def _one_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (at most 300 characters)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr: ``undiscard: warning: MESSAGE``."""
    print(f"undiscard: warning: {_one_line(message) if isinstance(message, Warning) else message}",
          file=file or sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable | None = getattr(args, "handler", None)
    if handler is None:
        names = ", ".join(m.__name__.rsplit(".", 1)[-1].replace("_", "-") for m in SUBCOMMANDS)
        print(f"undiscard: error: give a command: {names} (see undiscard --help)", file=sys.stderr)
        return 2
    prefix = f"undiscard {args.command}"
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(handler(args) or 0)
    except (UndiscardError, FileNotFoundError, NotADirectoryError, ValueError, ImportError) as err:
        print(f"{prefix}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `undiscard ... | head`: the reader left; say nothing more
        try:
            fd = sys.stdout.fileno()
            os.dup2(os.open(os.devnull, os.O_WRONLY), fd)  # so the exit's flush of stdout fails no more
        except (OSError, ValueError):
            pass
        return 141
    except (MemoryError, torch.OutOfMemoryError) as err:
        print(f"{prefix}: error: out of memory ({_one_line(err)}): try a smaller --batch-size or --limit",
              file=sys.stderr)
        return 1
    except OSError as err:
        where = f" {err.filename}" if getattr(err, "filename", None) else ""
        print(f"{prefix}: error:{where} {err.strerror or _one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"{prefix}: error: {type(err).__name__}: {_one_line(err)} (unexpected; {DEBUG_ENV}=1 shows the "
              "traceback)", file=sys.stderr)
        return 1
