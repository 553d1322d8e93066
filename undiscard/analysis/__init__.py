"""Model analysis: a model's subsampling units (:mod:`~undiscard.analysis.discovery`), the geometry of its
states (:mod:`~undiscard.analysis.geometry`), which part of its output are the logits
(:mod:`~undiscard.analysis.outputs`), and how it splits into features and head (:mod:`~undiscard.analysis.split`).
"""
from . import _hf_splits  # noqa: F401  (registers the Hugging Face splits; imports no transformers)
