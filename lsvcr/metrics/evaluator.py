"""Evaluate any scorer on a split under the sampled and the full-ranking protocol.

A *scorer* (a fitted :class:`~lsvcr.models.baseline.Baseline` or a fine-tuned
:class:`~lsvcr.models.recommender.Recommender`) answers three questions::

    score_videos(history: HistoryBatch, candidates: LongTensor[B, K] | None) -> Tensor[B, K]
        (candidates None = every video: returns [B, V+1], column 0 = padding, ignored)
    rank_videos(history: HistoryBatch) -> LongTensor[B]
        (the full-ranking rank of each target among every video: the full protocol's)
    score_comments(history: HistoryBatch, candidates: LongTensor[B, K]) -> Tensor[B, K]

What is ranked is the task's: the evaluator takes a task object (:mod:`lsvcr.tasks`) whose
``ranking`` (:class:`VideoRanking`, :class:`CommentRanking`) draws the candidates and ranks them.

Candidates of the sampled protocol are a pure function of (seed, split, sample row), so every
evaluation of every run, whatever its batch size or process layout, sees the same ones. With several processes each rank takes
a contiguous shard of the samples and the metric *sums* are all-reduced.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from lsvcr.data.batch import HistoryBatch
from lsvcr.data.candidates import sample_comment_candidates, sample_video_candidates
from lsvcr.data.history import HistoryGatherer
from lsvcr.data.store import PreparedDataset, SampleSet
from lsvcr.metrics.ranking import RankingMetrics, ranks_multi, ranks_single
from lsvcr.utils.loggers import is_rank_zero

log = logging.getLogger(__name__)

PROTOCOLS = ("sampled", "full")


class Scorer(Protocol):
    def score_videos(self, history: HistoryBatch, candidates: torch.Tensor | None) -> torch.Tensor: ...

    def rank_videos(self, history: HistoryBatch) -> torch.Tensor: ...

    def score_comments(self, history: HistoryBatch, candidates: torch.Tensor) -> torch.Tensor: ...


class Ranking(Protocol):
    """What one task's evaluation ranks (:class:`VideoRanking`, :class:`CommentRanking`)."""

    def candidates(self, ds: PreparedDataset, samples: SampleSet, idx: np.ndarray, protocol: str,
                   cfg: "EvalConfig", seed: int) -> tuple[np.ndarray | None, np.ndarray | None]: ...

    def ranks(self, scorer: Scorer, history: HistoryBatch, cands: np.ndarray | None, labels: np.ndarray | None,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]: ...


class EvalTask(Protocol):
    """The evaluator's view of a task (:mod:`lsvcr.tasks`): its samples' name and its ranking."""

    name: str
    ranking: Ranking


@dataclass
class EvalConfig:
    protocols: tuple[str, ...] = PROTOCOLS
    rec_sampled_negatives: int = 99
    comm_max_candidates: int = 100
    seed: int = 2024
    batch_size: int = 1024
    recall_ks: tuple[int, ...] = (1, 5, 10)
    ndcg_ks: tuple[int, ...] = (5, 10)
    mrr_ks: tuple[int, ...] = (5, 10)
    progress: bool = True
    # cold targets: videos with at most this many training interactions (None = no cold/warm slices)
    cold_max_train_interactions: int | None = 5


