"""Phase-selectable subsampling layers: the adapter registry and ``polyphase``.

Importing this package registers the built-in adapters (conv, pooling, patch merging, blur pooling).
"""
from .registry import PhaseAdapter, get_adapter, polyphase, register_adapter, registered_classes
from . import conv
from . import pool
from . import merging  # noqa: F401  (registers adapters)

__all__ = ["PhaseAdapter", "get_adapter", "polyphase", "register_adapter", "registered_classes"]
