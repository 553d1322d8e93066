"""Label-free calibration (objective="consistency" and its smooth variants) and calibration in bounded memory:
the objectives by hand, the greedy on a constructed example, the end-to-end curve against the calibrated
search, and the working set independent of the number of images."""
from __future__ import annotations

import math

import pytest
import torch

import undiscard
from undiscard.data.store import StateStore
from undiscard.errors import UndiscardError
from undiscard.fitting._state_ranking import rank_states, working_rows
from undiscard.fitting.calibration import calibrate
from undiscard.fitting.objectives import get_objective, pair_stats
from undiscard.search.orders import StateOrder
from undiscard.tasks.base import ClassificationTask, StateMaps

from .test_calibrated import net

pytestmark = pytest.mark.usefixtures("one_thread")


def probs(*p: float) -> torch.Tensor:
    return torch.log(torch.tensor(p, dtype=torch.float64))


# two pairs: (0.75, 0.25) vs (0.25, 0.75) disagree; (0.9, 0.1) twice agree
PAIRS = torch.stack([probs(0.75, 0.25), probs(0.25, 0.75), probs(0.9, 0.1), probs(0.9, 0.1)])


def test_pair_stats_by_hand():
    agree, prob, kl = pair_stats(PAIRS)
    assert agree.tolist() == [False, True]
    torch.testing.assert_close(prob, torch.tensor([0.375, 0.82], dtype=torch.float64))
    torch.testing.assert_close(kl, torch.tensor([math.log(3), 0.0], dtype=torch.float64))


@pytest.mark.parametrize("name, expected", [("consistency", (0.5, math.log(3) / 2)),
                                            ("agreement", ((0.375 + 0.82) / 2, math.log(3) / 2)),
                                            ("kl", (-math.log(3) / 2, -(0.375 + 0.82) / 2))])
def test_pair_objectives_by_hand_and_over_chunks(name, expected):
    task = ClassificationTask()
    whole = get_objective(name).accumulator(task)
    whole.add(PAIRS, None)
    parts = get_objective(name).accumulator(task)
    parts.add(PAIRS[:2], None)
    parts.add(PAIRS[2:], None)
    assert whole.result() == pytest.approx(expected, abs=1e-12)
    assert parts.result() == pytest.approx(expected, abs=1e-12)
    assert not get_objective(name).needs_labels and get_objective(name).pairs


def test_unknown_objective_and_missing_views():
    with pytest.raises(UndiscardError, match="unknown objective"):
        get_objective("nope")
    m = undiscard.wrap(net(), budget=1, units=[0, 1])
    with pytest.raises(UndiscardError, match="pairs of views"):
        calibrate(m, X, objective="consistency")
    with pytest.raises(UndiscardError, match="labelled"):
        calibrate(m, X)


class _Store:
    """The part of a StateStore rank_states reads: its row count and the states' own logits."""

    def __init__(self, logits: torch.Tensor):
        self.rows, self.logits = logits.shape[0], logits

    def read(self, key, rows, states=None):
        return self.logits[rows]


def test_greedy_picks_the_state_that_raises_consistency():
    # 4 pairs of views (rows 2i, 2i+1), 3 states, 2 classes. State 0 flips its class between the views of
    # pairs 0 and 1; state 1 repeats state 0's confusion; state 2 is confident and consistent on them.
    # The aggregate (mean of logits) with state 2 agrees on every pair; with state 1 it does not.
    s0 = [[2, 0], [0, 2], [2, 0], [0, 2], [3, 0], [3, 0], [0, 3], [0, 3]]
    s1 = [[2, 0], [0, 2], [2, 0], [0, 2], [1, 0], [1, 0], [0, 1], [0, 1]]
    s2 = [[0, 9], [0, 9], [9, 0], [9, 0], [3, 0], [3, 0], [0, 3], [0, 3]]
    logits = torch.tensor([s0, s1, s2], dtype=torch.float32).transpose(0, 1)  # (rows, states, K)
    store = _Store(logits)

    def chunk(rows):
        return StateMaps(logits[rows], None, None), logits[rows], torch.zeros(logits[rows].shape[:2] + (2,))

    def combine(maps, lg, off, idx):
        return lg[:, idx].mean(1)

    for rows in (2, 4, 8):  # the chunking does not change the result
        ranked = rank_states(store, chunk, combine, get_objective("consistency"), ClassificationTask(), None, 3,
                             greedy=1, rows=rows)
        assert ranked.positions == [0, 2, 1]
        assert ranked.curve == [0.5, 1.0]
        assert ranked.own[2][0] == 1.0 and ranked.own[1][0] == 0.5


