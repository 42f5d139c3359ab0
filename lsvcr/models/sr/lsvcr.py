"""The LSVCR sequential recommender (DESIGN section 3).

Two history streams, each position built from text embeddings:

- video history: (title, hot comment) of each watched video;
- comment history: (title, mean of the user's comments) of each video whose comments they used.

A shared adapter (E -> d, no bias) maps every text embedding; a merge layer (2d -> d) joins the
two parts; position embeddings (and, in fine-tuning, ``gate * id_embedding``) are added; each
stream has its own causal Transformer encoder; mix layers let each stream cross-attend to the
other; read-outs pool the streams into a user representation per task.

Alignment builds the model with ``use_ids=False, random_positions=True``; fine-tuning with
``use_ids=True`` and loads the aligned weights with :meth:`LSVCR.load_aligned`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsvcr.data.batch import sorted_random_positions
from lsvcr.models.sr.inputs import SRInputs
from lsvcr.models.sr.layers import (
    AdditivePooling,
    Dropout,
    MultiHeadAttention,
    SequentialRecommender,
    TransformerEncoder,
    init_weights,
    masked_softmax,
)
from lsvcr.models.sr.packing import Packing

#: samples per attention group (see Packing): smaller groups pad less but run more, smaller products
GROUP_SIZE = 128
#: parameters that exist only with ID embeddings (absent from an alignment checkpoint)
ID_KEYS = ("id_embedding.weight", "gate")
#: module prefixes that exist only with the comment-history stream
COMMENT_PREFIXES = ("c_position.", "c_norm.", "comment_encoder.", "video_mix.", "comment_mix.", "video_out.", "comment_out.")


@dataclass
class SRReadouts:
    """The four read-outs (``[B, d]`` each, not normalised); the comment-stream ones are None
    without a comment history stream.

    Attributes:
        video_pool: additive-attention pooling over the video stream (the rec representation).
        video_query: target-video query attention over the video stream.
        comment_pool: additive-attention pooling over the comment stream.
        comment_query: target-video query attention over the comment stream (the comm_rank one).
    """

    video_pool: Tensor
    video_query: Tensor
    comment_pool: Tensor | None
    comment_query: Tensor | None


class LSVCR(SequentialRecommender):
    """LSVCR's SR. Inputs are :class:`SRInputs`; representations have size ``hidden_size``."""

    def __init__(
        self,
        num_videos: int,
        llm_emb_size: int = 256,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        inner_size: int = 256,
        num_mix_layers: int = 1,
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
        max_position: int = 50,
        temperature: float = 0.07,
        use_ids: bool = True,
        use_text: bool = True,
        use_comment_history: bool = True,
        random_positions: bool = False,
        position_align: str = "end",
        layer_norm_eps: float = 1e-8,
    ):
        super().__init__()
        self.num_videos = num_videos
        self.max_position = max_position
        self.temperature = temperature
        if not (use_ids or use_text):
            raise ValueError("LSVCR needs ID embeddings, text embeddings or both (use_ids or use_text)")
        self.use_ids = use_ids
        self.use_text = use_text  # False: the ID-only ablation (task=rec only; no text tables are read)
        self.use_comment_history = use_comment_history
        self.random_positions = random_positions
        if position_align not in ("start", "end"):
            raise ValueError(f"position_align must be 'start' or 'end', got {position_align!r}")
        self.position_align = position_align
        d, eps = hidden_size, layer_norm_eps

        def encoder(n: int) -> TransformerEncoder:
            return TransformerEncoder(n, d, num_heads, inner_size, dropout, attn_dropout, eps)

        if use_text:
            self.adapter = nn.Linear(llm_emb_size, d, bias=False)
            self.merge = nn.Linear(2 * d, d)
        self.dropout = Dropout(dropout)
        if use_ids:
            self.id_embedding = nn.Embedding(num_videos + 1, d, padding_idx=0)
            self.gate = nn.Parameter(torch.tensor(1.0))
        self.v_position = nn.Embedding(max_position, d)
        self.v_norm = nn.LayerNorm(d, eps=eps)
        self.video_encoder = encoder(num_layers)
        if use_comment_history:
            self.c_position = nn.Embedding(max_position, d)
            self.c_norm = nn.LayerNorm(d, eps=eps)
            self.comment_encoder = encoder(num_layers)
            self.video_mix = encoder(num_mix_layers)
            self.comment_mix = encoder(num_mix_layers)
            self.video_out = nn.Linear(2 * d, d)
            self.comment_out = nn.Linear(2 * d, d)
        # One pooling and one query-attention head serve both streams, so the alignment's
        # behaviour contrast compares the same read-out over different evidence.
        self.pooling = AdditivePooling(d, 2 * d, dropout, eps)
        self.query_attention = MultiHeadAttention(d, num_heads, dropout, attn_dropout, eps)
        self.apply(init_weights)

    # ---------------------------------------------------------------- embeddings of items

    def _video_embed(self, ids: Tensor | None, title_emb: Tensor) -> Tensor:
        """Un-normalised video representation ``[..., d]``: ``gate * id_emb + adapter(title)``."""
        if self.use_ids and ids is None:
            raise ValueError("this LSVCR uses ID embeddings: pass the video ids")
        if not self.use_text:
            return self.gate * self.id_embedding(ids)
        x = self.adapter(title_emb)
        return x + self.gate * self.id_embedding(ids) if self.use_ids else x

    def video_repr(self, ids: Tensor | None, title_emb: Tensor) -> Tensor:
        """Candidate videos: ``ids [...]`` (ignored without IDs), ``title_emb [..., E]`` -> ``[..., d]``."""
        return F.normalize(self._video_embed(ids, title_emb), dim=-1)

    def comment_repr(self, comment_emb: Tensor) -> Tensor:
        """Candidate comments: ``comment_emb [..., E]`` -> ``[..., d]``."""
        if not self.use_text:
            raise ValueError("this LSVCR reads no text (use_text=False) and cannot rank comments; use task=rec")
        return F.normalize(self.adapter(comment_emb), dim=-1)

    def video_table_repr(self, video_emb_table: Tensor) -> Tensor:
        """Every video for full ranking: ``[V+1, E]`` (row i = video i; None without text) -> ``[V+1, d]``."""
        ids = None
        if not self.use_text:
            ids = torch.arange(self.num_videos + 1, device=self.id_embedding.weight.device)
        elif self.use_ids:
            if video_emb_table.shape[0] != self.num_videos + 1:
                raise ValueError(
                    f"video table has {video_emb_table.shape[0]} rows, the model has {self.num_videos} videos (+1 pad)"
                )
            ids = torch.arange(video_emb_table.shape[0], device=video_emb_table.device)
        return self.video_repr(ids, video_emb_table)

    # ---------------------------------------------------------------- history encoding

    def _positions(self, mask: Tensor, given: Tensor | None = None) -> Tensor:
        """``[B, L]`` position ids for right-padded histories with ``mask [B, L]``.

        ``start``: 0..n-1 from the oldest item. ``end``: the most recent item always gets
        ``max_position - 1`` (as if left-padded to ``max_position``), so the pooling read-out
        can tell recency apart; with right padding and ``start`` the last real item's position
        varies with the history length and no read-out can find it. In training with
        ``random_positions`` (alignment): a sorted random subset of 0..max_position-1 per sample,
        ``given`` when the batch carries them (the collator's per-sample draws), else drawn here.
        """
        batch, length = mask.shape
        if length > self.max_position:
            raise ValueError(f"history length {length} exceeds max_position {self.max_position}")
        if self.training and self.random_positions:
            if given is not None:
                return given
            return sorted_random_positions(torch.rand(batch, self.max_position, device=mask.device), mask)
        pos = torch.arange(length, device=mask.device).expand(batch, length)
        if self.position_align == "end":
            shift = self.max_position - mask.sum(dim=1, keepdim=True)
            pos = (pos + shift).clamp(max=self.max_position - 1)
        return pos

    def _stream_input(self, title: Tensor, comment: Tensor, ids: Tensor, mask: Tensor, pack: Packing,
                      position: nn.Embedding, norm: nn.LayerNorm, given: Tensor | None = None) -> Tensor:
        """``[B, L, E]`` x2 + ``ids [B, L]`` -> encoder input rows ``[N, d]`` at ``pack``'s positions."""
        x = position(pack.pack(self._positions(mask, given)))
        if self.use_text:
            x = x + self.merge(torch.cat([self.adapter(pack.pack(title)), self.adapter(pack.pack(comment))], dim=-1))
        if self.use_ids:
            x = x + self.gate * self.id_embedding(pack.pack(ids))
        return self.dropout(norm(x))

    def _encode_rows(self, inputs: SRInputs, video: bool = True, comment: bool = True):
        """Stream states as rows of the real positions: ``(video [Nv, d], v_pack, comment [Nc, d],
        c_pack)``; comment ones None without the comment stream. Padding is never computed (it is
        never read), and a mixed stream that is not asked for (``video``/``comment`` False) is
        skipped: rec reads only the video stream, comm_rank only the comment stream."""
        if self.use_text and (inputs.v_title is None or inputs.c_title is None or inputs.target_title is None):
            raise ValueError("LSVCR needs text embeddings: build SRInputs with lookup_inputs(batch, video_emb, comment_emb)")
        v_pack, c_pack = self._packings(inputs)
        x_v = self._stream_input(inputs.v_title, inputs.v_comment, inputs.v_ids, inputs.v_mask, v_pack,
                                 self.v_position, self.v_norm, inputs.v_position)
        h_v = self.video_encoder.forward_rows(x_v, v_pack, inputs.v_mask, causal=True)
        if not self.use_comment_history:
            return h_v, v_pack, None, None
        x_c = self._stream_input(inputs.c_title, inputs.c_comment, inputs.c_ids, inputs.c_mask, c_pack,
                                 self.c_position, self.c_norm, inputs.c_position)
        h_c = self.comment_encoder.forward_rows(x_c, c_pack, inputs.c_mask, causal=True)
        v = c = None
        if video:
            v_mixed = self.video_mix.forward_rows(h_v, v_pack, inputs.c_mask, kv=h_c, kv_pack=c_pack)
            v = self.video_out(torch.cat([h_v, v_mixed], dim=-1))
        if comment:
            c_mixed = self.comment_mix.forward_rows(h_c, c_pack, inputs.v_mask, kv=h_v, kv_pack=v_pack)
            c = self.comment_out(torch.cat([h_c, c_mixed], dim=-1))
        return v, v_pack, c, c_pack

    def encode(self, inputs: SRInputs) -> tuple[Tensor, Tensor | None]:
        """Stream states: video ``[B, Lv, d]`` and comment ``[B, Lc, d]`` (None without the
        comment stream). States at padded positions are zeros and never read."""
        v, v_pack, c, c_pack = self._encode_rows(inputs)
        return v_pack.unpack(v), None if c is None else c_pack.unpack(c)

    def _query(self, inputs: SRInputs) -> Tensor:
        """The target video as attention query ``[B, d]``."""
        return self._video_embed(inputs.target_ids, inputs.target_title)

    def _packings(self, inputs: SRInputs) -> tuple[Packing, Packing | None]:
        """Row layouts of the two streams: samples sorted by history length (video, then comment)
        and cut into groups of :data:`GROUP_SIZE`, the same groups in both streams so that the mix
        layers can pair them; each group's attention grid is as wide as its longest history."""
        v_len = inputs.v_mask.sum(1)
        c_len = inputs.c_mask.sum(1) if self.use_comment_history else torch.zeros_like(v_len)
        order = torch.argsort(v_len * (inputs.c_mask.shape[1] + 1) + c_len, stable=True)
        v_pack = Packing.of(inputs.v_mask, order, GROUP_SIZE)
        return v_pack, v_pack.like(inputs.c_mask) if self.use_comment_history else None

    def _query_readout(self, query: Tensor, states: Tensor, pack: Packing, mask: Tensor) -> Tensor:
        """``query [B, d]`` attends over the rows ``states [N, d]`` (``pack``) of ``mask [B, L]`` -> ``[B, d]``."""
        q_pack = pack.like(mask.new_ones(mask.shape[0], 1))
        plan = self.query_attention.plan(q_pack, pack, mask, False, query.dtype)
        out = self.query_attention.attend(q_pack.pack(query.unsqueeze(1)), q_pack, states, pack, plan)
        return q_pack.unpack(out).squeeze(1)

    def readouts(self, inputs: SRInputs) -> SRReadouts:
        """All four read-outs, for the alignment's behaviour contrast."""
        v, v_pack, c, c_pack = self._encode_rows(inputs)
        query = self._query(inputs)
        return SRReadouts(
            video_pool=self.pooling.forward_rows(v, v_pack, inputs.v_mask),
            video_query=self._query_readout(query, v, v_pack, inputs.v_mask),
            comment_pool=None if c is None else self.pooling.forward_rows(c, c_pack, inputs.c_mask),
            comment_query=None if c is None else self._query_readout(query, c, c_pack, inputs.c_mask),
        )

    @property
    def tasks(self) -> tuple[str, ...]:
        """rec always; comm_rank needs the comment text (``use_text``)."""
        return ("rec", "comm_rank") if self.use_text else ("rec",)

    def video_user(self, inputs: SRInputs) -> Tensor:
        """The rec read-out: pooling over the video stream, normalised ``[B, d]``."""
        v, v_pack, _, _ = self._encode_rows(inputs, comment=False)
        return F.normalize(self.pooling.forward_rows(v, v_pack, inputs.v_mask), dim=-1)

    def comment_user(self, inputs: SRInputs) -> Tensor:
        """The comm_rank read-out: target-video query attention over the comment stream (over
        the video stream without comment history), normalised ``[B, d]``."""
        v, v_pack, c, c_pack = self._encode_rows(inputs, video=False)
        if c is None:
            out = self._query_readout(self._query(inputs), v, v_pack, inputs.v_mask)
        else:
            out = self._query_readout(self._query(inputs), c, c_pack, inputs.c_mask)
        return F.normalize(out, dim=-1)

    @property
    def trains_on_sequences(self) -> bool:
        """Whole-sequence training needs the video stream alone with positions counted from the
        oldest item (``position_align=start``): then every prefix's states are the sequence's own."""
        return not self.use_comment_history and self.position_align == "start" and not self.random_positions

    def sequence_users(self, inputs: SRInputs) -> Tensor:
        """``[B, L, d]`` normalised rec representation after every position of the video
        histories: pooling over the causal states of each prefix (the score of a state depends on
        its prefix only, so a prefix's softmax is the sequence's scores masked to it)."""
        if not self.trains_on_sequences:
            raise ValueError("LSVCR trains on whole sequences only with use_comment_history=False and "
                             f"position_align='start' (got {self.use_comment_history}, {self.position_align!r})")
        mask = inputs.v_mask
        v_pack, _ = self._packings(inputs)
        x = self._stream_input(inputs.v_title, inputs.v_comment, inputs.v_ids, mask, v_pack, self.v_position,
                               self.v_norm)
        rows = self.video_encoder.forward_rows(x, v_pack, mask, causal=True)
        states = v_pack.unpack(rows)  # [B, L, d]
        scores = v_pack.unpack(self.pooling.score(rows).squeeze(-1))  # [B, L]
        length = mask.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
        weights = masked_softmax(scores.unsqueeze(1).expand(-1, length, -1), causal & mask.unsqueeze(1))
        return F.normalize(weights @ states, dim=-1)

    # ---------------------------------------------------------------- fine-tuning extras

    @property
    def has_id_text(self) -> bool:
        return self.use_ids and self.use_text

    def id_text_pairs(self, inputs: SRInputs) -> tuple[Tensor, Tensor] | None:
        """``(ID embeddings [U, d], adapter(title) [U, d])`` of the batch's unique history videos
        (both streams), for :func:`lsvcr.losses.recommend.id_text_loss`; None with fewer than two."""
        if not self.has_id_text:
            raise ValueError("id_text_loss needs ID embeddings and text embeddings (use_ids=True, use_text=True)")
        # Flat positions of the real items (int gathers; the [B, L, E] text is only read at the U
        # first occurrences below, not copied per item).
        v_pos, c_pos = inputs.v_mask.reshape(-1).nonzero().squeeze(1), inputs.c_mask.reshape(-1).nonzero().squeeze(1)
        ids = torch.cat([inputs.v_ids.reshape(-1)[v_pos], inputs.c_ids.reshape(-1)[c_pos]])
        unique, inverse = torch.unique(ids, return_inverse=True)
        if unique.numel() < 2:
            return None
        # A video's title embedding is the same at every position; take its first occurrence.
        order = torch.arange(ids.numel(), device=ids.device)
        first = torch.full_like(unique, ids.numel()).scatter_reduce(0, inverse, order, reduce="amin")
        titles = self._first_titles(inputs, first, v_pos, c_pos)  # [U, E]
        return self.id_embedding(unique), self.adapter(titles)  # [U, d] each

    @staticmethod
    def _first_titles(inputs: SRInputs, first: Tensor, v_pos: Tensor, c_pos: Tensor) -> Tensor:
        """Title rows ``[U, E]`` at ``first [U]``, offsets into the real video-history items
        (``v_pos``, flat) followed by the real comment-history items (``c_pos``)."""
        width = inputs.v_title.shape[-1]
        from_v = first < v_pos.numel()
        slots_v, slots_c = from_v.nonzero().squeeze(1), (~from_v).nonzero().squeeze(1)
        rows_v = inputs.v_title.reshape(-1, width).index_select(0, v_pos[first[slots_v]])
        rows_c = inputs.c_title.reshape(-1, width).index_select(0, c_pos[first[slots_c] - v_pos.numel()])
        titles = rows_v.new_zeros(first.numel(), width).index_copy(0, slots_v, rows_v)
        return titles.index_copy(0, slots_c, rows_c)

    def load_aligned(self, state_dict: dict[str, Tensor]) -> None:
        """Load an alignment-stage SR state (no ID embeddings) into this model.

        Position tables are resized to this model's ``max_position`` (new rows = mean of the old
        rows; extra rows dropped). Exactly the ID parameters may be missing, and the comment
        stream's only when this model has none; anything else raises ``ValueError``.
        """
        state = dict(state_dict)
        for key in ("v_position.weight", "c_position.weight"):
            if key in state:
                state[key] = _fit_rows(state[key], self.max_position)
        result = self.load_state_dict(state, strict=False)
        allowed_missing = set(ID_KEYS) if self.use_ids else set()
        missing = set(result.missing_keys) - allowed_missing
        unexpected = [k for k in result.unexpected_keys if self.use_comment_history or not k.startswith(COMMENT_PREFIXES)]
        if missing or unexpected:
            raise ValueError(
                f"aligned SR state does not fit: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
            )


def _fit_rows(weight: Tensor, rows: int) -> Tensor:
    """``[P, d]`` -> ``[rows, d]``: truncated, or extended with copies of the mean row."""
    if weight.shape[0] >= rows:
        return weight[:rows].clone()
    extra = weight.mean(dim=0, keepdim=True).expand(rows - weight.shape[0], -1)
    return torch.cat([weight, extra])
