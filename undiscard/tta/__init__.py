"""Image-space test-time augmentation (DESIGN §4): views and policies, aggregators, the TTA module.

    >>> tta = undiscard.TTA(undiscard.wrap(net, budget=4), policy="flip", aggregate="mean")
    >>> logits = tta(x)          # 2 views, each with its own phase search; tta.last_cost ~ 2 x 4 states
"""
from .aggregators import FITTED, TTA_AGGREGATES, TTAAggregator, TTAFileError, load_tta, make_aggregator, save_tta
from .module import TTA
from .views import OPS, POLICIES, View, parse_view, policy_views

__all__ = ["TTA", "TTAAggregator", "TTAFileError", "TTA_AGGREGATES", "FITTED", "make_aggregator", "save_tta",
           "load_tta", "View", "parse_view", "policy_views", "POLICIES", "OPS"]
