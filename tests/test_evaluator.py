"""End-to-end evaluation: a ground-truth oracle must beat popularity, popularity must beat random,
and results must not depend on batch size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsvcr.data.history import HistoryGatherer
from lsvcr.metrics.evaluator import EvalConfig, Evaluator
from lsvcr.models.popularity import MostLiked, Popularity
from lsvcr.models.random import RandomScorer


class Oracle:
    """Scores with the synthetic world's true generative probabilities (indices are raw id - 1)."""

    def __init__(self, truth, num_videos):
        self.truth, self.num_videos = truth, num_videos

    def fit(self, ds):
        return self

    def score_videos(self, h, candidates):
        last = h.v_video.gather(1, (h.v_mask.sum(1, keepdim=True) - 1).clamp(min=0)).squeeze(1)
        if candidates is None:
            candidates = torch.arange(self.num_videos + 1).expand(len(last), -1)
        c = candidates.clamp(min=1).numpy() - 1
        p = self.truth.next_video_prob(h.user.numpy() - 1, last.clamp(min=1).numpy() - 1, c)
        return torch.from_numpy(p).float()

    def score_comments(self, h, candidates):
        u = np.broadcast_to(h.user.numpy()[:, None] - 1, candidates.shape)
        return torch.from_numpy(self.truth.comment_logit(u, candidates.clamp(min=1).numpy() - 1)).float()


def _evaluate(ds, scorer, task, batch_size=256):
    ev = Evaluator(ds, HistoryGatherer(ds, 50, 50), task, EvalConfig(batch_size=batch_size, progress=False))
    return ev.evaluate(scorer.fit(ds), "test")


def test_oracle_beats_popularity_beats_random_on_rec(small_world):
    ds, truth = small_world
    oracle = _evaluate(ds, Oracle(truth, ds.num_videos), "rec")
    pop = _evaluate(ds, Popularity(), "rec")
    rnd = _evaluate(ds, RandomScorer(0), "rec")
    for protocol in ("sampled", "full"):
        assert oracle[protocol]["ndcg@10"] > 2 * pop[protocol]["ndcg@10"], (oracle, pop)
        assert pop[protocol]["ndcg@10"] > rnd[protocol]["ndcg@10"]
    assert oracle["full"]["count"] == len(ds.samples("rec", "test"))


def test_oracle_beats_most_liked_on_comments(small_world):
    ds, truth = small_world
    oracle = _evaluate(ds, Oracle(truth, ds.num_videos), "comm_rank")
    liked = _evaluate(ds, MostLiked(), "comm_rank")
    rnd = _evaluate(ds, RandomScorer(0), "comm_rank")
    assert oracle["full"]["ndcg@10"] > liked["full"]["ndcg@10"] + 0.05
    assert liked["full"]["ndcg@10"] > rnd["full"]["ndcg@10"]


@pytest.mark.parametrize("task", ["rec", "comm_rank"])
def test_batch_size_does_not_change_results(small_world, task):
    ds, _ = small_world
    a = _evaluate(ds, Popularity(), task, batch_size=1000)
    b = _evaluate(ds, Popularity(), task, batch_size=7)
    for protocol in a:
        for k in a[protocol]:
            assert a[protocol][k] == pytest.approx(b[protocol][k], abs=1e-12), (protocol, k)


def test_fused_full_ranking_matches_scoring_every_video(small_world):
    """Recommender.rank_videos (used by the full protocol) ranks exactly as score_videos + ranks_single."""
    from lsvcr.metrics.ranking import ranks_single
    from lsvcr.models.recommender import Recommender
    from lsvcr.models.sr.lsvcr import LSVCR

    ds, _ = small_world
    torch.manual_seed(0)
    model = Recommender(LSVCR(ds.num_videos, llm_emb_size=16), torch.randn(ds.num_videos + 1, 16),
                        torch.randn(ds.num_comments + 1, 16)).eval()
    h = HistoryGatherer(ds, 50, 50)(ds.samples("rec", "test"), np.arange(64))
    with torch.no_grad():
        scores = model.score_videos(h, None)
        valid = torch.ones_like(scores, dtype=torch.bool)
        valid[:, 0] = False
        assert torch.equal(model.rank_videos(h), ranks_single(scores, h.target, valid))
