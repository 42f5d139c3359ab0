"""Training batches for fine-tuning: seeded per-epoch shuffles, rank shards, vectorised negatives.

Every step is a few numpy gathers over the prepared arrays (no per-sample Python), and the order
and negatives of epoch ``e`` depend only on ``(seed, e)``, so a resumed run sees exactly the
batches an uninterrupted one would have.
"""

from __future__ import annotations

import numpy as np
import torch

from lsvcr.data.batch import CommRankBatch, RecBatch
from lsvcr.data.history import HistoryGatherer, _ragged_index
from lsvcr.data.store import PreparedDataset, SampleSet
from lsvcr.metrics.candidates import sample_video_candidates


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
    flat, row = _ragged_index(start, length)
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


class TrainBatches:
    """Iterates the training batches of one epoch for ``task`` (call :meth:`set_epoch` first).

    Args:
        rank, world: this process's share: each rank takes every ``world``-th sample of the
            epoch's permutation, truncated so all ranks run the same number of steps.
        neg_num: rec: ``-1`` = softmax over all videos (no candidates), else that many sampled
            negatives per sample; comm_rank: negatives per positive (one positive per sample,
            drawn each epoch among the sample's positives).
    """

    def __init__(self, ds: PreparedDataset, samples: SampleSet, gatherer: HistoryGatherer, task: str,
                 batch_size: int, neg_num: int, seed: int, rank: int = 0, world: int = 1):
        if task not in ("rec", "comm_rank"):
            raise ValueError(f"task must be rec or comm_rank, got {task!r}")
        if task == "comm_rank" and neg_num < 1:
            raise ValueError(f"comm_rank needs neg_num >= 1 negatives, got {neg_num}")
        self.ds, self.samples, self.gatherer, self.task = ds, samples, gatherer, task
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
            yield self._batch(rows, rng)

    def _batch(self, rows: np.ndarray, rng: np.random.Generator):
        history = self.gatherer(self.samples, rows)
        if self.task == "rec":
            cands = None
            if self.neg_num > 0:
                cands = torch.from_numpy(sample_video_candidates(
                    np.asarray(self.samples.target[rows]), self.ds.num_videos, self.neg_num,
                    int(rng.integers(1 << 62))))
            return RecBatch(history, cands)
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
