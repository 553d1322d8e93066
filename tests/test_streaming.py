"""`undiscard eval` streams its images: a DataLoader over the folder reads each image
only when its batch is needed, shifted copies are made per batch from offsets drawn per global position,
and the streamed runner counts exactly what the in-memory one counts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import undiscard
from undiscard.cli._data import folder_loader
from undiscard.data import folder as folder_module
from undiscard.data.folder import load_image, normalize_batch, scan_folder
from undiscard.data.shift import random_offsets, shift_images
from undiscard.evaluation import distributed
from undiscard.evaluation.runner import evaluate, evaluate_stream, tensor_batches
from undiscard.models.loading import Preprocess

PRE = Preprocess(input_size=16, in_chans=3, mean=(0.5,), std=(0.25,), crop_pct=1.0, pad_to=16)
N = 10


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(0)
    for i in range(N):
        d = root / f"c{i % 3}"
        d.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(d / f"{i:02d}.png")
    (root / "c0" / "zz_broken.png").write_bytes(b"not a png")
    return scan_folder(root)


def test_loader_reads_lazily_one_batch_at_a_time(data, monkeypatch):
    reads = []
    real = folder_module.load_image
    monkeypatch.setattr(folder_module, "load_image", lambda path, **kw: reads.append(path) or real(path, **kw))
    loader = folder_loader(data, list(range(len(data.paths))), PRE, batch_size=4, workers=0)
    assert reads == []  # making the loader reads nothing
    it = iter(loader)
    first = next(it)
    assert len(reads) == 4 and first.images.shape == (4, 3, 16, 16)  # one batch read, not the folder
    second = next(it)
    assert len(reads) == 8
    rest = list(it)
    assert len(reads) == len(data.paths) == N + 1
    assert sum(len(b.unreadable) for b in [first, second, *rest]) == 1  # the broken file: skipped and named


def test_batches_equal_the_images_read_at_once_shifted_per_global_position(data):
    order = list(range(len(data.paths)))
    offsets = random_offsets(len(order), 3, seed=0)
    batches = list(folder_loader(data, order, PRE, batch_size=3, workers=0, offsets=offsets))
    good = [p for p in order if not data.paths[p].name.startswith("zz")]
    x01 = torch.stack([load_image(data.paths[p], **PRE.image_kwargs()) for p in good])
    shifted, _ = shift_images(x01, 3, 0, offsets=offsets[good])
    assert torch.equal(torch.cat([b.images for b in batches]), normalize_batch(x01, PRE.mean, PRE.std))
    assert torch.equal(torch.cat([b.shifted for b in batches]), normalize_batch(shifted, PRE.mean, PRE.std))
    assert torch.cat([b.positions for b in batches]).tolist() == good


def test_shards_partition_and_keep_their_global_shifts(data):
    order = list(range(len(data.paths)))
    offsets = random_offsets(len(order), 2, seed=1)
    whole = {int(p): (x, s) for b in folder_loader(data, order, PRE, batch_size=4, workers=0, offsets=offsets)
             for p, x, s in zip(b.positions, b.images, b.shifted)}
    sharded = {}
    for rank in range(3):
        sampler = distributed.ShardSampler(len(order), rank, 3)
        assert list(sampler) == order[rank::3] and len(sampler) == len(order[rank::3])
        for b in folder_loader(data, order, PRE, batch_size=2, workers=0, offsets=offsets, sampler=sampler):
            for p, x, s in zip(b.positions, b.images, b.shifted):
                assert int(p) % 3 == rank and int(p) not in sharded
                sharded[int(p)] = (x, s)
    assert sharded.keys() == whole.keys()
    assert all(torch.equal(sharded[p][0], whole[p][0]) and torch.equal(sharded[p][1], whole[p][1]) for p in whole)


def test_worker_processes_give_the_same_batches(data):
    order = list(range(len(data.paths)))
    offsets = random_offsets(len(order), 2, seed=2)
    one = list(folder_loader(data, order, PRE, batch_size=3, workers=0, offsets=offsets))
    two = list(folder_loader(data, order, PRE, batch_size=3, workers=2, offsets=offsets))
    assert len(one) == len(two)
    for a, b in zip(one, two):
        assert torch.equal(a.images, b.images) and torch.equal(a.shifted, b.shifted) and a.unreadable == b.unreadable


def test_workers_restarted_per_segment_give_the_same_batches(data):
    """SegmentedLoader (workers bounded in memory by restarting them every segment): the same batches,
    in the same order, as one loader in the calling process, with segments that cut the folder 4 ways."""
    from undiscard.cli._data import SegmentedLoader, _Collate
    from undiscard.data.folder import FolderImages

    order = list(range(len(data.paths)))
    offsets = random_offsets(len(order), 2, seed=3)
    one = list(folder_loader(data, order, PRE, batch_size=3, workers=0, offsets=offsets))
    segmented = SegmentedLoader(FolderImages(data, order, PRE.image_kwargs()), order, 3, 2,
                                _Collate(PRE.mean, PRE.std, offsets), False, segment=3)
    assert segmented.segment == 3 and len(segmented) == len(one)
    two = list(segmented)
    assert len(two) == len(one)
    for a, b in zip(one, two):
        assert torch.equal(a.images, b.images) and torch.equal(a.shifted, b.shifted)
        assert torch.equal(a.positions, b.positions) and a.unreadable == b.unreadable
    assert isinstance(folder_loader(data, order, PRE, batch_size=3, workers=2), SegmentedLoader)
    assert not isinstance(folder_loader(data, order, PRE, batch_size=3, workers=2, segment=0), SegmentedLoader)


def test_streamed_evaluation_counts_what_the_in_memory_one_counts():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, 2, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5)).eval()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(9, 3, 12, 12, generator=g), torch.randint(0, 5, (9,), generator=g)
    xs = x.roll(1, -1)
    consumed = []

    def stream():
        for b in tensor_batches(x, y, xs, 4):
            consumed.append(len(b[1]))
            yield b

    model = undiscard.wrap(net, budget=1)
    streamed = evaluate_stream("m", model, stream(), [1, 3])
    assert consumed == [4, 4, 1]  # one pass over the stream
    in_memory = evaluate("m", model, x, y, [1, 3], shifted=xs, batch_size=4)
    assert [r.counts for r in streamed] == [r.counts for r in in_memory]
