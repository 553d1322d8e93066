"""Models by name: :func:`load_model` (every source, both zoos) and the :class:`LoadedModel` it returns."""
from .loading import LoadedModel, load_model

__all__ = ["LoadedModel", "load_model"]
