"""What every subcommand shares: argparse options and their parsing (outputs, devices, budgets, models), one-line
errors (:class:`CLIError`), JSON on stdout. Reading data is :mod:`undiscard.cli._data`; progress bars are
:mod:`undiscard._progress` (re-exported here for the subcommands)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from .._progress import progress_bar
from ..errors import UndiscardError
from ..settings import DEFAULTS, Settings

if TYPE_CHECKING:
    from .._atomic import OutputSet

__all__ = ["CLASS_MAP_HELP", "CLIError", "help_text", "add_output_args", "add_fit_output_args", "add_model_args", "parse_budgets", "parse_aggregates",
           "parse_units", "aggregator_needers", "progress_bar", "emit_json", "resolve_device", "check_out_dir", "check_out_file",
           "load_cli_model", "load_labelled", "add_labelled_data_args", "set_threads", "add_wrap_args",
           "wrap_options", "segmentation_input_size", "TASKS", "default_search"]

TASKS = ("classification", "segmentation")  # what --task chooses between


class CLIError(UndiscardError):
    """Bad command-line input; reported as one line, exit status 2."""


CLASS_MAP_HELP = ("folder name -> class index: a JSON object, text with one name per line, 'imagenet' (WordNet-id "
                  "folders -> standard ImageNet indices) or 'sorted' (the sorted folder positions). Default: "
                  "ImageNet WordNet ids and class names detected for a 1000-class model (other folders refused), "
                  "the sorted folder positions otherwise")


def help_text(doc: str | None) -> str:
    """A module docstring as ``--help`` text: reST literals (double backquotes) and roles such as
    ``:func:`name``` shown as plain `name`."""
    import re

    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", doc or "")
    return text.replace("``", "`")


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a machine-readable result on stdout")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for result files (JSON, CSV, PNG); created if missing. A run's files replace the "
                        "old ones together; a link or directory where one goes is refused")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def parse_budgets(text: str) -> list[int]:
    """``--budget 1,4,8``: comma-separated positive integers (no empty items). A budget above the
    searched units' state count is refused by the wrapper, with that count in the message."""
    items = [b.strip() for b in text.split(",")]
    if not any(items):
        raise CLIError(f"budgets must be positive integers, got {text!r}")
    if not all(items):
        raise CLIError(f"--budget has an empty item in {text!r}: give comma-separated integers, e.g. 1,4,8")
    try:
        budgets = [int(b) for b in items]
    except ValueError:
        raise CLIError(f"--budget must be comma-separated integers, got {text!r}") from None
    if any(b <= 0 for b in budgets):
        raise CLIError(f"budgets must be positive integers, got {text!r}")
    return budgets


def check_out_dir(path: Path | None, names: Sequence[str]) -> "OutputSet | None":
    """``--out DIR`` and the files a command writes there (``names``), checked before any work
    (:class:`undiscard._atomic.OutputSet`): an existing file in the way of DIR, an unwritable (read-only)
    parent, or a link, directory or other non-file where a result goes is one line now rather than an
    error after the run. A missing DIR (and its missing parents) is created when the results are
    written; they are written together (``with output_set as staging:``) and replace the old ones at once."""
    if path is None:
        return None
    from .._atomic import OutputSet

    return OutputSet(path, names, hint="choose another --out")


def check_out_file(path: Path, what: str = "aggregator.pt", log: bool = True) -> tuple["OutputSet", Path]:
    """``--out FILE`` of the fitting commands, checked before any work: the output set of FILE and, with
    ``log``, its log FILE with suffix ``.json`` (:class:`undiscard._atomic.OutputSet`), and that log's path.
    Refused: an existing directory (``what`` is the example file name of the message), a parent that is a
    file or unwritable, a link or non-file at FILE or its log, and a FILE ending in ``.json`` when the log
    would overwrite it."""
    from .._atomic import OutputSet

    if path.is_dir():
        raise CLIError(f"--out {path} is a directory: give a file name, e.g. {path / what}")
    log_path = path.with_suffix(".json")
    if log and log_path == path:
        raise CLIError(f"--out {path} ends in .json, the name of its log file: use e.g. {path.with_suffix('.pt')}")
    names = [path.name] + ([log_path.name] if log else [])
    return OutputSet(path.parent, names, hint="choose another --out"), log_path


def add_fit_output_args(p: argparse.ArgumentParser) -> None:
    """--json, --device, --quiet for commands that write one file (``--out FILE``) rather than a directory."""
    p.add_argument("--json", action="store_true", help="print the log as JSON on stdout")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def parse_aggregates(text: str) -> list[str]:
    """``--aggregate``: one or more comma-separated aggregation names."""
    from ..tasks.aggregation import AGGREGATES

    chosen = [a.strip() for a in text.split(",") if a.strip()]
    bad = [a for a in chosen if a not in AGGREGATES]
    if not chosen or bad:
        raise CLIError(f"--aggregate must list some of {', '.join(AGGREGATES)}, got {text!r}")
    return chosen


