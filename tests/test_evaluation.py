"""The evaluation runner: counts from known logits, rows against an independent count, no side effects.

- ``run_pairs`` on hand-made logits gives the hand-counted sums (top-1, top-5, shifted, agreement, cost), for
  a classifier and, with the segmentation task's tally, for a segmenter (confusion matrices, pixel
  consistency, cost of every image run); tallies of shards merge into the tally of the whole;
- ``evaluate`` rows equal counts made independently from ``model(x, budget=b)`` per batch (budget 1:
  ``net(x)`` itself), for every budget, from one search per batch at the largest budget;
- ``evaluate``, ``evaluate_tta`` and ``evaluate_tta_grid`` leave the given model's settings (budget,
  criterion, aggregate, align) and every module's train/eval mode as they were.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import undiscard
from undiscard.evaluation.runner import (
    describe_rows,
    evaluate,
    evaluate_tta,
    evaluate_tta_grid,
    run_batches,
    run_pairs,
    tensor_batches,
)
from undiscard.metrics import (
    ClassificationTally,
    SegmentationTally,
    row_from_counts,
    topk_correct,
)
from undiscard.tasks.base import AutoTask, get_task
from undiscard.tta import TTA, policy_views

pytestmark = pytest.mark.usefixtures("one_thread")

K = 5


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, 2, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, K)).eval()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 3, 12, 12, generator=g)
    return x, torch.randint(0, K, (7,), generator=g), x.roll(1, -1)


def onehot(classes: list[int]) -> torch.Tensor:
    return torch.eye(K)[classes] * 2 + torch.arange(K) * 0.1  # top-1 the class, then K-1, K-2, ...


def test_run_pairs_counts_hand_made_logits() -> None:
    """5 images (labels 0..4) in batches of 2. Clean predictions 0, 1, 4, 4, 4: top-1 hits rows 0, 1, 4;
    top-5 hits all (K = 5). Shifted predictions all 1: the shifted hit and the one agreement are row 1.
    Cost is counted per clean image (2.0 and 1.5 each); the shifted batches' costs are not."""
    images = torch.arange(5.0)[:, None]  # the "image" is its index
    labels = torch.arange(5)
    clean = onehot([0, 1, 4, 4, 4])
    shifted_logits = onehot([1] * 5)

    def predict(x: torch.Tensor):
        rows = x[:, 0].long()
        if (x[:, 0] >= 0).all():
            return {"k": (clean[rows], 2.0, 1.5)}
        return {"k": (shifted_logits[-rows - 1], 99.0, 99.0)}  # costs of shifted batches are not counted

    seen = []
    tallies, seconds = run_pairs(images, labels, predict, ["k"], shifted=-images - 1, batch_size=2,
                                 progress=seen.append)
    assert seen == [2, 2, 1] and seconds >= 0
    assert tallies["k"].counts() == {"correct1": 3.0, "correct5": 5.0, "correct_shifted": 1.0, "agree": 1.0,
                                            "cost_sum": 10.0, "ideal_sum": 7.5, "n": 5.0, "shifted": 1.0}


def test_tally_needs_the_clean_batch_first() -> None:
    with pytest.raises(RuntimeError, match="must follow its clean batch"):
        ClassificationTally().update(onehot([0]), torch.tensor([0]), clean=False, cost=1.0, ideal=1.0)
    with pytest.raises(RuntimeError, match="must follow its clean batch"):
        SegmentationTally(2).update(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2), clean=False,
                                    offsets=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="need their offsets"):
        tally = SegmentationTally(2)
        tally.update(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2))
        tally.update(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2), clean=False)


def label_logits(maps: list[list[list[int]]], k: int = 2) -> torch.Tensor:
    """(N, K, H, W) logits whose argmax is the given label maps."""
    return torch.nn.functional.one_hot(torch.tensor(maps), k).permute(0, 3, 1, 2).float()


