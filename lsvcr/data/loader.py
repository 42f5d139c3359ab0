"""Training batches for fine-tuning: seeded per-epoch shuffles, rank shards, vectorised negatives.

Every step is a few numpy gathers over the prepared arrays (no per-sample Python), and the order
and negatives of epoch ``e`` depend only on ``(seed, e)``, so a resumed run sees exactly the
batches an uninterrupted one would have.
"""

from __future__ import annotations

import numpy as np
import torch

from lsvcr.data.batch import CommRankBatch, HistoryBatch, RecBatch, SequenceBatch
from lsvcr.data.candidates import sample_video_candidates
from lsvcr.data.history import HistoryGatherer, hot_comments, ragged_index
from lsvcr.data.store import PreparedDataset, SampleSet
from lsvcr.errors import ConfigError


def sample_comment_negatives(
    rng: np.random.Generator,
    ds: PreparedDataset,
    videos: np.ndarray,
    pos_keys: np.ndarray,
    k: int,
) -> np.ndarray:
    """``[B, k]`` negative comments per sample: distinct comments of its video that are not among
    its positives; when the video has fewer than ``k`` of those, the rest are random comments of
    any video (never a positive).

    Args:
        videos: ``[B]`` the sample's video.
        pos_keys: sorted ``b * (C+1) + comment`` keys of every (batch row b, positive) pair.
    """
    n_c = ds.num_comments + 1
    start = ds.video_comment_ptr[videos]
    length = ds.video_comment_ptr[videos + 1] - start
    flat, row = ragged_index(start, length)
    comment = np.asarray(ds.video_comments[flat], dtype=np.int64)
    is_pos = np.isin(row * n_c + comment, pos_keys, assume_unique=False)
    # random keys, positives last: the k smallest per row are a uniform sample of the negatives
    key = rng.random(len(flat)) + is_pos
    order = np.lexsort((key, row))
    row, comment, is_pos = row[order], comment[order], is_pos[order]
    rank = np.arange(len(row)) - np.repeat(np.cumsum(length) - length, length)
    out = np.zeros((len(videos), k), np.int64)
    take = (rank < k) & ~is_pos
    out[row[take], rank[take]] = comment[take]
    # fill the holes with random comments of any video, redrawing the rare positive hit
    holes = np.flatnonzero(out.ravel() == 0)
    for _ in range(8):
        if len(holes) == 0:
            break
        draw = rng.integers(1, n_c, len(holes))
        bad = np.isin((holes // k) * n_c + draw, pos_keys)
        out.ravel()[holes[~bad]] = draw[~bad]
        holes = holes[bad]
    return out


class SampleBatches:
    """Iterates the training batches of one epoch, one sample per row (call :meth:`set_epoch`
    first); :class:`RecBatches` and :class:`CommRankBatches` say what a batch holds.

    Args:
        rank, world: this process's share: each rank takes every ``world``-th sample of the
            epoch's permutation, truncated so all ranks run the same number of steps.
    """

    def __init__(self, ds: PreparedDataset, samples: SampleSet, gatherer: HistoryGatherer, batch_size: int,
                 neg_num: int, seed: int, rank: int = 0, world: int = 1):
        self.ds, self.samples, self.gatherer = ds, samples, gatherer
        self.batch_size, self.neg_num, self.seed = batch_size, neg_num, seed
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.samples))
        per_rank = len(perm) // self.world
        return perm[self.rank::self.world][:per_rank]

    def __len__(self) -> int:
        return -(-(len(self.samples) // self.world) // self.batch_size)

    def __iter__(self):
        order = self._order()
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, 1])
        for lo in range(0, len(order), self.batch_size):
            rows = order[lo: lo + self.batch_size]
            yield self.batch(rows, self.gatherer(self.samples, rows), rng)

    def batch(self, rows: np.ndarray, history: HistoryBatch, rng: np.random.Generator):
        raise NotImplementedError


class RecBatches(SampleBatches):
    """rec training batches (:class:`RecBatch`). ``neg_num``: ``-1`` = softmax over all videos
    (no candidates), else that many sampled negatives per sample."""

    def batch(self, rows: np.ndarray, history: HistoryBatch, rng: np.random.Generator) -> RecBatch:
        cands = None
        if self.neg_num > 0:
            cands = torch.from_numpy(sample_video_candidates(
                np.asarray(self.samples.target[rows]), self.ds.num_videos, self.neg_num, int(rng.integers(1 << 62))))
        return RecBatch(history, cands)


