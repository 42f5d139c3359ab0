"""Building blocks of the sequential recommenders, and the scoring/loss interface they share.

Attention is padding-safe: masked keys get exactly zero weight, and a query whose keys are all
masked (a user with no comment history, a padded position) gets a zero context vector instead of
NaN. Layers are post-LN (residual, then LayerNorm), as in RecBole's SASRec.

Histories are right-padded and mostly padding (on the default synthetic world about 70% of the
video stream and 90% of the comment stream), so the layers can work on *rows*: only the stored
positions of a ``[B, L]`` grid (:class:`~lsvcr.models.sr.packing.Packing`). Position-wise work
(projections, feed-forward, LayerNorm, dropout) then skips padding, and only the attention
product sees the padded grid.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsvcr.models.sr.inputs import SRInputs
from lsvcr.models.sr.packing import Packing


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


# ---------------------------------------------------------------------------------- dropout


def dropout_keep_mask(shape: tuple[int, ...], p: float, dtype: torch.dtype = torch.bool, device=None) -> Tensor:
    """Keep-mask of ``shape`` (1/True = keep) with P(keep) = 1 - round(p * 2^16) / 2^16, which is
    within 2^-17 of 1 - p.

    Each element compares 16 random bits with a threshold, four elements per 64-bit draw of the
    default generator (so ``torch.manual_seed`` fixes it): on CPU about 5x cheaper than
    ``bernoulli_``, which draws and converts one float per element. ``dtype`` float writes the
    comparison straight into a float mask.
    """
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    threshold = round(p * 65536) - 32768  # int16 views of the bits are uniform on [-32768, 32767]
    keep = torch.empty(shape, dtype=dtype, device=device)
    return torch.ge(bits.view(torch.int16)[:n].view(shape), threshold, out=keep)


class _CheapDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        # A float mask holding 0 or 1/(1-p): multiplying by a bool mask (or masked_fill, where)
        # goes through a dtype conversion that costs ~10x a float multiply on this CPU.
        scale = dropout_keep_mask(tuple(x.shape), p, x.dtype, x.device).mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(scale)
        return x * scale

    @staticmethod
    def backward(ctx, grad: Tensor):
        (scale,) = ctx.saved_tensors
        return grad * scale, None


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout (kept values scaled by 1/(1-p)); on CPU with :func:`dropout_keep_mask`.
    Other devices use ``F.dropout``, whose fused kernels are already cheap there."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0 or not x.is_floating_point():
        return F.dropout(x, p, True)
    return _CheapDropout.apply(x, p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with the cheaper CPU mask of :func:`dropout` (same ``p``, same state dict)."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


def attention_bias(allowed: Tensor, dtype: torch.dtype, num_heads: int) -> Tensor:
    """``allowed [B, Lq, Lk]`` bool -> additive bias ``[B * H, Lq, Lk]``: 0 where a query may attend,
    the dtype's lowest value elsewhere (so masked keys get exactly zero weight, never NaN)."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    bias = torch.where(allowed, zero, torch.finfo(dtype).min)
    b, lq, lk = bias.shape
    return bias.unsqueeze(1).expand(b, num_heads, lq, lk).reshape(b * num_heads, lq, lk)


