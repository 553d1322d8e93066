"""The image-space TTA options (``--tta``, ``--tta-aggregate``, ``--tta-budget``, ``--tta-file``,
``--fit-data``) and the :class:`~undiscard.tta.TTA` they ask for; shared by the subcommands that evaluate."""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from ..data.folder import normalize_batch
from ..tta import FITTED, TTA, TTA_AGGREGATES
from .common import CLIError, load_labelled

__all__ = ["add_tta_args", "build_tta"]


def add_tta_args(p: argparse.ArgumentParser) -> None:
    """The image-space TTA options of ``eval``."""
    g = p.add_argument_group("image-space test-time augmentation")
    g.add_argument("--tta", default=None, metavar="POLICY",
                   help="flip, standard, expanded, or comma-separated views (e.g. identity,hflip,shift:2,0)")
    g.add_argument("--tta-aggregate", default="mean", help=f"one of {', '.join(TTA_AGGREGATES)} (default: mean)")
    g.add_argument("--tta-budget", type=int, default=None, help="views per image (default: all of the policy's)")
    g.add_argument("--tta-file", default=None, help="a fitted aggregator from `undiscard fit-tta`")
    g.add_argument("--fit-data", default=None,
                   help="labelled images to fit gps/classtta/augtta on first (an idx directory or image folder)")


def build_tta(args: argparse.Namespace, loaded, model: torch.nn.Module, quiet: bool) -> TTA:
    """The TTA that ``--tta ...`` asks for around ``model``, fitted or loaded when it must be."""
    if args.tta_budget is not None and args.tta_budget <= 0:
        raise CLIError(f"--tta-budget must be positive, got {args.tta_budget}")
    if args.tta_file is not None:
        if args.tta_budget is not None or args.fit_data is not None:
            raise CLIError("--tta-file holds a fitted aggregator: --tta-budget and --fit-data do not apply")
        return TTA(model, args.tta, Path(args.tta_file))
    if args.tta_aggregate not in TTA_AGGREGATES:
        raise CLIError(f"unknown --tta-aggregate {args.tta_aggregate!r}: expected one of {', '.join(TTA_AGGREGATES)}")
    tta = TTA(model, args.tta, args.tta_aggregate, budget=args.tta_budget)
    if args.tta_aggregate in FITTED:
        if args.fit_data is None:
            raise CLIError(f"--tta-aggregate {args.tta_aggregate} is fitted: pass --fit-data DIR (labelled, not the "
                           "test set) or --tta-file FILE from `undiscard fit-tta`")
        fit_args = copy.copy(args)
        fit_args.data, fit_args.limit = args.fit_data, getattr(args, "fit_limit", None)
        x01, y, _ = load_labelled(fit_args, loaded, quiet)
        pre = loaded.preprocess
        device = next(iter(model.parameters()), torch.zeros(())).device
        tta.fit(normalize_batch(x01, pre.mean, pre.std).to(device), y.to(device))
    return tta