class CommRankBatches(SampleBatches):
    """comm_rank training batches (:class:`CommRankBatch`): one positive per sample, drawn each
    epoch among the sample's positives, and ``neg_num >= 1`` negatives per positive."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.neg_num < 1:
            raise ValueError(f"comm_rank needs neg_num >= 1 negatives, got {self.neg_num}")

    def batch(self, rows: np.ndarray, history: HistoryBatch, rng: np.random.Generator) -> CommRankBatch:
        sub = self.samples.subset(rows)
        n_pos = np.diff(sub.pos_ptr)
        pick = sub.pos_ptr[:-1] + (rng.random(len(rows)) * n_pos).astype(np.int64)
        local = np.repeat(np.arange(len(rows)), n_pos)
        pos_keys = np.sort(local * (self.ds.num_comments + 1) + sub.pos)
        neg = sample_comment_negatives(rng, self.ds, sub.target.astype(np.int64), pos_keys, self.neg_num)
        cands = np.concatenate([sub.pos[pick][:, None].astype(np.int64), neg], axis=1)
        labels = np.zeros(cands.shape, bool)
        labels[:, 0] = True
        return CommRankBatch(history, torch.from_numpy(cands), torch.from_numpy(labels))


class SequenceBatches:
    """Training batches of whole-sequence windows (``finetune.train_on=sequences``): every video
    target of the ``rec`` training samples is a label exactly once, predicted in one causal pass
    over a window of the user's sequence (SASRec's own training; RecBole instead makes one sample
    per prefix, which is what :class:`RecBatches` does).

    A user's *timeline* is the video history before their first training target (its last
    ``max_len`` videos) followed by their training targets in order. Windows of up to ``max_len``
    inputs end at the timeline's end, then every ``stride`` positions earlier; a window trains the
    last ``stride`` of its labels (all of them for the earliest one), so with ``stride < max_len``
    each label sees at least ``max_len - stride`` videos of context. A target with no earlier video
    at all (only a comment history) cannot be predicted from videos and is left out (counted in
    :attr:`dropped`). Context is positional: a target's earlier same-timestamp videos are in it,
    as with ``data.history_ties=sorted_order`` (which makes the two trainings see the same inputs).

    Args:
        samples: the ``rec`` training samples (grouped by user, in time order, as prepared).
        max_len: window length (``data.max_phis_len``).
        stride: positions between window ends, ``1..max_len`` (None = ``max_len``: no overlap).
        batch_size: windows per batch; ``rank``/``world``: as :class:`SampleBatches`.
    """

    def __init__(self, ds: PreparedDataset, samples: SampleSet, max_len: int, stride: int | None,
                 batch_size: int, seed: int, rank: int = 0, world: int = 1):
        stride = max_len if stride is None else int(stride)
        if not 1 <= stride <= max_len:
            raise ConfigError(f"finetune.sequence_stride={stride}: expected 1..{max_len} (data.max_phis_len)")
        self.max_len, self.stride = max_len, stride
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.epoch = 0
        user = np.asarray(samples.user, np.int64)
        if len(user) and np.any(np.diff(user) < 0):
            raise ValueError("samples must be grouped by user in time order (as stage=prepare writes them)")
        starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]]) if len(user) else np.zeros(0, np.int64)
        sizes = np.diff(np.r_[starts, len(user)])
        pre_end = np.asarray(samples.vi_end, np.int64)[starts]
        pre_len = np.minimum(pre_end - np.asarray(ds.vi_ptr)[user[starts]], max_len)
        m = pre_len + sizes  # timeline length per user
        offset = np.cumsum(m) - m
        timeline = np.zeros(int(m.sum()), np.int64)
        src, _ = ragged_index(pre_end - pre_len, pre_len)
        timeline[ragged_index(offset, pre_len)[0]] = np.asarray(ds.vi_video)[src]
        timeline[ragged_index(offset + pre_len, sizes)[0]] = np.asarray(samples.target, np.int64)
        self.timeline = timeline
        self.hot_comment = hot_comments(ds)
        lo = np.maximum(pre_len, 1)  # first label with an input before it
        self.dropped = int((pre_len == 0).sum())
        count = np.where(m > lo, -(-(m - lo) // stride), 0)
        g = np.repeat(np.arange(len(m)), count)
        k = np.arange(len(g)) - np.repeat(np.cumsum(count) - count, count)
        end = m[g] - k * stride  # exclusive label end, local to the timeline
        start = np.maximum(end - max_len, 1)  # first label
        self.w_start = offset[g] + start - 1  # global index of the first input
        self.w_len = end - start
        self.w_loss = np.maximum(end - stride, lo[g]) - start  # first trained label, local to the window
        self.num_targets = int((self.w_len - self.w_loss).sum())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-(len(self.w_start) // self.world) // self.batch_size)

    def order(self) -> np.ndarray:
        """This rank's windows of the epoch, in order (a shard of a ``(seed, epoch)`` permutation)."""
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.w_start))
        per_rank = len(perm) // self.world
        return perm[self.rank::self.world][:per_rank]

    def __iter__(self):
        order = self.order()
        for lo in range(0, len(order), self.batch_size):
            yield self.batch(order[lo: lo + self.batch_size])

    def batch(self, rows: np.ndarray) -> SequenceBatch:
        """The windows ``rows`` as a :class:`SequenceBatch`."""
        length = self.w_len[rows]
        width = max(int(length.max(initial=0)), 1)
        flat, r = ragged_index(self.w_start[rows], length)
        col = flat - np.repeat(self.w_start[rows], length)
        ids = np.zeros((len(rows), width), np.int64)
        labels = np.zeros((len(rows), width), np.int64)
        ids[r, col] = self.timeline[flat]
        trained = col >= self.w_loss[rows][r]
        labels[r[trained], col[trained]] = self.timeline[flat[trained] + 1]
        return SequenceBatch(torch.from_numpy(ids), torch.from_numpy(labels), torch.from_numpy(self.hot_comment[ids]))