# ---------------------------------------------------------------------------------- layers


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
        self.attn_dropout = Dropout(attn_dropout)
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, query: Tensor, kv: Tensor, mask: Tensor) -> Tensor:
        """``query [B, Lq, d]``, ``kv [B, Lk, d]``, ``mask [B, Lq, Lk]`` or ``[B, 1, Lk]`` bool
        (True = may attend) -> ``[B, Lq, d]``."""
        (b, lq, d), lk = query.shape, kv.shape[1]
        allowed = mask.expand(b, lq, lk)
        q_pack, kv_pack = Packing(b, lq, device=query.device), Packing(b, lk, device=kv.device)
        plan = [attention_bias(allowed, query.dtype, self.num_heads)], allowed.any(-1).reshape(-1, 1).to(query.dtype)
        return self.attend(query.reshape(-1, d), q_pack, kv.reshape(-1, d), kv_pack, plan).view(b, lq, d)

    def plan(self, q_pack: Packing, kv_pack: Packing, kv_mask: Tensor, causal: bool,
             dtype: torch.dtype) -> tuple[list[Tensor], Tensor]:
        """What queries of ``q_pack`` may see of ``kv_pack`` (same sample groups): per grid pair the
        bias ``[n * H, Wq, Wk]`` (:func:`attention_bias`), and ``has_key [N, 1]`` per query row, 1.0
        or 0.0 (all its keys are masked, e.g. an empty comment history). ``kv_mask [B, Lk]``: real
        keys; with ``causal`` position i sees keys j <= i only. Layers of one stack share a plan."""
        if len(q_pack.grids) != len(kv_pack.grids):
            raise ValueError("queries and keys must be packed with the same sample groups")
        biases, has_key = [], []
        for gq, gk in zip(q_pack.grids, kv_pack.grids):
            mask = kv_mask if gk.samples is None else kv_mask.index_select(0, gk.samples)
            allowed = mask[:, : gk.width].unsqueeze(1)  # [n, 1, Wk]
            if causal:
                allowed = allowed & torch.ones(gq.width, gk.width, dtype=torch.bool, device=mask.device).tril()
            allowed = allowed.expand(gq.size, gq.width, gk.width)
            biases.append(attention_bias(allowed, dtype, self.num_heads))
            seen = allowed.any(-1).reshape(-1)
            has_key.append(seen if gq.local is None else seen[gq.local])
        return biases, torch.cat(has_key).to(dtype).unsqueeze(1)

    def attend(self, query: Tensor, q_pack: Packing, kv: Tensor, kv_pack: Packing,
               plan: tuple[list[Tensor], Tensor]) -> Tensor:
        """Rows form: ``query [N, d]`` (rows of ``q_pack``), ``kv [M, d]`` (rows of ``kv_pack``),
        ``plan`` from :meth:`plan` -> ``[N, d]``; rows without keys get a zero context."""
        biases, has_key = plan
        h = self.num_heads
        q_all = self.query(query) * (1.0 / math.sqrt(query.shape[-1] // h))  # scaling rows: cheaper than scores
        k_all, v_all = self.key(kv), self.value(kv)
        # One split per tensor, not a slice per group: a slice's backward zero-fills all N rows.
        q_rows = q_all.split([g.num_rows for g in q_pack.grids])
        k_rows, v_rows = (t.split([g.num_rows for g in kv_pack.grids]) for t in (k_all, v_all))
        parts = []
        # Every group runs, also one without query rows (a group of samples without comment history):
        # the same modules are called in the same order whatever the data, which ZeRO-3's parameter
        # fetching requires of every rank.
        for gq, gk, bias, q, k, v in zip(q_pack.grids, kv_pack.grids, biases, q_rows, k_rows, v_rows):
            q, k, v = gq.heads(q, h), gk.heads(k, h), gk.heads(v, h)  # [n*H, W, dh]
            probs = self.attn_dropout(torch.baddbmm(bias, q, k.transpose(1, 2)).softmax(dim=-1))
            parts.append(gq.unheads(torch.bmm(probs, v)))
        context = torch.cat(parts) if len(parts) > 1 else parts[0]
        context = context * has_key  # a float multiply: masked_fill with a bool mask is ~10x slower here
        return self.norm(query + self.dropout(self.out(context)))


class FeedForward(nn.Module):
    """Position-wise GELU MLP with residual and LayerNorm."""

    def __init__(self, hidden_size: int, inner_size: int, dropout: float, eps: float):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, inner_size)
        self.fc2 = nn.Linear(inner_size, hidden_size)
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.dropout(self.fc2(F.gelu(self.fc1(x)))))