def aggregator_needers(aggregates: list[str], criterion: str) -> list[str]:
    """The options among ``--aggregate`` and ``--criterion`` that read an attention aggregator (each
    registered class says so: ``needs_aggregator``), as flags for a message; empty when none does."""
    from ..search.criteria import get_criterion
    from ..tasks.aggregation import get_aggregate

    flags = [f"--aggregate {a}" for a in aggregates if get_aggregate(a).needs_aggregator]
    return flags + ([f"--criterion {criterion}"] if get_criterion(criterion).needs_aggregator else [])


def parse_units(text: str | None) -> list[int | str] | None:
    """``--units``: comma-separated unit names or indices (None: the default)."""
    if text is None:
        return None
    return [int(u) if u.strip().lstrip("-").isdigit() else u.strip() for u in text.split(",") if u.strip()]


def resolve_device(name: str) -> torch.device:
    """``--device``: a torch device this torch build can actually use, checked by allocating one
    element on it; anything else (``banana``, ``cuda`` without CUDA, ``cuda:3`` on a 1-GPU machine,
    ``mps`` off Apple silicon, ``meta``) is one line."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CLIError(f"unknown device {name!r}: expected cpu, cuda, cuda:N or mps") from None
    if device.type == "meta":
        raise CLIError("device 'meta' holds no data: use cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"device {name!r} requested but CUDA is not available (torch {torch.__version__} "
                           f"{'built without CUDA' if torch.version.cuda is None else 'finds no CUDA GPU'}); "
                           "use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise CLIError(f"device {name!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"device {name!r} requested but MPS (Apple silicon GPU) is not available; use --device cpu")
    try:
        torch.zeros(1, device=device)
    except Exception as err:  # noqa: BLE001 - every backend fails in its own way (RuntimeError, AssertionError)
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        first = first.split(". ")[0][:160]
        raise CLIError(f"device {name!r} is not usable here: {first}") from None
    return device


def emit_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


def add_labelled_data_args(p: argparse.ArgumentParser, what: str = "labelled images") -> None:
    """``--data`` and ``--class-map`` of the commands that fit on labelled images (never the test set)."""
    p.add_argument("--data", required=True,
                   help=f"{what}: a Fashion-MNIST idx directory (zoo models: its held-out validation part) or an "
                        "image folder DIR/CLASS/IMAGE")
    p.add_argument("--class-map", default=None, help=CLASS_MAP_HELP)


def set_threads(threads: int | None) -> None:
    """``--threads N``: torch's CPU threads (None: torch's default); N must be positive."""
    if threads is not None:
        if threads <= 0:
            raise CLIError(f"--threads must be positive, got {threads}")
        torch.set_num_threads(threads)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model and what overrides its weights, classes and preprocessing."""
    p.add_argument("--model", required=True,
                   help="zoo:NAME, timm:NAME, torchvision:NAME, hf:ORG/NAME (or hf:/path/to/save_pretrained/dir) or "
                        "efficientnet-lite0/1/2 (see `undiscard models`)")
    p.add_argument("--weights", default=None, help="a state_dict or checkpoint file to load into the model")
    p.add_argument("--num-classes", type=int, default=None, help="number of classes of the model's head")
    p.add_argument("--input-size", type=int, default=None, help="override the model's input size")
    p.add_argument("--mean", default=None, help="override the normalisation mean, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", default=None, help="override the normalisation std")
    p.add_argument("--crop-pct", type=float, default=None, help="override the centre-crop fraction")


def _floats(text: str, flag: str, positive: bool = False) -> tuple[float, ...]:
    """``--mean``/``--std``: comma-separated finite numbers (``positive``: each above 0, as a std must be)."""
    import math

    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CLIError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise CLIError(f"{flag} is empty")
    if not all(math.isfinite(v) for v in values):
        raise CLIError(f"{flag} must be finite numbers, got {text!r}: every normalised pixel would be NaN or inf")
    if positive and not all(v > 0 for v in values):
        raise CLIError(f"{flag} must be positive, got {text!r}: normalising divides by it")
    return values


def load_cli_model(args: argparse.Namespace):
    """The model named by ``--model`` with ``--weights``/``--num-classes`` and the preprocessing overrides
    (:func:`undiscard.models.loading.override_preprocess`, checked before any image is read)."""
    from ..models.loading import load_model, override_preprocess

    if args.num_classes is not None and args.num_classes <= 0:
        raise CLIError(f"--num-classes must be positive, got {args.num_classes}")
    loaded = load_model(args.model, weights=args.weights, num_classes=args.num_classes)
    return override_preprocess(loaded, input_size=args.input_size,
                               mean=None if args.mean is None else _floats(args.mean, "--mean"),
                               std=None if args.std is None else _floats(args.std, "--std", positive=True),
                               crop_pct=args.crop_pct)


