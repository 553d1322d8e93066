"""Phase-selectable subsampling layers: the adapter registry and ``polyphase``.

Importing this package registers the built-in adapters (conv, pooling, patch merging, blur pooling).
"""
from . import (
    conv,
    merging,  # noqa: F401  (registers adapters)
    pool,
)
from .registry import (
    PhaseAdapter,
    get_adapter,
    polyphase,
    register_adapter,
    registered_classes,
)

__all__ = ["PhaseAdapter", "get_adapter", "polyphase", "register_adapter", "registered_classes"]
