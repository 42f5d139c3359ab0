"""Random scores: the floor every model must beat."""

from __future__ import annotations

import torch

from lsvcr.data.batch import HistoryBatch
from lsvcr.data.store import PreparedDataset
from lsvcr.models.baseline import Baseline


class RandomScorer(Baseline):
    """I.i.d. uniform scores from a seeded generator (same seed -> same scores)."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, ds: PreparedDataset) -> "RandomScorer":
        self.num_videos = ds.num_videos
        self.generator = torch.Generator().manual_seed(self.seed)
        return self

    def score_videos(self, history: HistoryBatch, candidates: torch.Tensor | None) -> torch.Tensor:
        shape = (len(history.target), self.num_videos + 1) if candidates is None else tuple(candidates.shape)
        return torch.rand(shape, generator=self.generator).to(history.target.device)

    def score_comments(self, history: HistoryBatch, candidates: torch.Tensor) -> torch.Tensor:
        return torch.rand(tuple(candidates.shape), generator=self.generator).to(candidates.device)
