"""``TTA(model, policy, aggregate)``: image-space test-time augmentation around any classifier.

The views a policy's aggregator needs are made, run as one batched forward (chunked to ``chunk_size``
rows) and aggregated. ``model`` may be a plain classifier or a ``wrap()``-ed one: then every view gets
its own phase search (the views are just more images to the wrapped model), and the cost of a call is
views x the wrapped model's cost per image — ``last_cost``, in baseline forwards per input image, so TTA,
the phase search and both combined are compared at equal cost.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from .._testtime import TestTimeModule
from ..analysis.outputs import select_output
from ..errors import UndiscardError
from .aggregators import FITTED, TTAAggregator, TTAFileError, load_tta, make_aggregator
from .views import View, policy_views

__all__ = ["TTA"]


class TTA(nn.Module):
    """Test-time augmentation of ``model`` with a policy's views.

    Args:
        model: a classifier (N, C, H, W) -> (N, K), or an :class:`~undiscard.wrapper.Undiscard`.
        policy: ``flip``, ``standard``, ``expanded``, or a list of view strings / :class:`View`.
        aggregate: ``mean``, ``max``, ``gps``, ``classtta``, ``augtta`` — or the path of a file from
            ``undiscard fit-tta`` / :meth:`save` (its policy must match).
        budget: views to use (the first ``budget`` views; for ``gps`` the greedy steps). Default: all.
        chunk_size: most rows per forward pass.
    """

    def __init__(self, model: nn.Module, policy: str | Sequence[str | View] = "flip",
                 aggregate: str | Path | TTAAggregator = "mean", budget: int | None = None, chunk_size: int = 1024):
        super().__init__()
        if chunk_size < 1:
            raise UndiscardError(f"chunk_size must be >= 1, got {chunk_size}")
        self.model = model
        self.policy = policy_views(policy)
        self.policy_name = policy if isinstance(policy, str) else "custom"
        if not isinstance(aggregate, str) or aggregate.endswith(".pt"):
            if budget is not None:
                raise UndiscardError("budget= applies to a new aggregator; a fitted one keeps the views it was "
                                     "fitted with")
        if isinstance(aggregate, TTAAggregator):
            agg = aggregate
        elif isinstance(aggregate, Path) or (isinstance(aggregate, str) and aggregate.endswith(".pt")):
            agg, names, _ = load_tta(aggregate)
            if names != [v.name for v in self.policy]:
                raise TTAFileError(f"{aggregate} was fitted for views {', '.join(names)}, not this policy's "
                                   f"{', '.join(v.name for v in self.policy)}")
        else:
            agg = make_aggregator(str(aggregate), len(self.policy), budget)
        if agg.num_views != len(self.policy):
            raise UndiscardError(f"the aggregator is for {agg.num_views} views, the policy has {len(self.policy)}")
        self.aggregator = agg
        self.chunk_size = chunk_size
        self.last_cost: float = 0.0  # baseline forwards per input image, all views (and searches) counted
        self.last_cost_ideal: float = 0.0

    @property
    def views(self) -> list[View]:
        """The views that are run (those the aggregator needs), in order."""
        return [self.policy[i] for i in self.aggregator.views()]

    def view_logits(self, x: Tensor, views: Sequence[View] | None = None, phase_budget: int | None = None) -> Tensor:
        """Logits (N, V, K) of ``views`` (default: those the aggregator needs) of ``x`` (N, C, H, W), from
        one batched (chunked) forward; sets ``last_cost`` (baseline forwards per input image).

        ``phase_budget``: states a ``wrap()``-ed model searches per view in this call (default: its own
        ``budget``, which this never changes)."""
        views = self.views if views is None else list(views)
        batch = torch.cat([v(x) for v in views])  # view-major: rows v*N .. (v+1)*N-1
        outs, cost, ideal = [], 0.0, 0.0
        wrapped = isinstance(self.model, TestTimeModule)  # a wrap()-ed model: budget= per call, last_cost
        if phase_budget is not None and not wrapped and phase_budget != 1:
            raise UndiscardError(f"phase_budget={phase_budget} needs TTA around a wrap()-ed model")
        call = {"budget": phase_budget} if wrapped and phase_budget is not None else {}
        for start in range(0, batch.shape[0], self.chunk_size):
            chunk = batch[start:start + self.chunk_size]
            outs.append(select_output(self.model(chunk, **call)))  # a ModelOutput's .logits, ...
            cost += (self.model.last_cost if wrapped else 1.0) * chunk.shape[0]
            ideal += (self.model.last_cost_ideal if wrapped else 1.0) * chunk.shape[0]
        self.last_cost, self.last_cost_ideal = cost / x.shape[0], ideal / x.shape[0]
        return torch.cat(outs).unflatten(0, (len(views), x.shape[0])).transpose(0, 1)

    def forward(self, x: Tensor, phase_budget: int | None = None) -> Tensor:
        """Aggregated logits (N, K) of the views of ``x`` (N, C, H, W); ``phase_budget`` as in
        :meth:`view_logits`."""
        if self.aggregator.name in FITTED and not self.aggregator.fitted:
            raise UndiscardError(f"TTA aggregate {self.aggregator.name!r} must be fitted first: TTA.fit(images, "
                                 "labels) or a file from `undiscard fit-tta`")
        return self.aggregator(self.view_logits(x, phase_budget=phase_budget))

    @torch.no_grad()
    def fit(self, images: Tensor, labels: Tensor, batch_size: int = 256) -> "TTA":
        """Fit a learned aggregator on labelled ``images`` (never the test set): logits of every view of
        the policy are cached, then the aggregator is fitted on them."""
        logits = torch.cat([self.view_logits(images[s:s + batch_size], self.policy)
                            for s in range(0, len(images), batch_size)])
        with torch.enable_grad():
            self.aggregator.fit(logits, labels.to(logits.device))
        return self

    def save(self, path: str | Path, meta: dict | None = None) -> Path:
        """Save the (fitted) aggregator with this policy's view names."""
        from .aggregators import save_tta

        return save_tta(path, self.aggregator, [v.name for v in self.policy], meta)

    def extra_repr(self) -> str:
        return f"policy={len(self.policy)} views, aggregate={self.aggregator.name!r}, running {len(self.views)} views"
