"""Image-space test-time augmentation (docs/tta.md): views and policies, aggregators, the TTA module.

    >>> tta = undiscard.TTA(undiscard.wrap(net, budget=4), policy="flip", aggregate="mean")
    >>> logits = tta(x)          # 2 views, each with its own phase search; tta.last_cost ~ 2 x 4 states
    >>> seg = undiscard.TTA(seg_net, "flip,multiscale", "mean", task="segmentation")
    >>> logp = seg(x)            # (N, K, H, W): views de-augmented, probabilities averaged (mmseg)
"""
from .aggregators import (
           DENSE_AGGREGATES,
           FITTED,
           TTA_AGGREGATES,
           TTAAggregator,
           TTAFileError,
           load_tta,
           make_aggregator,
           save_tta,
)
from .dense_views import DENSE_POLICIES, DenseView, dense_policy_views, parse_dense_view
from .module import TTA, TTA_TASKS
from .views import OPS, POLICIES, View, parse_view, policy_views

__all__ = ["TTA", "TTA_TASKS", "TTAAggregator", "TTAFileError", "TTA_AGGREGATES", "DENSE_AGGREGATES", "FITTED",
           "make_aggregator", "save_tta", "load_tta", "View", "parse_view", "policy_views", "POLICIES", "OPS",
           "DenseView", "DENSE_POLICIES", "dense_policy_views", "parse_dense_view"]
