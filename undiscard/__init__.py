"""undiscard: recover the activations that subsampling layers discard, at test time.

Public API::

    undiscard.polyphase(layer, x, phase=None)   # phases of one subsampling layer
    undiscard.find_units(model, example_input)  # the model's subsampling units
    undiscard.wrap(net, budget=8, ...)          # a classifier that searches and aggregates phases
    undiscard.TTA(model, policy="flip")         # image-space test-time augmentation (composes with wrap)
    undiscard.load_model("zoo:seg_fpn")         # a model by name (zoo, timm, torchvision, hf, EfficientNet-Lite)

Extension points: ``register_adapter`` (a layer type), ``register_aggregate`` (an aggregation),
``register_criterion`` (a search criterion), ``register_task`` (a kind of prediction);
``undiscard.models.loading.register_source`` (a model source).
"""
from ._compat import install_import_fix

install_import_fix()  # `import undiscard, timm` works on the CPU torch (undiscard._compat)

from ._version import __version__
from .analysis.discovery import Unit, find_units
from .errors import PhaseError, UndiscardError, UnsupportedLayerError
from .layers import polyphase, register_adapter
from .models.loading import LoadedModel, load_model
from .search.criteria import register_criterion
from .tasks.aggregation import register_aggregate
from .tasks.base import Task, register_task
from .tasks.segmentation import SegmentationTask  # registers task="segmentation"
from .tta import TTA
from .wrapper import Undiscard, wrap

__all__ = ["polyphase", "find_units", "wrap", "TTA", "load_model", "LoadedModel", "Unit", "Undiscard", "Task", "SegmentationTask",
           "register_adapter", "register_aggregate", "register_criterion", "register_task", "UndiscardError",
           "PhaseError", "UnsupportedLayerError", "__version__"]
