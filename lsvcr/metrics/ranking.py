"""Ranks of the positives among scored candidates, and top-k ranking metrics accumulated as sums.

Ties are broken pessimistically: a negative whose score equals a positive's is ranked above it, so a
model that scores every candidate alike is ranked last, never first. NaN scores are pessimistic too:
a NaN negative is above every positive and a NaN positive is below every negative.

Metrics are kept as sums plus a sample count (:meth:`RankingMetrics.state`), so partial results from
several processes or shards combine by summing (:func:`reduce_state`, :meth:`RankingMetrics.merge`);
averaging per-process means would weight processes with fewer samples too heavily.

:func:`ranks_single` and :func:`full_ranks` (one target per row) are defined in
:mod:`lsvcr.utils.ranks`, below the models, which use them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist

# the rank kernels live below every layer (the trained wrapper ranks every video with full_ranks);
# they are this module's ranking functions as much as ranks_multi is
from lsvcr.utils.ranks import full_ranks, ranks_single  # noqa: F401

# Rank given to columns that are not positives; larger than any k, so it never counts.
NO_RANK = torch.iinfo(torch.int64).max


def ranks_multi(scores: torch.Tensor, positives: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """1-based rank of every positive column, pessimistic against negatives.

    The ranks are positions in one total order of the valid candidates: score descending; on equal
    scores negatives first, then positives by column. Positives therefore never push each other down
    beyond the slots they occupy, and the ranks of a row are distinct, which keeps NDCG <= 1 and
    Recall@k honest when tied positives straddle the cut-off. The best positive's rank equals
    :func:`ranks_single` for it.

    Args:
        scores: ``[B, C]`` candidate scores.
        positives: ``[B, C]`` bool, True at positive columns (must be valid).
        valid: ``[B, C]`` bool, False at padding columns; None = all valid.

    Returns:
        ``[B, C]`` int64: the rank at positive columns, :data:`NO_RANK` elsewhere.
    """
    if scores.dim() != 2 or positives.shape != scores.shape:
        raise ValueError(
            f"scores and positives must both be [B, C]; got {tuple(scores.shape)}, {tuple(positives.shape)}"
        )
    positives = positives.bool()
    if valid is None:
        valid = torch.ones_like(positives)
    elif valid.shape != scores.shape:
        raise ValueError(f"valid must have the shape of scores {tuple(scores.shape)}; got {tuple(valid.shape)}")
    else:
        valid = valid.bool()
        if bool((positives & ~valid).any()):
            raise ValueError("ranks_multi: a positive column is marked invalid")
    key = scores.float()
    nan = torch.isnan(key)
    key = torch.where(nan & positives, -math.inf, torch.where(nan, math.inf, key))
    # Two stable sorts give the total order: the second (score) keeps the first's order on ties,
    # which puts negatives before positives, each group by column.
    order = torch.sort(positives.to(torch.uint8), dim=1, stable=True).indices
    order = order.gather(1, torch.sort(key.gather(1, order), dim=1, descending=True, stable=True).indices)
    position = valid.gather(1, order).cumsum(1)
    ranks = torch.empty_like(position).scatter_(1, order, position)
    return torch.where(positives, ranks, torch.full_like(ranks, NO_RANK))


class RankingMetrics:
    """Recall@k, Hit@k, NDCG@k and MRR@k, accumulated as sums over samples.

    For a sample with ``n`` positives and ranks ``r``: Recall@k = #{r <= k} / n; Hit@k = [min r <= k];
    NDCG@k = sum_{r <= k} 1/log2(r+1) over IDCG@k = sum_{i=1..min(n,k)} 1/log2(i+1);
    MRR@k = 1/min r if min r <= k else 0. Samples with no positive are not averaged; they are counted
    in ``skipped``.

    Args:
        ks: cut-offs for Recall and Hit.
        ndcg_ks: cut-offs for NDCG.
        mrr_ks: cut-offs for MRR.
    """

    def __init__(
        self, ks: Sequence[int] = (1, 5, 10), ndcg_ks: Sequence[int] = (5, 10), mrr_ks: Sequence[int] = (5, 10)
    ):
        for k in (*ks, *ndcg_ks, *mrr_ks):
            if int(k) < 1:
                raise ValueError(f"metric cut-offs must be >= 1; got {k}")
        self.ks = tuple(int(k) for k in ks)
        self.ndcg_ks = tuple(int(k) for k in ndcg_ks)
        self.mrr_ks = tuple(int(k) for k in mrr_ks)
        self.metric_names = (
            [f"recall@{k}" for k in self.ks]
            + [f"hit@{k}" for k in self.ks]
            + [f"ndcg@{k}" for k in self.ndcg_ks]
            + [f"mrr@{k}" for k in self.mrr_ks]
        )
        self.state_names = [*self.metric_names, "count", "skipped"]
        self._sums: torch.Tensor | None = None

    def reset(self) -> None:
        self._sums = None

    def update(self, ranks: torch.Tensor, num_pos: torch.Tensor | None = None) -> None:
        """Add one batch.

        Args:
            ranks: ``[B, P]`` 1-based ranks of each sample's positives, :data:`NO_RANK` (or any value
                above every cut-off) where there is none; ``[B]`` for one positive per sample.
            num_pos: ``[B]`` number of positives per sample (the Recall denominator; it may exceed
                the ranked ones). Default: the entries of ``ranks`` below :data:`NO_RANK`.
        """
        if ranks.dim() == 1:
            ranks = ranks.unsqueeze(1)
        if ranks.dim() != 2:
            raise ValueError(f"ranks must be [B] or [B, P]; got {tuple(ranks.shape)}")
        ranks = ranks.long()
        if num_pos is None:
            num_pos = (ranks != NO_RANK).sum(1)
        elif num_pos.shape != ranks.shape[:1]:
            raise ValueError(f"num_pos must be [B] = [{ranks.shape[0]}]; got {tuple(num_pos.shape)}")
        if bool((ranks < 1).any()):
            raise ValueError("ranks are 1-based; got a rank < 1")
        sums = self._batch_sums(ranks, num_pos.to(ranks.device).long())
        self._sums = sums if self._sums is None else self._sums + sums.to(self._sums.device)

    def _batch_sums(self, ranks: torch.Tensor, num_pos: torch.Tensor) -> torch.Tensor:
        """``[len(state_names)]`` float64 sums of one batch, in ``state_names`` order."""
        keep = num_pos > 0
        ranks, npos = ranks[keep], num_pos[keep].double()
        out: list[torch.Tensor] = []
        hits = {}
        for k in self.ks:
            hits[k] = (ranks <= k).sum(1).double()
            out.append((hits[k] / npos).sum())
        out.extend((hits[k] > 0).double().sum() for k in self.ks)
        if self.ndcg_ks:
            kmax = max(self.ndcg_ks)
            discount = 1.0 / torch.log2(torch.arange(2, kmax + 2, device=ranks.device, dtype=torch.float64))
            ideal = torch.cat([discount.new_zeros(1), discount.cumsum(0)])  # ideal[m] = IDCG with m hits
            gain = discount[ranks.clamp(max=kmax) - 1]  # ranks above kmax are masked below
            for k in self.ndcg_ks:
                dcg = torch.where(ranks <= k, gain, 0.0).sum(1)
                out.append((dcg / ideal[npos.long().clamp(max=k)]).sum())
        best = ranks.min(1).values if ranks.shape[1] else ranks.new_full((ranks.shape[0],), NO_RANK)
        for k in self.mrr_ks:
            out.append(torch.where(best <= k, 1.0 / best.clamp(max=k).double(), 0.0).sum())
        out.append(keep.sum().double())
        out.append((~keep).sum().double())
        return torch.stack(out)

    def state(self) -> dict[str, float]:
        """Sums and counts, keyed by ``state_names``; safe to add across processes."""
        if self._sums is None:
            return dict.fromkeys(self.state_names, 0.0)
        return dict(zip(self.state_names, self._sums.cpu().tolist()))

    def merge(self, other_state: dict[str, float]) -> None:
        """Add another accumulator's :meth:`state` (same cut-offs) to this one."""
        if set(other_state) != set(self.state_names):
            raise ValueError(
                f"cannot merge metric states with different keys: {sorted(other_state)} vs {sorted(self.state_names)}"
            )
        add = torch.tensor([float(other_state[n]) for n in self.state_names], dtype=torch.float64)
        self._sums = add if self._sums is None else self._sums + add.to(self._sums.device)

    def synced(self, group=None) -> "RankingMetrics":
        """A new accumulator holding this one's state summed over all ``torch.distributed`` ranks."""
        total = RankingMetrics(self.ks, self.ndcg_ks, self.mrr_ks)
        total.merge(reduce_state(self.state(), group))
        return total

    def compute(self) -> dict[str, float]:
        """Means over counted samples, plus ``count`` and ``skipped``; metrics are NaN if none counted."""
        state = self.state()
        count = state["count"]
        out = {n: (state[n] / count if count > 0 else math.nan) for n in self.metric_names}
        out["count"], out["skipped"] = count, state["skipped"]
        return out


def reduce_state(state: dict[str, float], group=None) -> dict[str, float]:
    """Sum a metric state over the ranks of ``group`` (one float64 all_reduce).

    The identity when ``torch.distributed`` is not initialised. Every rank must pass the same keys.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return dict(state)
    names = sorted(state)
    device = torch.device("cpu")
    if dist.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    values = torch.tensor([float(state[n]) for n in names], dtype=torch.float64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.SUM, group=group)
    return dict(zip(names, values.cpu().tolist()))