X = torch.randn(6, 3, 20, 20, generator=torch.Generator().manual_seed(1))


def pairs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n crops of 16x16 and the same scenes moved by one pixel (real content: crops of a larger image)."""
    big = torch.randn(n, 3, 20, 20, generator=torch.Generator().manual_seed(3))
    return big[..., 1:17, 1:17], big[..., 2:18, 1:17]


def test_label_free_curve_is_the_calibrated_search_consistency():
    a, b = pairs(6)
    m = undiscard.wrap(net(), budget=1, units=[0, 1])
    order = calibrate(m, a, None, greedy=3, shifted=b, objective="consistency")
    assert order.states[0] == (0, 0) and len(set(order.states)) == 16 and order.meta["objective"] == "consistency"
    curve = order.meta["greedy_accuracy"]
    ties = order.meta["greedy_tiebreak"]
    for k in range(1, 5):
        search = undiscard.wrap(net(), budget=k, units=[0, 1], criterion="calibrated",
                                order=StateOrder(order.states[:k], order.units))
        with torch.no_grad():
            agree, _, kl = pair_stats(torch.stack([search(a), search(b)], 1).flatten(0, 1))
        assert float(agree.double().mean()) == pytest.approx(curve[k - 1], abs=1e-9)
        assert float(kl.mean()) == pytest.approx(ties[k - 1], abs=1e-5)


def test_smooth_objective_greedy_step_is_the_best_addition():
    a, b = pairs(6)
    m = undiscard.wrap(net(), budget=1, units=[0, 1])
    order = calibrate(m, a, None, greedy=1, shifted=b, objective="agreement")
    curve = order.meta["greedy_accuracy"]
    scores = {}
    for state in order.states[1:]:  # brute force: every state added to state 0, as the calibrated search runs it
        search = undiscard.wrap(net(), budget=2, units=[0, 1], criterion="calibrated",
                                order=StateOrder([(0, 0), state], order.units))
        with torch.no_grad():
            _, prob, _ = pair_stats(torch.stack([search(a), search(b)], 1).flatten(0, 1))
        scores[state] = float(prob.mean())
    best = max(scores.values())
    assert scores[order.states[1]] == pytest.approx(best, abs=1e-9) and curve[1] == pytest.approx(best, abs=1e-9)
    assert len({round(v, 6) for v in scores.values()}) > 1  # the states differ: the choice is not vacuous


def test_working_set_does_not_grow_with_the_number_of_images(tmp_path):
    m = undiscard.wrap(net(), budget=1, units=[0, 1])
    metas = []
    for n in (16, 64):  # more rows than a chunk or a batch holds, both times
        a, b = pairs(n)
        order = calibrate(m, a, None, greedy=1, shifted=b, objective="consistency", memory_mb=0.05,
                          workdir=tmp_path, batch_size=3)
        metas.append(order.meta)
        assert list(tmp_path.iterdir()) == []  # the store's files are gone
    small, large = metas
    for key in ("rows_per_batch", "rows_per_search_pass", "rows_per_chunk", "max_rows_in_memory"):
        assert small[key] == large[key], key
    assert small["rows_per_batch"] <= 3 and small["rows_per_chunk"] % 2 == 0 and small["rows_per_chunk"] < 32
    assert large["store_mb"] == pytest.approx(4 * small["store_mb"])  # what grows is on disk
    assert large["peak_rss_mb"] > 0 and large["seconds"] > 0


def test_working_rows():
    assert working_rows(100, 30, 10) == 3
    assert working_rows(100, 30, 2) == 2
    assert working_rows(10, 30, 10) == 1
    assert working_rows(100, 30, 10, even=True) == 2
    assert working_rows(10, 30, 10, even=True) == 2


def test_store_round_trip_and_half_storage(tmp_path):
    maps = torch.randn(5, 3, 2, 4, 4)
    with StateStore(5, torch.float16, tmp_path) as store:
        store.write(0, {"maps": maps[:2], "extra": None}, {"offsets": torch.ones(2, 3, 2, dtype=torch.long)})
        store.write(2, {"maps": maps[2:], "extra": None}, {"offsets": torch.ones(3, 3, 2, dtype=torch.long)})
        got = store.read("maps", slice(1, 4))
        assert got.dtype == torch.float16
        torch.testing.assert_close(got.float(), maps[1:4], atol=2e-3, rtol=1e-3)
        assert store.max_rows == 3  # the most rows written or read at once
        assert store.read("extra", slice(0, 5)) is None
        assert store.read("offsets", slice(0, 5)).dtype == torch.long
        assert store.max_rows == 5 and store.nbytes == 5 * 3 * 2 * 16 * 2 + 5 * 3 * 2 * 8
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def unlabelled(tmp_path):
    """A folder of three unlabelled images (one in a subfolder), no class structure."""
    from PIL import Image

    g = torch.Generator().manual_seed(5)
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for k, where in enumerate(["a.png", "b.jpg", "sub/c.png"]):
        arr = (torch.rand(48, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(tmp_path / "imgs" / where)
    return tmp_path / "imgs"


def test_cli_calibrates_without_labels(unlabelled, tmp_path, capsys):
    import json

    from undiscard.cli import main
    from undiscard.search.orders import load_order

    out = tmp_path / "order.json"
    assert main(["calibrate", "--model", "zoo:resnet_basic", "--objective", "consistency", "--data", str(unlabelled),
                 "--pairs-per-image", "2", "--max-shift", "2", "--greedy", "2", "--out", str(out), "--quiet",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    order = load_order(out)
    assert summary["objective"] == "consistency" and order.meta["objective"] == "consistency"
    assert order.meta["images"] == 6 and "3 unlabelled images" in order.meta["data"]
    assert order.meta["peak_rss_mb"] > 0 and len(order.meta["greedy_accuracy"]) == 3
    assert main(["calibrate", "--model", "zoo:seg_fpn", "--task", "segmentation", "--objective", "consistency",
                 "--data", str(unlabelled), "--out", str(out), "--quiet"]) != 0
    err = capsys.readouterr().err.strip()
    assert "for classifiers" in err and "\n" not in err


def test_file_backed_views_calibrate_like_tensors(tmp_path):
    from undiscard.data.store import DiskTensor

    a, b = pairs(4)
    m = undiscard.wrap(net(), budget=1, units=[0, 1])
    da, db = DiskTensor(tmp_path / "a.bin", tuple(a.shape), torch.float32), DiskTensor(tmp_path / "b.bin",
                                                                                     tuple(b.shape), torch.float32)
    da.write(0, a)
    db.write(0, b)
    assert torch.equal(da[1:3], a[1:3])
    want = calibrate(m, a, None, greedy=2, shifted=b, objective="consistency")
    got = calibrate(m, da, None, greedy=2, shifted=db, objective="consistency")
    assert got.states == want.states and got.meta["greedy_accuracy"] == want.meta["greedy_accuracy"]


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
def test_lite_models_ship_a_label_free_order(name):
    pytest.importorskip("efficientnet_lite_pytorch")
    from undiscard.models.loading import load_model
    from undiscard.search.orders import load_order, zoo_order_path

    if not zoo_order_path(name).is_file():
        pytest.skip(f"{name}: no order shipped in this checkout (scripts/calibrate_lite.py)")
    loaded = load_model(name)
    assert loaded.order == str(zoo_order_path(name))
    order = load_order(loaded.order)
    assert order.meta["objective"] in ("consistency", "agreement", "kl")
    assert "photos/calibration" in order.meta["data"] and order.stop is not None
    size = loaded.preprocess.input_size
    m = undiscard.wrap(loaded.model, budget=2, criterion="calibrated", order=order,
                       example_input=torch.zeros(1, 3, size, size))
    assert [u.name for u in m.search_units] == order.units