class TransformerLayer(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, inner_size: int, dropout: float, attn_dropout: float, eps: float):
        super().__init__()
        self.attention = MultiHeadAttention(hidden_size, num_heads, dropout, attn_dropout, eps)
        self.feed_forward = FeedForward(hidden_size, inner_size, dropout, eps)

    def forward(self, x: Tensor, q_pack: Packing, kv: Tensor, kv_pack: Packing, plan) -> Tensor:
        """Rows form, as :meth:`MultiHeadAttention.attend`."""
        return self.feed_forward(self.attention.attend(x, q_pack, kv, kv_pack, plan))


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
        b, length, d = x.shape
        q_pack = Packing(b, length, device=x.device)
        kv_pack = q_pack if kv is None else Packing(b, kv.shape[1], device=x.device)
        rows = self.forward_rows(x.reshape(-1, d), q_pack, kv_mask, None if kv is None else kv.reshape(-1, d),
                                 kv_pack, causal)
        return rows.view(b, length, d)

    def forward_rows(self, x: Tensor, q_pack: Packing, kv_mask: Tensor, kv: Tensor | None = None,
                     kv_pack: Packing | None = None, causal: bool = False) -> Tensor:
        """Rows form: ``x [N, d]`` (rows of ``q_pack``); ``kv [M, d]`` (rows of ``kv_pack``; None =
        self-attention, ``kv_pack`` = ``q_pack``); ``kv_mask [B, Lk]`` -> ``[N, d]``."""
        kv_pack = q_pack if kv is None else kv_pack
        plan = self.layers[0].attention.plan(q_pack, kv_pack, kv_mask, causal, x.dtype)  # shared by the layers
        for layer in self.layers:
            x = layer(x, q_pack, x if kv is None else kv, kv_pack, plan)
        return x


class AdditivePooling(nn.Module):
    """Additive attention pooling: an MLP scores each position, masked softmax, weighted sum."""

    def __init__(self, hidden_size: int, inner_size: int, dropout: float, eps: float):
        super().__init__()
        self.score = nn.Sequential(
            nn.Linear(hidden_size, inner_size),
            nn.LayerNorm(inner_size, eps=eps),
            nn.GELU(),
            Dropout(dropout),
            nn.Linear(inner_size, 1),
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x [B, L, d]``, ``mask [B, L]`` bool -> ``[B, d]`` (zeros for an all-masked row)."""
        pack = Packing.of(mask)
        return self.forward_rows(pack.pack(x), pack, mask)

    def forward_rows(self, rows: Tensor, pack: Packing, mask: Tensor) -> Tensor:
        """Rows form: ``rows [N, d]`` at the True positions of ``mask [B, L]`` (``pack``) -> ``[B, d]``."""
        weights = pack.pack(masked_softmax(pack.unpack(self.score(rows).squeeze(-1)), mask))  # [N]
        return rows.new_zeros(pack.size, rows.shape[-1]).index_add_(0, pack.batch, rows * weights.unsqueeze(-1))


class SequentialRecommender(nn.Module):
    """The interface every SR model answers (RecBole style); the losses built on it are
    :mod:`lsvcr.losses.recommend`.

    Subclasses provide the rec read-out ``video_user`` (and, for comm_rank, ``comment_user``),
    ``video_repr``, ``video_table_repr``, ``comment_repr``, and set ``temperature`` and
    :attr:`tasks`; scores are ``user . candidate / temperature``.
    """

    temperature: float = 1.0
    #: the tasks the model answers (``conf/task`` names; a task refuses a model without its name)
    tasks: tuple[str, ...] = ("rec",)
    #: whether the model reads text embeddings (False: ``lookup_inputs`` may be given no tables)
    use_text: bool = True
    #: whether :meth:`sequence_users` works (a user representation after every position of a
    #: sequence in one causal pass), so the model can train on whole sequences
    #: (``finetune.train_on=sequences``)
    trains_on_sequences: bool = False
    #: whether the model has both ID and text embeddings of a video, so that the ID-text contrast
    #: (:func:`lsvcr.losses.recommend.id_text_loss`, through ``id_text_pairs``) applies
    has_id_text: bool = False

    def sequence_users(self, inputs: SRInputs) -> Tensor:
        """``[B, L, d]``: at position ``i`` of the right-padded video histories of ``inputs`` (no
        comment history), the ``rec`` user representation of the history ``[:i+1]``, equal in
        eval mode to ``video_user`` of that prefix."""
        raise ValueError(f"{type(self).__name__} cannot train on whole sequences")

    def scores(self, user: Tensor, candidates: Tensor) -> Tensor:
        """``user [B, d]`` against ``candidates [N, d]`` (shared) -> ``[B, N]``, or against
        ``candidates [B, K, d]`` (per row) -> ``[B, K]``."""
        user = user / self.temperature  # [B, d]: cheaper than dividing the [B, N] scores
        if candidates.dim() == 2:
            return user @ candidates.T
        return torch.einsum("bd,bkd->bk", user, candidates)
