"""Contrastive and ranking losses shared by the alignment and fine-tuning stages.

All InfoNCE variants L2-normalise their inputs and divide cosine similarities by a temperature.
The in-batch variants (:func:`batch_info_nce`, :func:`symmetric_info_nce`) draw their negatives
from every process: keys are all-gathered with :func:`gather_with_grad`, whose backward sums the
gradients that every rank's loss sends to a row and hands each rank the rows it owns.

Distributed convention: each rank's loss is ``(sum of its rows' terms) * world_size / N_global``.
Data-parallel engines (DDP, DeepSpeed) average gradients over ranks, so the parameters receive
exactly the gradient of the mean over all ``N_global`` rows, also when ranks hold different
numbers of rows; with equal shards the per-rank value is the plain local mean.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def multi_process(group=None) -> bool:
    """Whether a process group of more than one rank is running (so keys must be gathered)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather rows of possibly different counts per rank; backward = all-reduce + local slice."""

    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int], group) -> Tensor:
        ctx.group, ctx.sizes, ctx.rank = group, sizes, dist.get_rank(group)
        padded = x.new_zeros((max(sizes), *x.shape[1:]))
        padded[: x.shape[0]] = x
        buffers = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(buffers, padded, group=group)
        return torch.cat([b[:n] for b, n in zip(buffers, sizes)])

    @staticmethod
    def backward(ctx, grad: Tensor):
        # Every rank's loss depends on every gathered row, so a row's gradient is the sum over ranks.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def gather_rows(x: Tensor, group=None) -> tuple[Tensor, int, int]:
    """``(rows of all ranks in rank order, offset of the local rows, world size)``; the gathered rows
    carry gradients back to the local shard (:func:`gather_with_grad`)."""
    if not multi_process(group):
        return x, 0, 1
    size = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, size, group=group)
    sizes = [int(s.item()) for s in sizes]
    rank = dist.get_rank(group)
    return _GatherWithGrad.apply(x.contiguous(), sizes, group), sum(sizes[:rank]), len(sizes)


def gather_with_grad(x: Tensor, group=None) -> Tensor:
    """All-gather ``x [n_r, ...]`` from every rank into ``[sum_r n_r, ...]`` (rank order).

    Gradients flow back to the local shard (summed over every rank's use of it). Ranks may hold
    different numbers of rows. Identity when torch.distributed is not initialised or has one rank.
    """
    return gather_rows(x, group)[0]


def info_nce(query: Tensor, keys: Tensor, positive_index: Tensor, temperature: float) -> Tensor:
    """Mean InfoNCE of ``query [N, d]`` against all ``keys [M, d]``; row i's positive is
    ``keys[positive_index[i]]`` and every other key is a negative."""
    logits = F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).T / temperature
    return F.cross_entropy(logits, positive_index)


def info_nce_sampled(query: Tensor, positive: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """Mean InfoNCE with per-row negatives: ``query [N, d]``, ``positive [N, d]``,
    ``negatives [N, K, d]``; the positive competes with its row's K negatives."""
    q = F.normalize(query, dim=-1)
    pos = (q * F.normalize(positive, dim=-1)).sum(-1, keepdim=True)
    neg = torch.einsum("nd,nkd->nk", q, F.normalize(negatives, dim=-1))
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros_like(logits[:, 0], dtype=torch.long))


class _SampledDot(torch.autograd.Function):
    """``out[n, j] = query[n] . keys[index[n, j]]`` computed ``rows`` queries at a time, so the
    gathered ``[N, K, d]`` keys never exist at once and are not kept for backward (which gathers
    each chunk again): cache-sized chunks instead of several passes over a large tensor."""

    rows = 32  # 32 x 99 x 64 floats = 0.8 MB: one core's L2 cache

    @staticmethod
    def forward(ctx, query: Tensor, keys: Tensor, index: Tensor) -> Tensor:
        n, k = index.shape
        out = query.new_empty(n, k)
        for lo in range(0, n, _SampledDot.rows):
            hi = min(lo + _SampledDot.rows, n)
            gathered = keys.index_select(0, index[lo:hi].reshape(-1)).view(hi - lo, k, -1)
            out[lo:hi] = torch.bmm(gathered, query[lo:hi].unsqueeze(2)).squeeze(2)
        ctx.save_for_backward(query, keys, index)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        query, keys, index = ctx.saved_tensors
        n, k = index.shape
        grad_query, grad_keys = torch.empty_like(query), torch.zeros_like(keys)
        for lo in range(0, n, _SampledDot.rows):
            hi = min(lo + _SampledDot.rows, n)
            flat = index[lo:hi].reshape(-1)
            gathered = keys.index_select(0, flat).view(hi - lo, k, -1)
            grad_query[lo:hi] = torch.bmm(grad[lo:hi].unsqueeze(1), gathered).squeeze(1)
            grad_keys.index_add_(0, flat, (grad[lo:hi].unsqueeze(2) * query[lo:hi].unsqueeze(1)).flatten(0, 1))
        return grad_query, grad_keys, None


