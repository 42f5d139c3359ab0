"""Training batches: correct negatives, determinism per (seed, epoch), rank shards."""

from __future__ import annotations

import numpy as np

from lsvcr.data.batch import CommRankBatch, RecBatch
from lsvcr.data.history import HistoryGatherer
from lsvcr.data.loader import CommRankBatches, RecBatches, sample_comment_negatives


def _batches(ds, task, neg_num, **kw):
    kind = {"rec": RecBatches, "comm_rank": CommRankBatches}[task]
    return kind(ds, ds.samples(task, "train"), HistoryGatherer(ds, 50, 50), 64, neg_num, seed=3, **kw)


def test_comm_negatives_are_same_video_non_positives(small_world):
    ds, _ = small_world
    loader = _batches(ds, "comm_rank", 5)
    samples = ds.samples("comm_rank", "train")
    order = loader._order()
    seen = 0
    for i, batch in enumerate(loader):
        assert isinstance(batch, CommRankBatch) and batch.candidates.shape[1] == 6
        rows = order[i * 64:(i + 1) * 64]
        for b, row in enumerate(rows):
            pos = set(samples.positives(row).tolist())
            video_comments = set(ds.comments_of(int(samples.target[row])).tolist())
            cands = batch.candidates[b].tolist()
            assert cands[0] in pos and batch.labels[b].tolist() == [True] + [False] * 5
            negs = cands[1:]
            assert not pos & set(negs) and 0 not in negs
            available = video_comments - pos
            if len(available) >= 5:  # enough: all from the video, distinct
                assert set(negs) <= available and len(set(negs)) == 5
            else:  # all of the video's negatives are used, the rest are random comments
                assert available <= set(negs)
            seen += 1
    assert seen == len(order)


def test_rec_sampled_negatives_exclude_target(small_world):
    ds, _ = small_world
    for batch in _batches(ds, "rec", 9):
        assert isinstance(batch, RecBatch) and batch.candidates.shape[1] == 10
        assert (batch.candidates[:, 0] == batch.history.target).all()
        assert (batch.candidates[:, 1:] != batch.history.target[:, None]).all()
    assert all(b.candidates is None for b in _batches(ds, "rec", -1))


def test_epochs_are_seeded_and_ranks_disjoint(small_world):
    ds, _ = small_world
    a, b = _batches(ds, "comm_rank", 3), _batches(ds, "comm_rank", 3)
    a.set_epoch(2), b.set_epoch(2)
    for x, y in zip(a, b):
        assert (x.candidates == y.candidates).all() and (x.history.v_video == y.history.v_video).all()
    b.set_epoch(3)
    assert not np.array_equal(a._order(), b._order())
    shards = [_batches(ds, "rec", -1, rank=r, world=3) for r in range(3)]
    orders = [s._order() for s in shards]
    assert len({len(o) for o in orders}) == 1  # same number of steps on every rank
    assert len(np.unique(np.concatenate(orders))) == sum(len(o) for o in orders)


def test_negatives_fill_from_other_videos_when_too_few(small_world):
    ds, _ = small_world
    counts = np.diff(ds.video_comment_ptr)
    v = int(np.flatnonzero(counts == 1)[0]) if (counts == 1).any() else int(np.flatnonzero(counts == 0)[1])
    rng = np.random.default_rng(0)
    pos = ds.comments_of(v)[:1].astype(np.int64)
    keys = np.sort(0 * (ds.num_comments + 1) + pos)
    neg = sample_comment_negatives(rng, ds, np.array([v]), keys, 7)
    assert neg.shape == (1, 7) and (neg > 0).all() and not np.isin(neg, pos).any()
