"""undiscard: recover the activations that subsampling layers discard, at test time.

Public API::

    undiscard.polyphase(layer, x, phase=None)   # phases of one subsampling layer
    undiscard.find_units(model, example_input)  # the model's subsampling units
    undiscard.wrap(net, budget=8, ...)          # a classifier that searches and aggregates phases
    undiscard.TTA(model, policy="flip")         # image-space test-time augmentation (composes with wrap)
    undiscard.load_model("zoo:seg_fpn")         # a model by name (zoo, timm, torchvision, hf, EfficientNet-Lite)

Extension points, each a registry (:mod:`undiscard._registry`: a taken name is refused unless
``replace=True``) with a ``list_*`` function for its names: ``register_adapter`` (a layer type;
``list_adapters``), ``register_aggregate`` (an aggregation; ``list_aggregates``), ``register_criterion`` (a
search criterion; ``list_criteria``), ``register_task`` (a kind of prediction; ``list_tasks``);
``undiscard.models.loading.register_source`` (a model source; ``list_sources``),
``undiscard.analysis.split.register_split`` (how a model class splits into features and head;
``list_splits``), ``undiscard.fitting.objectives.register_objective`` (a calibration objective;
``list_objectives``), ``undiscard.tta.aggregators.register_tta_aggregate`` (``list_tta_aggregates``) and
``undiscard.tta.views.register_view_op`` (``list_view_ops``).
"""
from ._compat import install_import_fix

install_import_fix()  # `import undiscard, timm` works on the CPU torch (undiscard._compat)

from ._version import __version__
from .analysis.discovery import Unit, find_units
from .analysis.split import list_splits
from .errors import PhaseError, UndiscardError, UnsupportedLayerError
from .fitting.objectives import list_objectives
from .layers import polyphase, register_adapter
from .layers.registry import list_adapters
from .models.loading import LoadedModel, list_sources, load_model
from .search.criteria import list_criteria, register_criterion
from .settings import Settings
from .tasks.aggregation import list_aggregates, register_aggregate
from .tasks.base import Task, list_tasks, register_task
from .tasks.segmentation import SegmentationTask  # registers task="segmentation"
from .tta import TTA
from .tta.aggregators import list_tta_aggregates
from .tta.views import list_view_ops
from .wrapper import Undiscard, wrap

__all__ = ["polyphase", "find_units", "wrap", "TTA", "load_model", "LoadedModel", "Unit", "Undiscard", "Task",
           "SegmentationTask", "register_adapter", "register_aggregate", "register_criterion", "register_task", "Settings",
           "list_adapters", "list_aggregates", "list_criteria", "list_tasks", "list_sources", "list_splits",
           "list_objectives", "list_tta_aggregates", "list_view_ops", "UndiscardError",
           "PhaseError", "UnsupportedLayerError", "__version__"]
