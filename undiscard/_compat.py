"""Importing the optional extras (torchvision, timm) on a CPU-only torch.

The torchvision 0.28.0 wheel that pairs with torch 2.13.0 here is a CUDA build: on CPU torch its
import fails with ``operator torchvision::nms does not exist``, because its C++ extension cannot load
and the Python side then registers fake kernels for operators that were never defined. Defining the
two missing operator *schemas* first (no kernels) lets the import succeed; models, transforms and
datasets then work, while torchvision's C++ ops (nms, roi_align, image decoding) stay unavailable.
undiscard uses none of those (images are read with PIL).

Everything here is a no-op where torchvision imports normally: the schemas are only defined when
torchvision is not yet imported, ``torchvision::nms`` is missing from the operator registry *and*
torchvision's own extension does not load. ``import undiscard`` installs a one-shot import hook that
applies this the first time anything imports torchvision, so ``import undiscard, timm`` works.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY: torch.library.Library | None = None  # kept alive: dropping it unregisters the schemas


def _has_op(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def _extension_loads() -> bool:
    """Whether torchvision's own C++ extension (``torchvision/_C``) loads with this torch, tried the way
    torchvision itself tries it; where it does, it defines the operators and nothing is needed."""
    spec = importlib.util.find_spec("torchvision")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        for lib in sorted(Path(folder).glob("_C*")):
            if lib.suffix in (".so", ".pyd", ".dylib"):
                try:
                    torch.ops.load_library(str(lib))
                    return True
                except (OSError, RuntimeError):
                    return False
    return False


def _define_missing_schemas() -> None:
    global _LIBRARY
    if "torchvision" in sys.modules or _LIBRARY is not None:
        return
    missing = [name for name in _SCHEMAS if not _has_op(name)]
    if not missing or _extension_loads():
        return
    _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        _LIBRARY.define(_SCHEMAS[name])


class _TorchvisionImportFix(importlib.abc.MetaPathFinder):
    """Applies the workaround the first time anything imports torchvision (timm does, at its own import),
    so ``import undiscard, timm`` works; then steps aside. It finds nothing itself."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 - the importlib protocol
        if name == "torchvision":
            remove_import_fix()
            _define_missing_schemas()
        return None


_FIX = _TorchvisionImportFix()


def install_import_fix() -> None:
    """Make a later ``import torchvision`` (or ``import timm``) work on this CPU torch; called once by
    ``import undiscard``. A no-op where torchvision is already imported or not installed."""
    if "torchvision" not in sys.modules and _FIX not in sys.meta_path \
            and importlib.util.find_spec("torchvision") is not None:
        sys.meta_path.insert(0, _FIX)


def remove_import_fix() -> None:
    if _FIX in sys.meta_path:
        sys.meta_path.remove(_FIX)


def import_torchvision() -> ModuleType:
    """Import torchvision, working around the CUDA-only wheel on CPU torch (see module docstring).

    Raises ImportError with an install hint when torchvision is not installed.
    """
    if "torchvision" not in sys.modules:
        if importlib.util.find_spec("torchvision") is None:
            raise ImportError("torchvision is not installed: pip install 'undiscard[torchvision]'")
        _define_missing_schemas()
    return importlib.import_module("torchvision")


def import_timm() -> ModuleType:
    """Import timm (which imports torchvision, so the same workaround applies first)."""
    if "timm" not in sys.modules:
        if importlib.util.find_spec("timm") is None:
            raise ImportError("timm is not installed: pip install 'undiscard[timm]'")
        if importlib.util.find_spec("torchvision") is not None:
            import_torchvision()
    return importlib.import_module("timm")


def class_path(obj_or_cls: object) -> str:
    """Fully qualified name of a class (or of an object's class), e.g. ``torch.nn.modules.conv.Conv2d``.

    Registries key optional classes by this string so that timm/torchvision need not be imported.
    """
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}.{cls.__qualname__}"