def _shard(n: int) -> np.ndarray:
    """This rank's contiguous share of ``n`` rows (no padding, so nothing is counted twice)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        return np.array_split(np.arange(n), world)[rank]
    return np.arange(n)


class Evaluator:
    """Computes ranking metrics of a scorer for one task on a prepared dataset."""

    def __init__(self, ds: PreparedDataset, gatherer: HistoryGatherer, task: EvalTask, cfg: EvalConfig, device="cpu"):
        self.ds, self.gatherer, self.task, self.cfg, self.device = ds, gatherer, task, cfg, torch.device(device)

    def _metrics(self) -> RankingMetrics:
        return RankingMetrics(ks=self.cfg.recall_ks, ndcg_ks=self.cfg.ndcg_ks, mrr_ks=self.cfg.mrr_ks)

    def train_interactions(self) -> np.ndarray:
        """``[V+1]`` training interactions of each video: the rec training samples it is the target
        of (a training-split view with a non-empty history; what the popularity baseline counts)."""
        if not hasattr(self, "_train_counts"):
            target = np.asarray(self.ds.samples("rec", "train").target)
            self._train_counts = np.bincount(target, minlength=self.ds.num_videos + 1)
        return self._train_counts

    def _slices(self, samples: SampleSet, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Row masks of the slices ``cold`` (target video with at most
        ``cold_max_train_interactions`` training interactions) and ``warm`` (the rest)."""
        if self.cfg.cold_max_train_interactions is None:
            return {}
        cold = self.train_interactions()[np.asarray(samples.target[idx])] <= self.cfg.cold_max_train_interactions
        cold = torch.from_numpy(cold).to(self.device)
        return {"cold": cold, "warm": ~cold}

    @torch.inference_mode()
    def evaluate(self, scorer: Scorer, split: str) -> dict[str, dict[str, float]]:
        """``{protocol: {metric: value, "count": n}}`` over the whole split (all ranks), plus the
        same on the cold and warm targets as ``"<protocol>/cold"`` and ``"<protocol>/warm"`` (a
        slice without samples on any rank is left out)."""
        samples = self.ds.samples(self.task.name, split)
        ranking = self.task.ranking
        # candidates of the sampled protocol are drawn from (seed, split, row): any batching gives the same ones
        seed = self.cfg.seed + (0 if split == "val" else 1)
        rows = _shard(len(samples))
        out = {}
        slice_names = [] if self.cfg.cold_max_train_interactions is None else ["cold", "warm"]
        for protocol in self.cfg.protocols:
            metrics = {name: self._metrics() for name in ["", *slice_names]}
            batches = range(0, len(rows), self.cfg.batch_size)
            for lo in tqdm(batches, desc=f"eval {self.task.name}/{split}/{protocol}", disable=not self.cfg.progress or not is_rank_zero(),
                           leave=False):
                idx = rows[lo: lo + self.cfg.batch_size]
                history = self.gatherer(samples, idx).to(self.device)
                cands, labels = ranking.candidates(self.ds, samples, idx, protocol, self.cfg, seed)
                ranks, num_pos = ranking.ranks(scorer, history, cands, labels, self.device)
                metrics[""].update(ranks, num_pos)
                for name, mask in self._slices(samples, idx).items():
                    metrics[name].update(ranks[mask], num_pos[mask])
            for name, m in metrics.items():
                computed = m.synced().compute()  # every rank syncs every slice, so all agree on keys
                if not name or computed["count"] > 0:
                    out[protocol + (f"/{name}" if name else "")] = computed
        return out



class VideoRanking:
    """rec: the target video among ``rec_sampled_negatives`` sampled videos, or among every video
    (full protocol; one rank per row)."""

    def candidates(self, ds: PreparedDataset, samples: SampleSet, idx: np.ndarray, protocol: str,
                   cfg: EvalConfig, seed: int) -> tuple[np.ndarray | None, None]:
        if protocol == "full":
            return None, None
        return sample_video_candidates(np.asarray(samples.target[idx]), ds.num_videos, cfg.rec_sampled_negatives,
                                       seed, rows=idx), None

    def ranks(self, scorer: Scorer, history: HistoryBatch, cands: np.ndarray | None, labels: None,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if cands is not None:
            c = torch.from_numpy(cands).to(device)
            scores = scorer.score_videos(history, c).float()
            ranks = ranks_single(scores, torch.zeros(len(c), dtype=torch.long, device=device), c > 0)
        else:
            ranks = scorer.rank_videos(history)
        return ranks[:, None], torch.ones_like(ranks)


class CommentRanking:
    """comm_rank: the watched video's comments (up to ``comm_max_candidates`` of them in the
    sampled protocol, all in the full one), with every positive of the sample."""

    def candidates(self, ds: PreparedDataset, samples: SampleSet, idx: np.ndarray, protocol: str,
                   cfg: EvalConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
        sub = samples.subset(idx)
        return sample_comment_candidates(
            sub.target, sub.pos_ptr, sub.pos, np.asarray(ds.video_comment_ptr), np.asarray(ds.video_comments),
            cfg.comm_max_candidates if protocol == "sampled" else None, seed, rows=idx)

    def ranks(self, scorer: Scorer, history: HistoryBatch, cands: np.ndarray, labels: np.ndarray,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        c, lab = torch.from_numpy(cands).to(device), torch.from_numpy(labels).to(device)
        scores = scorer.score_comments(history, c).float()
        return ranks_multi(scores, lab, c > 0), lab.sum(1)


def format_table(rows: dict[str, dict[str, float]], keys: list[str] | None = None) -> str:
    """A plain-text table: one row per ``rows`` entry, one column per metric."""
    if not rows:
        return "(no results)"
    keys = keys or [k for k in next(iter(rows.values())) if k not in ("count", "skipped")] + ["count"]
    name_w = max(len(n) for n in rows) + 2
    head = "".ljust(name_w) + "".join(k.rjust(11) for k in keys)
    lines = [head, "-" * len(head)]
    for name, m in rows.items():
        cells = "".join((f"{m[k]:.4f}" if k != "count" else f"{int(m[k])}").rjust(11) if k in m else "-".rjust(11)
                        for k in keys)
        lines.append(name.ljust(name_w) + cells)
    return "\n".join(lines)
