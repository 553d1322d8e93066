"""undiscard: recover the activations that subsampling layers discard, at test time.

Public API (DESIGN §5)::

    undiscard.polyphase(layer, x, phase=None)   # phases of one subsampling layer
    undiscard.find_units(model, example_input)  # the model's subsampling units
    undiscard.wrap(net, budget=8, ...)          # a classifier that searches and aggregates phases
    undiscard.TTA(model, policy="flip")         # image-space test-time augmentation (composes with wrap)
"""
from .discovery import Unit, find_units
from .errors import PhaseError, UndiscardError, UnsupportedLayerError
from .layers import polyphase, register_adapter
from .tta import TTA
from .wrapper import Undiscard, wrap

__version__ = "0.1.0"
__all__ = ["polyphase", "find_units", "wrap", "TTA", "Unit", "Undiscard", "register_adapter",
           "UndiscardError", "PhaseError", "UnsupportedLayerError", "__version__"]
