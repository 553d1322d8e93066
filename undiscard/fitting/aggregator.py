"""Training the attention aggregator (docs/semantics.md, "Aggregation") with the backbone frozen.

Each step searches ``budget`` states per image with a *random-times-learned* criterion (score
``u * (1 - sigmoid(attention logit))``, ``u ~ U(0, 1)`` per state), so that the aggregator sees every kind of
state and not only those it already likes, aggregates them with the aggregator (dropout on), applies the
frozen head and takes a cross-entropy step on the aggregator alone. AdamW, a linear warm-up then a cosine
decay per step. Budgets are capped at the number of states of the searched units (at that cap every
state is used and the criterion does not matter).

One trained aggregator works at any budget: attention is a softmax across however many states there are.

**Ranking** (``rank_weight > 0``): the attention logits also order states for ``criterion="learned"``,
which keeps the B states with the highest location-averaged logit (the aggregator's ``state_scores``).
Weighting states only teaches which of the *given* states to trust, not which to search, so a listwise
loss (ListNet) is added: per image, the cross-entropy between the softmax over its states of
``-CE(state's own logits, label) / rank_temperature`` (the states that classify the image best) and the
softmax of their scores, over the ``budget`` states searched per training image (all of them for the
zoo: 30 capped at 16). The loss is ``CE(aggregate) + rank_weight * listwise``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UndiscardError
from ..search._candidates import Candidates, stack_candidates
from ..wrapper import Undiscard

__all__ = ["TrainConfig", "train_aggregator", "evaluate_aggregates", "state_scores", "rank_loss"]


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train_aggregator` (defaults are the ones the zoo's aggregators used)."""

    epochs: int = 4
    budget: int = 30
    lr: float = 3e-3
    weight_decay: float = 0.01
    batch_size: int = 64
    warmup: float = 0.1  # share of the steps spent warming up
    seed: int = 0
    rank_weight: float = 0.0  # weight of the listwise ranking loss (0: weighting only, as before)
    rank_temperature: float = 0.25  # of the target: softmax(-per-state CE / T)


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    budget: int = 0
    seconds: float = 0.0


def state_scores(model: Undiscard, cands: Candidates) -> Tensor:
    """(N, B) scores of the searched states by ``model.aggregator`` (higher first for the ``learned``
    criterion): each state's map aligned as aggregation aligns it, against state 0's map."""
    feats, logits, offsets = stack_candidates(cands, cands.engine)
    maps = model.task.aligned_states(cands.engine, feats, logits, offsets, model.align).maps
    return model.aggregator.state_scores(maps, offsets, maps[:, 0])


def rank_loss(scores: Tensor, logits: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """ListNet loss of ``scores`` (N, B) against the states' own ``logits`` (N, B, K, ...) on ``labels``
    (N, ...): cross-entropy from softmax(-CE_b / temperature) to softmax(scores) over the B states."""
    n, b = scores.shape
    ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.repeat_interleave(b, 0), reduction="none")
    target = torch.softmax(-ce.view(n, b, -1).mean(-1) / temperature, dim=1)
    return -(target * torch.log_softmax(scores.float(), dim=1)).sum(1).mean()