def test_the_runner_counts_a_segmenter_with_the_tasks_tally() -> None:
    """One 2x3 image, K = 2, shifted right by one pixel. Target [[0 0 1] [0 1 1]], clean prediction
    [[0 1 1] [0 1 1]]: cm[0] = (2, 1), cm[1] = (0, 3), IoU 2/3 and 3/4, mIoU 17/24, accuracy 5/6. The shifted
    target is [[255 0 0] [255 0 1]] (nothing moved into column 0); the shifted prediction [[0 0 0] [0 0 1]]
    hits all 4 counted pixels. Consistency compares clean (i, j) with shifted (i, j + 1): 1 + 2 of 4 agree.
    Cost is counted for every image run: (2 + 4) / 2."""
    target = torch.tensor([[[0, 0, 1], [0, 1, 1]]])
    clean, shifted = label_logits([[[0, 1, 1], [0, 1, 1]]]), label_logits([[[0, 0, 0], [0, 0, 1]]])

    def predict(x: torch.Tensor):
        return {"k": (clean, 2.0, 1.0) if x.sum() > 0 else (shifted, 4.0, 3.0)}

    task = get_task("segmentation")
    batch = (torch.ones(1, 1, 2, 3), target, -torch.ones(1, 1, 2, 3), torch.tensor([[0, 1]]))
    counted = run_batches([batch], predict, ["k"], tally=lambda: task.tally(2, 255))
    row = counted.tallies["k"].row()
    assert isinstance(counted.tallies["k"], SegmentationTally) and counted.n == 1 and counted.shifted
    assert row["miou"] == pytest.approx(100 * 17 / 24) and row["pixel_acc"] == pytest.approx(100 * 5 / 6)
    assert row["miou_shifted"] == 100.0 and row["pixel_acc_shifted"] == 100.0 and row["consistency"] == 75.0
    assert row["cost"] == 3.0 and row["cost_ideal"] == 2.0 and row["n"] == 1
    (described,) = describe_rows(counted.tallies, lambda k: {"method": k}, 1.234)
    assert described == {"method": "k", **row, "seconds": 1.23}
    plain = run_batches([batch[:2]], predict, ["k"], tally=lambda: task.tally(2, 255)).tallies["k"].row()
    assert plain["miou"] == row["miou"] and plain["miou_shifted"] is None and plain["consistency"] is None
    assert plain["cost"] == 2.0


def test_every_task_names_its_tally() -> None:
    assert isinstance(get_task("classification").tally(5), ClassificationTally)
    seg = get_task("segmentation").tally(3, 7)
    assert isinstance(seg, SegmentationTally) and (seg.num_classes, seg.ignore_index) == (3, 7)
    auto = AutoTask()
    assert isinstance(auto.tally(3), ClassificationTally)
    with pytest.warns(UserWarning, match="segmentation"):
        auto.state_uncertainty(torch.zeros(2, 3, 4, 4))  # a dense output: the task resolves to segmentation
    assert isinstance(auto.tally(3), SegmentationTally)


@pytest.mark.parametrize("kind", ["classification", "segmentation"])
def test_tallies_of_shards_merge_into_the_tally_of_the_whole(kind: str) -> None:
    g = torch.Generator().manual_seed(3)
    n = 6
    if kind == "classification":
        logits, targets = torch.randn(n, K, generator=g), torch.randint(0, K, (n,), generator=g)
        new = ClassificationTally
    else:
        logits, targets = torch.randn(n, 3, 5, 6, generator=g), torch.randint(0, 3, (n, 5, 6), generator=g)
        targets[0, 0, :2] = 255
        new = lambda: SegmentationTally(3, 255)  # noqa: E731
    offsets = torch.randint(-2, 3, (n, 2), generator=g)

    def predict(x: torch.Tensor):
        clean = bool((x >= 0).all())
        rows = (x[:, 0] if clean else -x[:, 0] - 1).long()
        return {"k": (logits[rows] * (1 if clean else -1), 1.5 if clean else 2.5, 1.0)}

    images = torch.arange(n, dtype=torch.float)[:, None]
    shifted = -images - 1
    whole = run_pairs(images, targets, predict, ["k"], shifted=shifted, offsets=offsets, batch_size=4,
                      tally=new)[0]["k"]
    parts = [run_batches(tensor_batches(images[s], targets[s], shifted[s], 4, offsets[s]), predict, ["k"],
                         tally=new).tallies["k"] for s in (slice(0, 2), slice(2, n))]
    merged = parts[0].merge(parts[1])
    assert merged.counts() == whole.counts() and merged.row() == whole.row()
    loaded = new()
    loaded.load_counts(whole.counts())
    assert loaded.row() == whole.row()


