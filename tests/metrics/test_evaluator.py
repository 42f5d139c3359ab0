"""End-to-end evaluation: a ground-truth oracle must beat popularity, popularity must beat random,
and results must not depend on batch size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsvcr.data.history import HistoryGatherer
from lsvcr.metrics.evaluator import EvalConfig, Evaluator
from lsvcr.models.baseline import Baseline
from lsvcr.models.popularity import MostLiked, Popularity
from lsvcr.models.random import RandomScorer
from lsvcr.tasks import task_named


class Oracle(Baseline):
    """Scores with the synthetic world's true generative probabilities, given the latent state the
    world generated the target from (the user's latest genuine view and the time, per test sample;
    one test sample per user under leave-one-out)."""

    def __init__(self, truth, num_videos, split="test"):
        self.truth, self.num_videos, self.split = truth, num_videos, split

    def fit(self, ds):
        samples = ds.samples("rec", self.split)
        users, self.prev, self.times = self.truth.sample_context(ds, samples)
        self.row = np.full(ds.num_users + 1, -1)
        self.row[np.asarray(samples.user)] = np.arange(len(samples))
        self.users = users
        return self

    def score_videos(self, h, candidates):
        i = self.row[h.user.numpy()]
        assert (i >= 0).all()
        if candidates is None:
            candidates = torch.arange(self.num_videos + 1).expand(len(i), -1)
        c = candidates.clamp(min=1).numpy() - 1
        p = self.truth.next_video_prob(self.users[i], self.prev[i], c, self.times[i])
        return torch.from_numpy(p).float()

    def score_comments(self, h, candidates):
        u = np.broadcast_to(h.user.numpy()[:, None] - 1, candidates.shape)
        return torch.from_numpy(self.truth.comment_logit(u, candidates.clamp(min=1).numpy() - 1)).float()


def _evaluate(ds, scorer, task, batch_size=256):
    ev = Evaluator(ds, HistoryGatherer(ds, 50, 50), task_named(task), EvalConfig(batch_size=batch_size, progress=False))
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


class _ColdFirst(Baseline):
    """Ranks the target first when it is cold (at most ``cut`` training interactions) and last
    when it is warm: cold-slice metrics are 1, warm-slice metrics 0, by construction."""

    def __init__(self, counts: np.ndarray, cut: int):
        self.cold = torch.from_numpy(counts <= cut)
        self.num_videos = len(counts) - 1

    def fit(self, ds):
        return self

    def score_videos(self, h, candidates):
        if candidates is None:
            candidates = torch.arange(len(self.cold)).expand(len(h.target), -1)
        is_target = (candidates == h.target[:, None]).float()
        sign = torch.where(self.cold[h.target], 1.0, -1.0)[:, None]
        return sign * is_target


@pytest.mark.parametrize("cut", [0, 5])
def test_cold_and_warm_slices(small_world, cut):
    ds, _ = small_world
    counts = np.bincount(np.asarray(ds.samples("rec", "train").target), minlength=ds.num_videos + 1)
    test = np.asarray(ds.samples("rec", "test").target)
    n_cold = int((counts[test] <= cut).sum())
    assert 0 < n_cold < len(test)  # both slices have samples in this world
    ev = Evaluator(ds, HistoryGatherer(ds, 50, 50), task_named("rec"),
                   EvalConfig(batch_size=64, progress=False, cold_max_train_interactions=cut))
    res = ev.evaluate(_ColdFirst(counts, cut), "test")
    assert set(res) == {"sampled", "full", "sampled/cold", "sampled/warm", "full/cold", "full/warm"}
    for protocol in ("sampled", "full"):
        cold, warm, every = res[f"{protocol}/cold"], res[f"{protocol}/warm"], res[protocol]
        assert cold["count"] == n_cold and warm["count"] == len(test) - n_cold
        assert cold["ndcg@10"] == 1.0 and cold["recall@1"] == 1.0 and cold["mrr@5"] == 1.0
        assert warm["recall@10"] == 0.0 and warm["ndcg@10"] == 0.0
        assert every["recall@1"] == pytest.approx(n_cold / len(test))
    off = Evaluator(ds, HistoryGatherer(ds, 50, 50), task_named("rec"),
                    EvalConfig(progress=False, cold_max_train_interactions=None)).evaluate(_ColdFirst(counts, cut), "test")
    assert set(off) == {"sampled", "full"} and off["full"] == res["full"]


def test_a_baselines_full_ranking_is_its_scores_ranked_in_row_chunks(small_world, monkeypatch):
    """Baseline.rank_videos (the full protocol's) equals ranks_single over every video's scores,
    whatever the chunking (here 3 rows a chunk, comment lists cut by slot)."""
    from lsvcr.metrics.ranking import ranks_single
    from lsvcr.models import baseline

    ds, _ = small_world
    h = HistoryGatherer(ds, 50, 50)(ds.samples("rec", "test"), np.arange(10))
    pop = Popularity().fit(ds)
    scores = pop.score_videos(h, None)
    valid = torch.ones_like(scores, dtype=torch.bool)
    valid[:, 0] = False
    whole = pop.rank_videos(h)
    monkeypatch.setattr(baseline, "FULL_CHUNK_ELEMS", 3 * (ds.num_videos + 1))
    assert torch.equal(pop.rank_videos(h), whole) and torch.equal(whole, ranks_single(scores, h.target, valid))
    parts = [h.rows(lo, lo + 3) for lo in range(0, 10, 3)]
    assert torch.equal(torch.cat([p.c_comment for p in parts]), h.c_comment)
    assert [len(p.target) for p in parts] == [3, 3, 3, 1] and h.rows(0, 10) is h