def _lr_factor(step: int, total: int, warmup: float) -> float:
    warm = max(1, int(round(total * warmup)))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def evaluate_aggregates(model: Undiscard, images: Tensor, labels: Tensor, budget: int,
                        aggregates: tuple[str, ...] = ("mean", "entropy", "attention"),
                        batch_size: int = 250) -> dict[str, float]:
    """Top-1 (%) of each aggregate at ``budget`` on one search per batch (the model's own criterion)."""
    correct = dict.fromkeys(aggregates, 0)
    was_training = model.aggregator.training if model.aggregator is not None else False
    if model.aggregator is not None:
        model.aggregator.eval()
    for start in range(0, len(labels), batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        cands = model.candidates(x, budget)
        for agg in aggregates:
            correct[agg] += int((model.aggregate_candidates(cands, aggregate=agg).argmax(-1) == y).sum())
    if model.aggregator is not None:
        model.aggregator.train(was_training)
    return {agg: 100.0 * c / max(1, len(labels)) for agg, c in correct.items()}


def train_aggregator(model: Undiscard, images: Tensor, labels: Tensor, config: TrainConfig | None = None, *,
                     val: tuple[Tensor, Tensor] | None = None,
                     progress: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train ``model.aggregator`` (created untrained on first use) on ``images`` (N, C, H, W), ``labels`` (N,).

    ``model`` must use ``aggregate="attention"``; its backbone is frozen (no gradient reaches it). ``val``
    (images, labels) is evaluated after every epoch at the training budget (mean / entropy / attention).
    ``progress(n_images, stats)`` is called after each step. Returns the per-epoch history.
    """
    config = config or TrainConfig()
    if model.aggregate != "attention":
        raise UndiscardError(f"train_aggregator needs a model wrapped with aggregate='attention', got "
                             f"{model.aggregate!r}")
    if len(images) != len(labels) or len(labels) == 0:
        raise UndiscardError(f"need as many labels as images (and at least one), got {len(images)} and {len(labels)}")
    model.prepare(images[:1])
    if model.aggregator is None:
        raise UndiscardError("the model has no attention aggregator: wrap it with aggregate='attention' before its "
                             "first call")
    budget = min(config.budget, model.num_states)
    if config.rank_weight < 0 or config.rank_temperature <= 0:
        raise UndiscardError(f"rank_weight must be >= 0 and rank_temperature > 0, got {config.rank_weight}, "
                             f"{config.rank_temperature}")
    if budget < 2:
        raise UndiscardError(f"training needs at least 2 states per image, got budget {budget} "
                             f"({model.num_states} states in the searched units)")
    frozen = [p for p in model.net.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    net_was_training = model.net.training
    model.net.eval()  # frozen means frozen: no batch statistics, no running-stat updates
    agg = model.aggregator
    decay = [p for n, p in agg.named_parameters() if p.dim() >= 2 and "offset" not in n]
    other = [p for n, p in agg.named_parameters() if not (p.dim() >= 2 and "offset" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = math.ceil(len(labels) / config.batch_size)
    total = config.epochs * steps_per_epoch
    result = TrainResult(budget=budget)
    t0 = time.perf_counter()

    def scorer(images_idx, attn: Tensor, logits, states, depth) -> list[float]:
        u = torch.rand(len(states), generator=gen).to(attn.device)
        return (u * torch.sigmoid(-attn.float())).tolist()  # u * (1 - sigmoid(attention logit))

    step = 0
    try:
        for epoch in range(config.epochs):
            order = torch.randperm(len(labels), generator=gen)
            loss_sum = correct = seen = 0.0
            for start in range(0, len(labels), config.batch_size):
                idx = order[start:start + config.batch_size]
                x, y = images[idx], labels[idx]
                for group in opt.param_groups:
                    group["lr"] = config.lr * _lr_factor(step, total, config.warmup)
                agg.eval()  # the search uses the deterministic attention scores
                cands = model.candidates(x, budget, scorer=scorer)
                agg.train()
                logits = model.aggregate_candidates(cands, aggregate="attention")  # gradients reach agg
                loss = F.cross_entropy(logits.float(), y)
                if config.rank_weight > 0:
                    stacked_logits = stack_candidates(cands, cands.engine)[1]
                    loss = loss + config.rank_weight * rank_loss(state_scores(model, cands), stacked_logits, y,
                                                                 config.rank_temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                loss_sum += loss.item() * len(y)
                correct += float((logits.argmax(-1) == y).sum())
                seen += len(y)
                if progress is not None:
                    progress(len(y), {"epoch": epoch + 1, "loss": loss_sum / seen})
            agg.eval()
            entry = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": 100.0 * correct / seen,
                     "seconds": time.perf_counter() - t0,
                     "scale_abs_mean": float(agg.scale.detach().abs().mean())}
            if val is not None:
                entry["val"] = evaluate_aggregates(model, val[0], val[1], budget)
            result.history.append(entry)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.net.train(net_was_training)
        agg.eval()
    result.seconds = time.perf_counter() - t0
    return result
