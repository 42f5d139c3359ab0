"""Ranks of one target per row among scored items, pessimistic on ties (a negative scoring the
same as the target ranks above it; NaN scores too), without a sort: the kernels behind full
ranking over every video. Pure tensor code below every layer, so the models' scorers
(:meth:`lsvcr.models.recommender.Recommender.rank_videos`, the baselines) and the metrics
(:mod:`lsvcr.metrics.ranking`) share them.
"""

from __future__ import annotations

import torch


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


def blocked_topk(user: torch.Tensor, items: torch.Tensor, k: int, first: int = 1, block_rows: int = 1 << 16,
                 exclude: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best items per row of ``user [B, d] @ items[first:].T`` without the ``[B, N]`` score
    matrix: each block of ``block_rows`` items is scored and merged into the running top-k.

    Args:
        user: ``[B, d]`` query rows (already divided by any temperature).
        items: ``[N, d]`` item representations; rows before ``first`` (padding) are never returned.
        k: how many per row (fewer when there are fewer candidate items).
        exclude: ``(rows, cols)`` pairs never returned (e.g. the videos a user has seen): ``cols``
            are item indices into ``items``.

    Returns:
        ``(scores [B, k'], indices [B, k'])``, best first; an excluded item has score ``-inf`` and
        appears only when a row has fewer than ``k`` items left.
    """
    if user.dim() != 2 or items.dim() != 2 or user.shape[1] != items.shape[1]:
        raise ValueError(f"user must be [B, d] and items [N, d]; got {tuple(user.shape)} and {tuple(items.shape)}")
    rows = user.shape[0]
    best = user.new_empty((rows, 0))
    best_idx = torch.empty((rows, 0), dtype=torch.long, device=user.device)
    for lo in range(first, items.shape[0], block_rows):
        hi = min(items.shape[0], lo + block_rows)
        scores = user @ items[lo:hi].to(user.device, user.dtype).T  # [B, b]
        if exclude is not None:
            r, c = exclude
            inside = (c >= lo) & (c < hi)
            scores[r[inside], c[inside] - lo] = -torch.inf
        top, idx = scores.topk(min(k, hi - lo), dim=1)
        merged, merged_idx = torch.cat([best, top], dim=1), torch.cat([best_idx, idx + lo], dim=1)
        best, pick = merged.topk(min(k, merged.shape[1]), dim=1)
        best_idx = merged_idx.gather(1, pick)
    return best, best_idx