def info_nce_indexed(query: Tensor, keys: Tensor, negative_index: Tensor, temperature: float) -> Tensor:
    """:func:`info_nce_sampled` with the negatives given as rows of ``keys``: ``query [N, d]``,
    ``keys [N, d]`` (row i is query i's positive), ``negative_index [N, K]`` rows of ``keys``.

    Same value as ``info_nce_sampled(query, keys, keys[negative_index], temperature)``, without
    its ``[N, K, d]`` copies (whose advanced-indexing backward, ``index_put``, was the slowest op
    of a fine-tuning step). With ``N <= 20 K`` the negative logits are picked out of the
    ``[N, N]`` similarity matrix (one matmul); above that the matrix costs more than gathering
    (crossover measured at N ~ 2,000 for K = 99, d = 64 on CPU) and :class:`_SampledDot` gathers
    the keys in cache-sized chunks (3x faster than one ``index_select`` + ``bmm``).
    """
    q, k = F.normalize(query, dim=-1), F.normalize(keys, dim=-1)
    pos = (q * k).sum(-1, keepdim=True)
    n, num_neg = negative_index.shape
    if n <= 20 * num_neg:
        neg = (q @ k.T).gather(1, negative_index)
    else:
        neg = _SampledDot.apply(q, k, negative_index)
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros_like(logits[:, 0], dtype=torch.long))


def batch_info_nce(query: Tensor, keys: Tensor, temperature: float, group=None) -> Tensor:
    """One-way in-batch InfoNCE: local ``query [B, d]`` row i's positive is local ``keys[i]``;
    the negatives are the keys of every row on every rank (see the module's distributed
    convention for how the value is scaled)."""
    all_keys, offset, world = gather_rows(keys, group)
    logits = F.normalize(query, dim=-1) @ F.normalize(all_keys, dim=-1).T / temperature
    target = offset + torch.arange(query.shape[0], device=query.device)
    terms = F.cross_entropy(logits, target, reduction="sum")
    return terms * world / all_keys.shape[0]


def symmetric_info_nce(a: Tensor, b: Tensor, temperature: float, group=None) -> Tensor:
    """``(InfoNCE(a -> b) + InfoNCE(b -> a)) / 2`` with in-batch negatives from all ranks.

    ``a [B, d]`` and ``b [B, d]`` are two views of the same B samples (row i of ``a`` matches row
    i of ``b``); B may differ between ranks.
    """
    return (batch_info_nce(a, b, temperature, group) + batch_info_nce(b, a, temperature, group)) / 2


def behaviour_contrast(anchor: Tensor, positive_view: Tensor, negative_view: Tensor, temperature: float) -> Tensor:
    """Cross-entropy over two candidates per row: ``anchor [B, d]`` should be closer (cosine /
    temperature) to ``positive_view [B, d]`` than to ``negative_view [B, d]``."""
    a = F.normalize(anchor, dim=-1)
    pos = (a * F.normalize(positive_view, dim=-1)).sum(-1)
    neg = (a * F.normalize(negative_view, dim=-1)).sum(-1)
    logits = torch.stack([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros_like(pos, dtype=torch.long))


def multi_positive_ce(logits: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Cross-entropy over candidates with one or more positives per row.

    ``logits [B, K]``; ``labels [B, K]`` bool, True at positives; ``mask [B, K]`` bool, False at
    padded candidates. Each positive competes with its row's negatives only (other positives are
    left out of its softmax), so with a single positive this is the ordinary cross-entropy.
    Terms are averaged over a row's positives, then over the rows that have any.
    """
    valid = torch.ones_like(labels) if mask is None else mask
    pos = labels & valid
    neg = ~labels & valid
    low = torch.finfo(logits.dtype).min
    neg_lse = logits.masked_fill(~neg, low).logsumexp(dim=1, keepdim=True)  # [B, 1]
    # -log(e^s / (e^s + sum_neg e^n)) = softplus(lse_neg - s)
    terms = F.softplus(neg_lse - logits).masked_fill(~pos, 0.0)
    n_pos = pos.sum(1)
    has_pos = n_pos > 0
    per_row = terms.sum(1) / n_pos.clamp(min=1)
    return (per_row * has_pos).sum() / has_pos.sum().clamp(min=1)


def sample_other_indices(n: int, k: int, device=None, generator: torch.Generator | None = None) -> Tensor:
    """``[n, min(k, n - 1)]`` indices; row i never contains i.

    When ``k >= n - 1`` every other index appears exactly once; otherwise indices are drawn
    uniformly from the n - 1 others, with replacement. Drawing an offset in ``1..n-1`` and adding
    it to i modulo n costs O(n * k), instead of the O(n^2) random matrix the official code sorts.
    """
    k = min(k, n - 1)
    rows = torch.arange(n, device=device).unsqueeze(1)
    if k <= 0:
        return rows[:, :0]
    if k == n - 1:
        offsets = torch.arange(1, n, device=device).expand(n, k)
    else:
        offsets = torch.randint(1, n, (n, k), device=device, generator=generator)
    return (rows + offsets) % n
