"""The ``undiscard`` command line. Subcommands live in one module each and register here.

Every failure the user can cause (a missing path, an unknown model, a bad budget, ...) is reported as
one line on stderr with exit status 2 — never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from ..errors import UndiscardError
from . import demo, eval, fit_tta, models, predict, train_aggregator

__all__ = ["main", "build_parser"]

SUBCOMMANDS = [models, demo, eval, predict, train_aggregator, fit_tta]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="undiscard",
        description="Recover the activations that subsampling layers discard, at test time.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        p = module.add_parser(sub)
        p.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except (UndiscardError, FileNotFoundError, NotADirectoryError, ValueError, ImportError) as err:
        print(f"undiscard {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("undiscard: interrupted", file=sys.stderr)
        return 130
