"""SASRec (Kang & McAuley 2018), the ID-only baseline, as RecBole implements it.

Item embedding + learned positions, LayerNorm, dropout, a causal post-LN Transformer, and the
state at the last real position as the user representation. Scores are raw dot products with the
item embeddings (RecBole's convention; no normalisation, temperature 1). It reads only the video
history's ids, so it answers ``task=rec`` only (:attr:`tasks`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lsvcr.models.sr.inputs import SRInputs
from lsvcr.models.sr.layers import (
    SequentialRecommender,
    TransformerEncoder,
    init_weights,
)


class SASRec(SequentialRecommender):
    """ID-only sequential recommender over the video history."""

    tasks = ("rec",)
    use_text = False
    trains_on_sequences = True

    def __init__(
        self,
        num_videos: int,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        inner_size: int = 256,
        dropout: float = 0.2,
        attn_dropout: float = 0.2,
        max_position: int = 50,
        layer_norm_eps: float = 1e-12,
    ):
        super().__init__()
        self.num_videos = num_videos
        self.max_position = max_position
        self.temperature = 1.0
        self.item_embedding = nn.Embedding(num_videos + 1, hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(max_position, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.encoder = TransformerEncoder(
            num_layers, hidden_size, num_heads, inner_size, dropout, attn_dropout, layer_norm_eps
        )
        self.apply(init_weights)

    def video_user(self, inputs: SRInputs) -> Tensor:
        """The rec read-out: the state at the last real video-history position ``[B, d]`` (not normalised)."""
        ids, mask = inputs.v_ids, inputs.v_mask
        states = self.sequence_states(ids)  # [B, L, d]
        # Right padding: the last real item sits at (number of real items - 1); an empty
        # history reads position 0, whose state attends to nothing real.
        last = (mask.sum(dim=1) - 1).clamp(min=0)
        return states[torch.arange(ids.shape[0], device=ids.device), last]

    def sequence_users(self, inputs: SRInputs) -> Tensor:
        """``[B, L, d]`` the causal state at every position (see :meth:`sequence_states`)."""
        return self.sequence_states(inputs.v_ids)

    def sequence_states(self, ids: Tensor) -> Tensor:
        """The causal state at every position of right-padded ``ids [B, L]``: ``[B, L, d]``;
        position ``i`` has seen ``ids[:, :i+1]`` only, so it predicts the video after it."""
        b, length = ids.shape
        if length > self.max_position:
            raise ValueError(f"history length {length} exceeds max_position {self.max_position}")
        positions = torch.arange(length, device=ids.device).expand(b, length)
        x = self.dropout(self.norm(self.item_embedding(ids) + self.position_embedding(positions)))
        return self.encoder(x, ids > 0, causal=True)

    def video_repr(self, ids: Tensor, title_emb: Tensor | None = None) -> Tensor:
        """Candidate videos: ``ids [...]`` -> ``[..., d]`` (``title_emb`` is ignored)."""
        return self.item_embedding(ids)

    def video_table_repr(self, video_emb_table: Tensor | None = None) -> Tensor:
        """Every video: ``[V+1, d]`` (the table argument is ignored)."""
        return self.item_embedding.weight

    def comment_repr(self, comment_emb: Tensor) -> Tensor:
        raise ValueError("SASRec is an ID-only video recommender and cannot rank comments; use task=rec")
