"""What every subcommand shares: output options, progress bars, budgets parsing, error reporting."""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from ..errors import UndiscardError

__all__ = ["CLIError", "add_output_args", "parse_budgets", "progress_bar", "emit_json", "resolve_device",
           "check_out_dir", "check_out_file"]


class CLIError(UndiscardError):
    """Bad command-line input; reported as one line, exit status 2."""


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a machine-readable result on stdout")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for result files (JSON, CSV, PNG); created if missing")
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


def check_out_dir(path: Path | None) -> None:
    """``--out DIR``, checked before any work: an existing file in the way, or an unwritable (read-only)
    parent, is one line now rather than a traceback after the run. A missing DIR (and its missing
    parents) is created when the results are written."""
    if path is not None:
        from ..report import check_writable_dir

        check_writable_dir(path)


def check_out_file(path: Path) -> Path:
    """``--out FILE`` of the fitting commands, checked before any work; returns the log path (FILE with
    suffix ``.json``). Refused: an existing directory, a parent that is a file or unwritable, and a
    FILE ending in ``.json`` (the log would overwrite it)."""
    from ..report import check_writable_dir

    if path.is_dir():
        raise CLIError(f"--out {path} is a directory: give a file name, e.g. {path / 'aggregator.pt'}")
    log = path.with_suffix(".json")
    if log == path:
        raise CLIError(f"--out {path} ends in .json, the name of its log file: use e.g. {path.with_suffix('.pt')}")
    check_writable_dir(path.parent)
    return log


def add_fit_output_args(p: argparse.ArgumentParser) -> None:
    """--json, --device, --quiet for commands that write one file (``--out FILE``) rather than a directory."""
    p.add_argument("--json", action="store_true", help="print the log as JSON on stdout")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def parse_aggregates(text: str) -> list[str]:
    """``--aggregate``: one or more comma-separated aggregation names."""
    from ..aggregate import AGGREGATES

    chosen = [a.strip() for a in text.split(",") if a.strip()]
    bad = [a for a in chosen if a not in AGGREGATES]
    if not chosen or bad:
        raise CLIError(f"--aggregate must list some of {', '.join(AGGREGATES)}, got {text!r}")
    return chosen


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


@contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True) -> Iterator[Any]:
    """A tqdm bar on stderr (or a no-op object when tqdm is missing or disabled); ``bar.update(n)``."""
    bar = None
    if enabled:
        try:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True, leave=False)
        except ImportError:
            bar = None

    class _Null:
        def update(self, n: int = 1) -> None: ...
        def set_description(self, d: str) -> None: ...

    try:
        yield bar if bar is not None else _Null()
    finally:
        if bar is not None:
            bar.close()


def emit_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model and what overrides its weights, classes and preprocessing."""
    p.add_argument("--model", required=True,
                   help="zoo:NAME, timm:NAME, torchvision:NAME or efficientnet-lite0/1/2 (see `undiscard models`)")
    p.add_argument("--weights", default=None, help="a state_dict or checkpoint file to load into the model")
    p.add_argument("--num-classes", type=int, default=None, help="number of classes of the model's head")
    p.add_argument("--input-size", type=int, default=None, help="override the model's input size")
    p.add_argument("--mean", default=None, help="override the normalisation mean, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", default=None, help="override the normalisation std")
    p.add_argument("--crop-pct", type=float, default=None, help="override the centre-crop fraction")


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CLIError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise CLIError(f"{flag} is empty")
    return values


def load_cli_model(args: argparse.Namespace):
    """The model named by ``--model`` with ``--weights``/``--num-classes`` and preprocessing overrides."""
    from ..models import load_model

    if args.num_classes is not None and args.num_classes <= 0:
        raise CLIError(f"--num-classes must be positive, got {args.num_classes}")
    loaded = load_model(args.model, weights=args.weights, num_classes=args.num_classes)
    pre = loaded.preprocess
    if args.input_size is not None:
        if args.input_size <= 0:
            raise CLIError(f"--input-size must be positive, got {args.input_size}")
        pre.input_size = args.input_size
        pre.pad_to = args.input_size if pre.pad_to is not None else None
    if args.mean is not None:
        pre.mean = _floats(args.mean, "--mean")
    if args.std is not None:
        pre.std = _floats(args.std, "--std")
        if any(s == 0 for s in pre.std):
            raise CLIError("--std must not contain 0")
    if args.crop_pct is not None:
        if not 0 < args.crop_pct <= 1:
            raise CLIError(f"--crop-pct must be in (0, 1], got {args.crop_pct}")
        pre.crop_pct = args.crop_pct
    for name, values in (("--mean", pre.mean), ("--std", pre.std)):
        if len(values) not in (1, pre.in_chans):
            raise CLIError(f"{name} has {len(values)} values but the model takes {pre.in_chans} channels")
    if args.input_size is not None:
        _check_input_size(loaded, args.input_size)
    return loaded


def _check_input_size(loaded, size: int) -> None:
    """``--input-size S``: refuse a size over PIL's pixel limit, or one the model's own forward rejects
    (fixed-size transformers, inputs smaller than what the layers need), with one line, before any image
    is read — by running the model once on a zero input."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and size * size > limit:
        raise CLIError(f"--input-size {size} makes images over PIL's limit of {limit} pixels")
    x = torch.zeros(1, loaded.preprocess.in_chans, size, size)
    try:
        with torch.no_grad():
            loaded.model(x)
    except (RuntimeError, ValueError, AssertionError, IndexError) as err:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise CLIError(f"{loaded.name} does not run on {tuple(x.shape[1:])} inputs (--input-size {size}): "
                       f"{type(err).__name__}: {first[:200]}") from None