def _independent_counts(model, x, y, xs, b: int, batch_size: int) -> dict[str, float]:
    """Counts of ``model(x, budget=b)`` batch by batch, written out without the library's tally."""
    c = dict.fromkeys(("correct1", "correct5", "correct_shifted", "agree", "cost_sum", "ideal_sum"), 0.0)
    for s in range(0, len(x), batch_size):
        lc = model(x[s:s + batch_size], budget=b)
        cost, ideal = model.last_cost, model.last_cost_ideal
        ls = model(xs[s:s + batch_size], budget=b)
        yy = y[s:s + batch_size]
        c["correct1"] += int((lc.argmax(-1) == yy).sum())
        c["correct5"] += sum(int(yy[i] in lc[i].topk(5).indices) for i in range(len(yy)))
        c["correct_shifted"] += int((ls.argmax(-1) == yy).sum())
        c["agree"] += int((lc.argmax(-1) == ls.argmax(-1)).sum())
        c["cost_sum"] += cost * len(yy)
        c["ideal_sum"] += ideal * len(yy)
    return c


@pytest.mark.parametrize("aggregate", ["entropy", "mean"])
def test_evaluate_rows_match_independent_counts(data, aggregate: str) -> None:
    x, y, xs = data
    net = tiny()
    model = undiscard.wrap(net, budget=1, aggregate=aggregate, example_input=x[:1])
    budgets = [1, 3, 8]
    rows = evaluate("m", model, x, y, budgets, shifted=xs, batch_size=3)
    assert [r.budget for r in rows] == budgets
    for r in rows:
        want = _independent_counts(model, x, y, xs, r.budget, 3)
        got = r.counts
        assert {k: got[k] for k in ("correct1", "correct5", "correct_shifted", "agree")} == \
            {k: want[k] for k in ("correct1", "correct5", "correct_shifted", "agree")}
        assert (got["cost_sum"], got["ideal_sum"]) == pytest.approx((want["cost_sum"], want["ideal_sum"]), rel=1e-12)
        assert (r.n, r.top1, r.consistency) == (7, 100.0 * want["correct1"] / 7, 100.0 * want["agree"] / 7)
        assert (r.criterion, r.aggregate, r.align, r.total_budget) == ("entropy", aggregate, True, r.budget)
    with torch.no_grad():  # budget 1 is the network itself
        assert rows[0].counts["correct1"] == topk_correct(net(x), y, 1)
        assert rows[0].cost == 1.0


def test_row_from_counts_without_shifted_copies() -> None:
    counts = {"correct1": 3.0, "correct5": 4.0, "correct_shifted": 0.0, "agree": 0.0, "cost_sum": 8.0,
              "ideal_sum": 6.0, "n": 4.0, "shifted": 0.0}
    template = undiscard.evaluation.runner.Row("m", 2, 0.0, None, None, None, 0.0, 0.0, 4, "entropy", "mean", True, [],
                                        1.0, tta_views=3)
    r = row_from_counts(template, counts)
    assert (r.top1, r.top5, r.top1_shifted, r.consistency, r.cost, r.cost_ideal, r.total_budget) == \
        (75.0, 100.0, None, None, 2.0, 1.5, 6)


def _settings(model: undiscard.Undiscard) -> tuple:
    return (model.budget, model.criterion, model.aggregate, model.align,
            [m.training for m in model.modules()])