def segmentation_input_size(loaded, args: argparse.Namespace) -> int | None:
    """The side a segmenter's images are resized to: a segmentation model's own (the zoo's canvases) or
    ``--input-size``; None keeps each image's own size (a model loaded as a classifier, e.g.
    ``torchvision:fcn_resnet50``, run with ``--task segmentation``)."""
    if loaded.task == "segmentation" or getattr(args, "input_size", None) is not None:
        return loaded.preprocess.input_size
    return None


def load_labelled(args: argparse.Namespace, loaded, quiet: bool):
    """``--data``/``--limit``/``--seed``/``--class-map`` of the fitting commands:
    :func:`undiscard.cli._data.load_labelled`."""
    from ._data import load_labelled as load

    return load(args.data, loaded, args.limit, args.seed, getattr(args, "class_map", None), quiet)


def _wrap_flags() -> dict[str, dict[str, Any]]:
    """Settings field -> the argparse keywords of its option besides ``default`` and ``help``."""
    from ..layers.extension import EXTEND_MODES
    from ..search.criteria import CRITERIA
    from ..tasks.aggregation import AGGREGATES

    return {"criterion": {"metavar": "NAME", "choices_text": f"one of {', '.join(CRITERIA)}"},
            "aggregate": {"metavar": "NAME", "choices_text": f"one of {', '.join(AGGREGATES)}"},
            "align": {"action": argparse.BooleanOptionalAction},
            "units": {"type": parse_units},
            "extend": {"choices": EXTEND_MODES},
            "order": {"metavar": "FILE"},
            "aggregator": {"metavar": "FILE"},
            "strict": {"action": argparse.BooleanOptionalAction},
            "chunk_size": {"type": int},
            "seed": {"type": int}}


def add_wrap_args(p: argparse.ArgumentParser, *names: str, notes: dict[str, str] | None = None,
                  derived: Sequence[str] = ()) -> None:
    """Options for the ``wrap()`` settings ``names`` (fields of :class:`~undiscard.settings.Settings`, as
    ``--chunk-size`` for ``chunk_size``), each with the default and the help of its field; ``notes`` adds a
    command's own words to an option's help. An option in ``derived`` defaults to None: the command works
    its value out (``eval``: ``--criterion`` is calibrated with ``--order``), and its note says how.
    :meth:`Settings.from_args <undiscard.settings.Settings.from_args>` reads them back."""
    flags, notes = _wrap_flags(), notes or {}
    for name in names:
        spec = dict(flags[name])
        lead = spec.pop("choices_text", None)
        text = Settings.help(name)
        if name in notes:
            text = text[:-1] + f", or {notes[name]})" if name in derived else f"{text}; {notes[name]}"
        p.add_argument("--" + name.replace("_", "-"), default=None if name in derived else getattr(DEFAULTS, name),
                       help=f"{lead}: {text}" if lead else text, **spec)
    p.set_defaults(settings_options=(*(p.get_default("settings_options") or ()), *names))


def wrap_options(args: argparse.Namespace) -> dict[str, str]:
    """``--order FILE`` and ``--extend MODE`` as ``wrap()`` keyword arguments; those not given (or that a
    command lacks, as ``demo`` lacks ``--order``) are left to wrap's defaults."""
    return {k: getattr(args, k) for k in ("order", "extend") if getattr(args, k, None) is not None}


def default_search(criterion: str | None, order: str | None) -> dict[str, object]:
    """``criterion=``/``order=`` for a model: ``criterion`` as given (``order`` with it when calibrated); when not
    given, the model's shipped state order (``criterion="calibrated"``) where it has one — the measured best
    at equal cost on every model that ships one — else :data:`~undiscard.settings.DEFAULTS`' criterion."""
    from ..settings import DEFAULTS

    if criterion is None:
        criterion = "calibrated" if order is not None else DEFAULTS.criterion
    return {"criterion": criterion, **({"order": order} if criterion == "calibrated" and order is not None else {})}


def shipped_order(name: str, criterion: str) -> dict[str, str]:
    """``order=`` of zoo model ``name``'s shipped calibrated order when ``criterion`` is calibrated ({}
    otherwise); a zoo model without one is a :class:`CLIError`."""
    from ..search.orders import zoo_order_path

    if criterion != "calibrated":
        return {}
    path = zoo_order_path(name)
    if not path.is_file():
        raise CLIError(f"--criterion calibrated: zoo:{name} has no shipped state order (scripts/calibrate_zoo.py)")
    return {"order": str(path)}
