"""Fitted baselines: scorers that :meth:`Baseline.fit` counts on the training split instead of
training (popularity, most-liked, random). ``stage=evaluate model/sr=<baseline>`` fits and scores
one; ``stage=finetune`` refuses one (it has no weights). The trained kind is
:class:`lsvcr.models.sr.layers.SequentialRecommender`, scored through
:class:`lsvcr.models.recommender.Recommender`; both answer the evaluator's scorer interface
(``score_videos``, ``rank_videos``, ``score_comments``).
"""

from __future__ import annotations

import torch

from lsvcr.data.batch import HistoryBatch
from lsvcr.data.store import PreparedDataset
from lsvcr.utils.ranks import ranks_single

# cap on the scores one full-ranking chunk materialises ([rows, V+1] floats)
FULL_CHUNK_ELEMS = 1 << 25


class Baseline:
    """A scorer fitted on the training split: subclasses set ``name`` and provide :meth:`fit`
    (which sets :attr:`num_videos`), ``score_videos`` and ``score_comments``."""

    name: str
    num_videos: int

    def fit(self, ds: PreparedDataset) -> "Baseline":
        raise NotImplementedError

    def score_videos(self, history: HistoryBatch, candidates: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def score_comments(self, history: HistoryBatch, candidates: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def rank_videos(self, history: HistoryBatch) -> torch.Tensor:
        """``[B]`` full-ranking rank of each row's target among every video (row 0, padding,
        excluded): ``score_videos(history, None)`` in row chunks of at most
        :data:`FULL_CHUNK_ELEMS` scores, ranked pessimistically."""
        step, parts = max(1, FULL_CHUNK_ELEMS // (self.num_videos + 1)), []
        for lo in range(0, len(history.target), step):
            sub = history.rows(lo, lo + step)
            scores = self.score_videos(sub, None).float()
            valid = torch.ones_like(scores, dtype=torch.bool)
            valid[:, 0] = False
            parts.append(ranks_single(scores, sub.target, valid))
        return torch.cat(parts) if parts else history.target.new_zeros(0)