@pytest.mark.parametrize("training", [False, True])
def test_evaluation_leaves_the_model_alone(data, training: bool) -> None:
    """Budgets are given per call: the model's own budget (3 here), criterion, aggregate, align and the
    modes of its modules are what they were before, whichever runner was used."""
    x, y, xs = data
    model = undiscard.wrap(tiny(), budget=3, criterion="offset", aggregate="mean", align=False,
                           example_input=x[:1])
    model.train(training)
    model.net[0].train(not training)  # mixed modes come back as they were
    before = _settings(model)
    evaluate("m", model, x, y, [1, 2, 6], shifted=xs, variants=[("entropy", True), ("mean", False)])
    assert _settings(model) == before
    tta = TTA(model, "flip", "mean")
    rows = evaluate_tta("m", tta, x, y, [1, 4], shifted=xs, batch_size=4)
    assert _settings(model) == before and [r.total_budget for r in rows] == [2, 8]
    evaluate_tta_grid("m", model, policy_views("standard"), x, y, [(2, 4, "flip/mean"), (3, 1, "s/mean")],
                      shifted=xs)
    assert _settings(model) == before


def test_evaluate_tta_rows_name_the_units_at_budget_one(data) -> None:
    """A TTA row carries the searched units even when only budget 1 (the plain network) was run."""
    x, y, xs = data
    model = undiscard.wrap(tiny(), budget=1)  # not set up yet
    rows = evaluate_tta("m", TTA(model, "flip", "mean"), x, y, [1], shifted=xs)
    assert rows[0].units == [u.name for u in model.search_units] != []
    with pytest.raises(undiscard.PhaseError, match="exceeds"):
        evaluate_tta("m", TTA(model, "flip", "mean"), x, y, [1, 99])


def test_tta_phase_budget_is_per_call(data) -> None:
    """``tta(x, phase_budget=b)`` runs the wrapped model at b for that call only, and equals a TTA around
    the same model whose budget is b."""
    x, _, _ = data
    net = tiny()
    model = undiscard.wrap(net, budget=1, example_input=x[:1])
    with torch.no_grad():
        per_call = TTA(model, "flip", "mean")(x, phase_budget=4)
        assert model.budget == 1
        fixed = TTA(undiscard.wrap(net, budget=4), "flip", "mean")(x)
        assert torch.equal(per_call, fixed)
        assert torch.equal(TTA(net, "flip", "mean")(x, phase_budget=1), TTA(model, "flip", "mean")(x))
    with pytest.raises(undiscard.UndiscardError, match="wrap"):
        TTA(net, "flip", "mean")(x, phase_budget=2)


def test_engine_cost_hook_sees_every_pass(data) -> None:
    """``register_cost_hook``: one root call with the batch's rows, one call per pass of states, one for the
    head on the aggregated features; the FLOPs reported add up to what ``last_cost`` charges, and a removed
    hook is not called again."""
    x, _, _ = data
    model = undiscard.wrap(tiny(), budget=6, example_input=x[:1])
    engine = model.prepare(x)
    calls: list[tuple] = []
    handle = engine.register_cost_hook(lambda *a: calls.append(a))
    with torch.no_grad():
        model(x)
    assert calls[0][:2] == calls[-1][:2] == (None, len(x)) and len(calls) > 2
    assert all(c[0] is not None for c in calls[1:-1]) and sum(c[1] for c in calls[1:-1]) == 5 * len(x)
    base = engine.flops.baseline * len(x)
    assert sum(c[2] for c in calls) / base == pytest.approx(model.last_cost, rel=1e-12)
    assert sum(c[3] for c in calls) / base == pytest.approx(model.last_cost_ideal, rel=1e-12)
    handle.remove()
    before = len(calls)
    with torch.no_grad():
        model(x)
    assert len(calls) == before


def test_budget_one_row_costs_one_forward_whatever_the_split():
    """A model split by the hook fallback: budget 1 is the network itself, its row costs exactly 1 forward
    (as ``wrap(net, budget=1)`` does), and budget 2 at most 2."""
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            if x.shape[-1] > 0:  # control flow on a shape: fx cannot trace it
                x = self.body(x)
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    net = Branchy().eval()
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 3, (6,))
    model = undiscard.wrap(net, budget=2, example_input=x[:1])
    assert model.split_method.startswith("hook")
    rows = evaluate("b", model, x, y, [1, 2])
    assert rows[0].cost == 1.0 and rows[0].cost_ideal == 1.0
    assert 1.0 < rows[1].cost <= 2.0 + 1e-9
