"""Popularity baselines: score by how often an item was interacted with in the training split."""

from __future__ import annotations

import numpy as np
import torch

from lsvcr.data.batch import HistoryBatch
from lsvcr.data.store import PreparedDataset
from lsvcr.models.baseline import Baseline


class Popularity(Baseline):
    """Videos by their number of training-sample targets; comments by their number of training
    interactions (likes/replies). Ties are ranked pessimistically by the evaluator, so the many
    never-seen items are not rewarded."""

    name = "popularity"

    def fit(self, ds: PreparedDataset) -> "Popularity":
        self.num_videos = ds.num_videos
        rec = ds.samples("rec", "train")
        self.video_score = torch.from_numpy(
            np.bincount(np.asarray(rec.target), minlength=ds.num_videos + 1).astype(np.float32))
        self.comment_score = torch.from_numpy(self._comment_counts(ds))
        return self

    def _comment_counts(self, ds: PreparedDataset) -> np.ndarray:
        cr = ds.samples("comm_rank", "train")
        return np.bincount(np.asarray(cr.pos), minlength=ds.num_comments + 1).astype(np.float32)

    def score_videos(self, history: HistoryBatch, candidates: torch.Tensor | None) -> torch.Tensor:
        if candidates is None:
            return self.video_score.to(history.target.device).expand(len(history.target), -1)
        return self.video_score.to(candidates.device)[candidates]

    def score_comments(self, history: HistoryBatch, candidates: torch.Tensor) -> torch.Tensor:
        return self.comment_score.to(candidates.device)[candidates]


class MostLiked(Popularity):
    """Comments by their like count in the comment table ("most-liked comment first"), which is
    what a platform's default comment order shows."""

    name = "most_liked"

    def _comment_counts(self, ds: PreparedDataset) -> np.ndarray:
        return np.asarray(ds.comment_likes, dtype=np.float32)
