"""What every bundled zoo shares: a table of named specs, their weights and logs, and the two errors.

The classification zoo (:mod:`undiscard.zoo`) and the segmentation zoo (:mod:`undiscard.zoo.segmentation`)
differ in their models, recipes and configs; looking a name up, building, loading the committed
weights and reading the training log are the same, and live here once.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Generic, Protocol, TypeVar

import torch.nn as nn

from ..errors import UndiscardError

__all__ = ["Catalog", "fp16_state", "run_record", "MissingWeightsError", "UnknownModelError", "PREFIX", "WEIGHTS_DIR", "LOGS_DIR"]

WEIGHTS_DIR = Path(__file__).with_name("weights")
LOGS_DIR = Path(__file__).with_name("logs")
PREFIX = "zoo:"


class UnknownModelError(UndiscardError, ValueError):
    """A zoo model name that is not registered."""


class MissingWeightsError(UndiscardError, FileNotFoundError):
    """A zoo model whose weights file is not there (not trained yet, or not installed)."""


class Spec(Protocol):
    name: str
    build: Callable[[], nn.Module]
    train: dict


S = TypeVar("S", bound=Spec)


class Catalog(Generic[S]):
    """Specs by name (``NAME`` or ``zoo:NAME``). ``kind`` names the zoo in errors, ``script`` is the
    training script a missing-weights error points to, ``defaults`` the recipe every spec's ``train``
    overrides. ``weights_dir``/``logs_dir`` are attributes so a test can point them elsewhere."""

    def __init__(self, kind: str, specs: list[S], defaults: dict[str, Any], script: str):
        self.kind, self.script, self.defaults = kind, script, defaults
        self.specs: dict[str, S] = {s.name: s for s in specs}
        self.weights_dir, self.logs_dir = WEIGHTS_DIR, LOGS_DIR

    def spec(self, name: str) -> S:
        key = name[len(PREFIX):] if name.startswith(PREFIX) else name
        if key not in self.specs:
            raise UnknownModelError(f"unknown {self.kind} model {name!r}; available: {', '.join(self.specs)}")
        return self.specs[key]

    def list_models(self) -> list[str]:
        """Names of the models (without the ``zoo:`` prefix the command line uses)."""
        return list(self.specs)

    def weights_path(self, name: str) -> Path:
        """Where the weights of model ``name`` are (or will be) stored."""
        return self.weights_dir / f"{self.spec(name).name}.pt"

    def train_recipe(self, name: str) -> dict[str, Any]:
        """Training hyper-parameters of model ``name`` (the defaults merged with its own)."""
        return {**self.defaults, **self.spec(name).train}

    def build_model(self, name: str) -> nn.Module:
        """The untrained architecture of model ``name`` (train mode, random weights)."""
        return self.spec(name).build()

    def create_model(self, name: str, pretrained: bool = True) -> nn.Module:
        """Model ``name`` in eval mode, float32. ``pretrained=True`` loads ``weights/NAME.pt`` (fp16; cast
        to the model's dtype) and raises MissingWeightsError naming the file when it is absent, before
        building anything; ``pretrained=False`` gives the randomly initialised architecture."""
        from .._files import load_weights

        spec = self.spec(name)
        path = self.weights_path(spec.name)
        if pretrained and not path.is_file():
            raise MissingWeightsError(f"weights for {self.kind} model {spec.name!r} not found: {path} "
                                      f"(train them with: python scripts/{self.script} --model {spec.name})")
        model = spec.build()
        if pretrained:
            load_weights(model, str(path))
        return model.eval()

    def training_log(self, name: str) -> dict[str, Any] | None:
        """The training log (``logs/NAME.json``) of model ``name``, or None if it has none."""
        path = self.logs_dir / f"{self.spec(name).name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def save(self, name: str, state: dict[str, Any], log: dict[str, Any]) -> Path:
        """Write model ``name``'s weights ``state`` (see :func:`fp16_state`) and its training ``log`` (which
        gains ``weights_bytes``), each atomically (:func:`undiscard._atomic.atomic_write`); the weights path."""
        import torch

        from .._atomic import atomic_write
        from ..evaluation.report import write_text

        path = self.weights_path(name)
        with atomic_write(path) as f:
            torch.save(state, f)
        log["weights_bytes"] = path.stat().st_size
        write_text(self.logs_dir / f"{self.spec(name).name}.json", json.dumps(log, indent=1) + "\n")
        return path


def fp16_state(model: nn.Module) -> dict[str, Any]:
    """``model``'s state_dict with floating tensors in float16: what the zoo commits (small files)."""
    return {k: v.detach().half() if v.is_floating_point() else v.detach() for k, v in model.state_dict().items()}


def run_record(wall_start: float, cpu_start: float, load_start: float, packages: tuple[str, ...]) -> dict[str, Any]:
    """The part of a training log that says how and where it ran: wall and CPU seconds since
    ``wall_start``/``cpu_start`` (``time.time()``/``time.process_time()``), the 1-minute load average at
    the start and now, torch's and ``packages``' versions, threads, Python and machine. Wall time depends
    on what else runs; CPU time (all threads) is the compute used, equal to idle wall time at 1 thread."""
    import os
    import platform
    import sys
    import time

    import torch

    return {"wall_seconds": time.time() - wall_start, "cpu_seconds": time.process_time() - cpu_start,
            "load_avg_1min_start": load_start, "load_avg_1min_end": os.getloadavg()[0],
            "torch": torch.__version__, **{p: sys.modules[p].__version__ for p in packages if p in sys.modules},
            "threads": torch.get_num_threads(), "python": platform.python_version(), "machine": platform.machine()}