def read_folder_images(data, order: list[int], pre, quiet: bool) -> tuple[Tensor, Tensor, list[int]]:
    """Read images ``order`` (indices into ``data.paths``) of a scanned folder with the model's
    preprocessing, as [0, 1] tensors (N, C, H, W) and labels (N,); unreadable files are appended to
    ``data.skipped_unreadable``. Also returns the positions in ``order`` that were read."""
    from ..data.folder import load_image

    images, labels, kept = [], [], []
    with progress_bar(len(order), "loading", enabled=not quiet) as bar:
        for p, i in enumerate(order):
            try:
                images.append(load_image(data.paths[i], **pre.image_kwargs()))
                labels.append(data.labels[i])
                kept.append(p)
            except (OSError, ValueError):
                data.skipped_unreadable.append(str(data.paths[i]))
            bar.update(1)
    if not images:
        raise CLIError(f"none of the {len(order)} image files given could be read")
    return torch.stack(images), torch.tensor(labels), kept


def load_labelled(args: argparse.Namespace, loaded, quiet: bool) -> tuple[Tensor, Tensor, str]:
    """Labelled training images for fitting (never the test set), as [0, 1] tensors and labels.

    ``--data`` is either a directory with the Fashion-MNIST idx files (zoo models: the 5,000-image
    validation part of the train split, which the zoo never trained on) or an image folder DIR/CLASS/IMAGE.
    ``--limit N`` keeps a seeded random N of them. Returns images, labels and a description.
    """
    from ..data import has_idx_files, load_train_val, resize, to_float
    from ..data.folder import load_class_map, scan_folder

    from ..data import DEBIAN_ROOT

    root = Path(args.data)
    if not root.is_dir():
        hint = (" (Fashion-MNIST: `apt-get install dataset-fashion-mnist` installs its idx files there)"
                if root.resolve() == Path(DEBIAN_ROOT).resolve() else "")
        raise CLIError(f"--data {root} is not a directory{hint}")
    if not has_idx_files(root, "train") and not any(d.is_dir() for d in root.iterdir()):
        test_only = " (only the test split: fitting never uses it)" if has_idx_files(root, "test") else ""
        raise CLIError(f"--data {root} holds neither the Fashion-MNIST train idx files{test_only} nor class "
                       "subfolders DIR/CLASS/IMAGE")
    if has_idx_files(root, "train"):
        if not loaded.name.startswith("zoo:"):
            raise CLIError("Fashion-MNIST idx files fit the zoo models only; give an image folder DIR/CLASS/IMAGE")
        _, (val_images, val_labels) = load_train_val(root)
        x01 = resize(to_float(val_images), loaded.preprocess.input_size)
        y = torch.as_tensor(val_labels).long()
        what = f"Fashion-MNIST train split, held-out validation part ({len(y)} images) of {root}"
    else:
        class_map = load_class_map(args.class_map) if getattr(args, "class_map", None) else None
        data = scan_folder(root, class_map)
        x01, y, _ = read_folder_images(data, list(range(len(data.paths))), loaded.preprocess, quiet)
        what = f"image folder {root} ({len(y)} images)"
    if args.limit is not None and args.limit < len(y):
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed))[:args.limit].sort().values
        x01, y = x01[keep], y[keep]
        what += f", seeded subset of {len(y)}"
    return x01, y, what
