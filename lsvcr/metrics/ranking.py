"""Ranks of the positives among scored candidates, and top-k ranking metrics accumulated as sums.

Ties are broken pessimistically: a negative whose score equals a positive's is ranked above it, so a
model that scores every candidate alike is ranked last, never first. NaN scores are pessimistic too:
a NaN negative is above every positive and a NaN positive is below every negative.

Metrics are kept as sums plus a sample count (:meth:`RankingMetrics.state`), so partial results from
several processes or shards combine by summing (:func:`reduce_state`, :meth:`RankingMetrics.merge`);
averaging per-process means would weight processes with fewer samples too heavily.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist

# Rank given to columns that are not positives; larger than any k, so it never counts.
NO_RANK = torch.iinfo(torch.int64).max


def ranks_single(scores: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """1-based rank of one target column per row, pessimistic on ties.

    One comparison and one sum per row and no sort, so full ranking over a million videos is cheap;
    rows are independent, so callers may split a large batch into row chunks.

    Args:
        scores: ``[B, C]`` candidate scores.
        target: ``[B]`` column of the target in each row.
        valid: ``[B, C]`` bool, False at columns that must never count (padding); None = all valid.
            The target's column must be valid.

    Returns:
        ``[B]`` int64 ranks: 1 + the number of other valid columns whose score is not below the
        target's (``>=``, or NaN).
    """
    if scores.dim() != 2 or target.shape != scores.shape[:1]:
        raise ValueError(f"scores must be [B, C] and target [B]; got {tuple(scores.shape)} and {tuple(target.shape)}")
    target = target.long().unsqueeze(1)
    target_score = scores.gather(1, target)
    # rank = (valid columns) - (valid columns strictly below the target): the target's own column is
    # valid and never below itself; "below" is False for a NaN score (counted above the target) and
    # for every column when the target's score is NaN (ranked last).
    below = _count_below(scores, target_score)
    n_valid = torch.full_like(below, scores.shape[1])
    if valid is not None:
        if valid.shape != scores.shape:
            raise ValueError(f"valid must have the shape of scores {tuple(scores.shape)}; got {tuple(valid.shape)}")
        if not bool(valid.gather(1, target).all()):
            raise ValueError("ranks_single: a target column is marked invalid")
        # Invalid entries are few (padding) and sit in few columns: find those columns with one
        # byte-wise min over rows (much cheaper than a nonzero over [B, C]) and correct the counts
        # for their invalid entries only, instead of masking all of [B, C].
        some_invalid = (valid.view(torch.uint8).amin(0) == 0).nonzero().squeeze(1)
        rows, j = (~valid.index_select(1, some_invalid)).nonzero(as_tuple=True)
        cols = some_invalid[j]
        n_valid -= torch.bincount(rows, minlength=len(below))
        below -= torch.bincount(rows, weights=(scores[rows, cols] < target_score[rows, 0]).double(),
                                minlength=len(below)).long()
    return n_valid - below


def _count_below(scores: torch.Tensor, threshold: torch.Tensor, chunk_elems: int = 1 << 21) -> torch.Tensor:
    """``[B]`` int64: columns of ``scores [B, C]`` strictly below ``threshold [B, 1]``.

    Comparisons go into a reused float buffer that is then summed: summing a bool tensor converts it
    to int64 first, which on CPU costs 5x the comparison. Column chunks keep the buffer small (in
    cache) and every float partial sum below 2^24, so the counts are exact.
    """
    b, c = scores.shape
    step = max(1, min(c, chunk_elems // max(b, 1), 1 << 23))
    buf = torch.empty(b, step, dtype=torch.promote_types(scores.dtype, torch.float32), device=scores.device)
    below = torch.zeros(b, dtype=torch.long, device=scores.device)
    for lo in range(0, c, step):
        part = buf[:, : min(step, c - lo)]
        below += torch.lt(scores[:, lo : lo + step], threshold, out=part).sum(1).long()
    return below


def full_ranks(user: torch.Tensor, items: torch.Tensor, target: torch.Tensor, first: int = 1,
               block_rows: int = 128, block_cols: int = 4096) -> torch.Tensor:
    """:func:`ranks_single` of ``scores = user @ items.T`` with the columns before ``first`` invalid
    (full ranking: item 0 is padding), without the ``[B, V]`` score matrix.

    Scores are computed ``block_rows x block_cols`` at a time into a reused buffer (128 x 4096
    floats is 2 MiB, about one core's L2 cache) and compared with the target's score right away, so memory
    traffic is one pass over ``items`` per row block instead of writing and re-reading every score.
    Each target score is read out of the very product that scores its block (computed first for the
    blocks holding targets: rows are sorted by target, so a row block touches few of them), so it
    equals its own column exactly and exact ties (duplicated items, a constant model) stay
    pessimistic; a separately computed dot product can round differently and split them. Scores
    can differ from a single ``[B, V]`` product in the last bit (the BLAS blocks differently), so
    near-ties within that rounding may be ordered differently from the materialised path.

    Args:
        user: ``[B, d]`` (already divided by any temperature).
        items: ``[V, d]`` every item's representation.
        target: ``[B]`` item index of each row's target, ``first <= target < V``.

    Returns:
        ``[B]`` int64 ranks (1 + valid other items scoring ``>=`` the target, or NaN).
    """
    b, v = user.shape[0], items.shape[0]
    target = target.long()
    if b and bool(((target < first) | (target >= v)).any()):
        raise ValueError(f"full_ranks: targets must lie in [{first}, {v}); got {target.min()}..{target.max()}")
    order = torch.argsort(target)
    user, target = user.index_select(0, order), target.index_select(0, order)
    below = torch.zeros(b, dtype=torch.long, device=user.device)
    scores = user.new_empty(max(2, min(block_rows, b)), block_cols)
    flags = torch.empty_like(scores)

    width = min(block_cols, v - first)

    def block(u: torch.Tensor, c0: int) -> torch.Tensor:
        """Scores of columns ``c0 : c0 + width`` (fewer at the end). Every product has the same
        shape, the last one overlapping its neighbour, because the BLAS may round a product of
        another shape differently, which would split exact ties across blocks."""
        start = min(c0, v - width)
        out = torch.mm(u, items[start : start + width].T, out=scores[: len(u), :width])
        return out[:, c0 - start :]

    for r0 in range(0, b, block_rows):
        u, tg = user[r0 : r0 + block_rows], target[r0 : r0 + block_rows]
        if len(u) == 1:  # a one-row product is a matrix-vector kernel whose tail columns round differently
            u, tg = u.expand(2, -1), tg.expand(2)
        col_block = torch.div(tg - first, block_cols, rounding_mode="floor")
        t = u.new_empty(len(u), 1)
        for k in torch.unique(col_block).tolist():
            rows = (col_block == k).nonzero().squeeze(1)
            c0 = first + k * block_cols
            t[rows, 0] = block(u, c0)[rows, tg[rows] - c0]
        n = min(block_rows, b - r0)
        for c0 in range(first, v, block_cols):
            s = block(u, c0)
            below[r0 : r0 + n] += torch.lt(s, t, out=flags[: len(u), : s.shape[1]]).sum(1)[:n].long()
    ranks = torch.empty_like(below)
    ranks[order] = (v - first) - below  # the target's own column equals t, so it is never below
    return ranks


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
