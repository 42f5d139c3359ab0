"""Building blocks of the sequential recommenders, and the scoring/loss interface they share.

Attention is padding-safe: masked keys get exactly zero weight, and a query whose keys are all
masked (a user with no comment history, a padded position) gets a zero context vector instead of
NaN. Layers are post-LN (residual, then LayerNorm), as in RecBole's SASRec.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lsvcr.losses.contrastive import multi_positive_ce


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dim where ``mask`` (bool, broadcastable) is True; all-masked rows -> 0."""
    probs = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(dim=-1)
    return probs * mask.any(dim=-1, keepdim=True)


def init_weights(module: nn.Module) -> None:
    """RecBole-style init: N(0, 0.02) weights, zero biases, identity LayerNorms, zero pad rows."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        with torch.no_grad():
            module.weight[module.padding_idx].zero_()
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with output projection, dropout, residual on the query, LayerNorm."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float, attn_dropout: float, eps: float):
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)

    def _heads(self, x: Tensor) -> Tensor:
        b, length, d = x.shape
        return x.view(b, length, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, query: Tensor, kv: Tensor, mask: Tensor) -> Tensor:
        """``query [B, Lq, d]``, ``kv [B, Lk, d]``, ``mask [B, Lq, Lk]`` or ``[B, 1, Lk]`` bool
        (True = may attend) -> ``[B, Lq, d]``."""
        q, k, v = self._heads(self.query(query)), self._heads(self.key(kv)), self._heads(self.value(kv))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [B, H, Lq, Lk]
        probs = self.attn_dropout(masked_softmax(scores, mask.unsqueeze(1)))
        context = (probs @ v).transpose(1, 2).reshape(query.shape)
        return self.norm(query + self.dropout(self.out(context)))


class FeedForward(nn.Module):
    """Position-wise GELU MLP with residual and LayerNorm."""

    def __init__(self, hidden_size: int, inner_size: int, dropout: float, eps: float):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, inner_size)
        self.fc2 = nn.Linear(inner_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.dropout(self.fc2(F.gelu(self.fc1(x)))))


class TransformerLayer(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, inner_size: int, dropout: float, attn_dropout: float, eps: float):
        super().__init__()
        self.attention = MultiHeadAttention(hidden_size, num_heads, dropout, attn_dropout, eps)
        self.feed_forward = FeedForward(hidden_size, inner_size, dropout, eps)

    def forward(self, x: Tensor, kv: Tensor, mask: Tensor) -> Tensor:
        return self.feed_forward(self.attention(x, kv, mask))


class TransformerEncoder(nn.Module):
    """A stack of post-LN Transformer layers, used for self-attention (the history encoders,
    causal) and for cross-attention (the mix layers: every layer attends over a fixed ``kv``)."""

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        num_heads: int,
        inner_size: int,
        dropout: float,
        attn_dropout: float,
        eps: float,
    ):
        super().__init__()
        layer = TransformerLayer(hidden_size, num_heads, inner_size, dropout, attn_dropout, eps)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, x: Tensor, kv_mask: Tensor, kv: Tensor | None = None, causal: bool = False) -> Tensor:
        """``x [B, L, d]``; ``kv [B, Lk, d]`` (None = self-attention over ``x``);
        ``kv_mask [B, Lk]`` bool, True at real items -> ``[B, L, d]``.

        With ``causal``, position i attends to keys j <= i only (self-attention).
        """
        mask = kv_mask.unsqueeze(1)  # [B, 1, Lk]
        if causal:
            length = x.shape[1]
            tril = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            mask = mask & tril
        for layer in self.layers:
            x = layer(x, x if kv is None else kv, mask)
        return x


class AdditivePooling(nn.Module):
    """Additive attention pooling: an MLP scores each position, masked softmax, weighted sum."""

    def __init__(self, hidden_size: int, inner_size: int, dropout: float, eps: float):
        super().__init__()
        self.score = nn.Sequential(
            nn.Linear(hidden_size, inner_size),
            nn.LayerNorm(inner_size, eps=eps),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(inner_size, 1),
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x [B, L, d]``, ``mask [B, L]`` bool -> ``[B, d]`` (zeros for an all-masked row)."""
        weights = masked_softmax(self.score(x).squeeze(-1), mask)  # [B, L]
        return torch.einsum("bl,bld->bd", weights, x)


class SequentialRecommender(nn.Module):
    """The interface every SR model answers (RecBole style), and the losses built on it.

    Subclasses provide ``user_repr``, ``video_repr``, ``video_table_repr``, ``comment_repr`` and
    set ``temperature``; scores are ``user . candidate / temperature``.
    """

    temperature: float = 1.0
    #: whether the model reads text embeddings (False: ``lookup_inputs`` may be given no tables)
    uses_text: bool = True

    def scores(self, user: Tensor, candidates: Tensor) -> Tensor:
        """``user [B, d]`` against ``candidates [N, d]`` (shared) -> ``[B, N]``, or against
        ``candidates [B, K, d]`` (per row) -> ``[B, K]``."""
        if candidates.dim() == 2:
            return user @ candidates.T / self.temperature
        return torch.einsum("bd,bkd->bk", user, candidates) / self.temperature

    def rec_loss_full(self, user: Tensor, table_repr: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy over every video: ``user [B, d]``, ``table_repr [V+1, d]`` (row 0 = pad,
        never a candidate), ``target [B]`` video indices -> scalar."""
        logits = self.scores(user, table_repr)
        pad = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        pad[0] = True
        logits = logits.masked_fill(pad, torch.finfo(logits.dtype).min)
        return F.cross_entropy(logits, target)

    def rec_loss_sampled(self, user: Tensor, target_repr: Tensor, negative_repr: Tensor) -> Tensor:
        """Cross-entropy over the target and K sampled negatives: ``user [B, d]``,
        ``target_repr [B, d]``, ``negative_repr [B, K, d]`` -> scalar."""
        candidates = torch.cat([target_repr.unsqueeze(1), negative_repr], dim=1)
        logits = self.scores(user, candidates)
        return F.cross_entropy(logits, torch.zeros_like(logits[:, 0], dtype=torch.long))

    def comm_rank_loss(
        self, user: Tensor, candidate_repr: Tensor, labels: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """Comment-ranking loss: ``user [B, d]``, ``candidate_repr [B, K, d]``; ``labels [B, K]``
        bool (None = the positive is column 0, the rest negatives); ``mask [B, K]`` bool, False at
        padded candidates. See :func:`multi_positive_ce`."""
        logits = self.scores(user, candidate_repr)
        if labels is None:
            labels = torch.zeros_like(logits, dtype=torch.bool)
            labels[:, 0] = True
        return multi_positive_ce(logits, labels, mask)
