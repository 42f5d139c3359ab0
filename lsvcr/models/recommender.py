"""A sequential recommender with its frozen text tables: the fine-tuning losses and the scorer
interface the evaluator uses (``score_videos`` / ``score_comments``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lsvcr.data.batch import CommRankBatch, HistoryBatch, RecBatch, SequenceBatch
from lsvcr.metrics.ranking import full_ranks
from lsvcr.models.sr.inputs import SRInputs, lookup_inputs, lookup_rows
from lsvcr.models.sr.layers import SequentialRecommender


class Recommender(nn.Module):
    """``sr`` plus the embed stage's text tables (non-persistent buffers: checkpoints hold only
    trainable weights) and, for tables wider than the SR's input, the alignment's ``llm_emb_mlp``.

    Args:
        sr: an :class:`~lsvcr.models.sr.layers.SequentialRecommender` (LSVCR, SASRec).
        video_table: ``[V+1, E']`` title embeddings (row 0 = padding), or None for ID-only SRs.
        comment_table: ``[C+1, E']`` comment embeddings, or None.
        projection: ``E' -> E`` module applied to looked-up rows (trained with the SR).
        id_text_weight, id_text_negatives: the ID-text contrastive term (DESIGN section 6).
    """

    def __init__(self, sr: SequentialRecommender, video_table: Tensor | None = None,
                 comment_table: Tensor | None = None, projection: nn.Module | None = None,
                 id_text_weight: float = 0.1, id_text_negatives: int = 99):
        super().__init__()
        if sr.uses_text and (video_table is None or comment_table is None):
            raise ValueError(f"{type(sr).__name__} reads text: pass both text tables")
        self.sr = sr
        self.projection = projection
        self.register_buffer("video_table", video_table if sr.uses_text else None, persistent=False)
        self.register_buffer("comment_table", comment_table if sr.uses_text else None, persistent=False)
        self.id_text_weight = id_text_weight if getattr(sr, "use_ids", False) and sr.uses_text else 0.0
        self.id_text_negatives = id_text_negatives
        self._cache: dict[str, Tensor] = {}  # a dict: a Parameter set as attribute would register

    def train(self, mode: bool = True) -> "Recommender":
        self._cache.clear()  # weights change in training: the cached table is stale
        return super().train(mode)

    def inputs(self, history: HistoryBatch) -> SRInputs:
        return lookup_inputs(history, self.video_table, self.comment_table, self.projection)

    def sequence_inputs(self, batch: SequenceBatch) -> SRInputs:
        """:class:`SRInputs` of a sequence batch: its windows as video histories (with their hot
        comments) and an empty comment history; ``target_*`` are the windows' first videos, unused
        by :meth:`~lsvcr.models.sr.layers.SequentialRecommender.sequence_users`."""
        ids, empty = batch.ids, batch.ids[:, :0]
        history = HistoryBatch(v_video=ids, v_comment=batch.comments, c_video=empty, c_comment=empty.reshape(-1),
                               c_slot=empty.reshape(-1), target=ids[:, 0], user=torch.zeros_like(ids[:, 0]))
        return self.inputs(history)

    def _videos(self, ids: Tensor) -> Tensor:
        """Candidate video representations ``[..., d]`` for ``ids [...]``."""
        title = None if self.video_table is None else lookup_rows(self.video_table, ids, self.projection)
        return self.sr.video_repr(ids, title)

    def _all_videos(self) -> Tensor:
        """``[V+1, d]`` every video's representation (cached between weight updates in eval)."""
        if "videos" in self._cache and not self.training:
            return self._cache["videos"]
        table = self.video_table
        if table is not None and self.projection is not None:
            table = self.projection(table)
        out = self.sr.video_table_repr(table)
        if not self.training:
            self._cache["videos"] = out.detach()
        return out

    def forward(self, batch: RecBatch | CommRankBatch | SequenceBatch,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Training losses of a batch: ``{"loss", "task_loss", "id_text_loss"}`` (scalars).

        (A forward, not a helper method, so DDP's gradient hooks see it.)
        """
        if isinstance(batch, SequenceBatch):  # every labelled position: a softmax over every video
            inputs = self.sequence_inputs(batch)
            trained = batch.labels > 0
            users = self.sr.sequence_users(inputs)[trained]
            task_loss = self.sr.rec_loss_full(users, self._all_videos(), batch.labels[trained])
        elif isinstance(batch, RecBatch):
            inputs = self.inputs(batch.history)
            user = self.sr.user_repr(inputs, "rec")
            if batch.candidates is None:
                task_loss = self.sr.rec_loss_full(user, self._all_videos(), batch.history.target)
            else:
                reps = self._videos(batch.candidates)
                task_loss = self.sr.rec_loss_sampled(user, reps[:, 0], reps[:, 1:])
        else:
            inputs = self.inputs(batch.history)
            user = self.sr.user_repr(inputs, "comm_rank")
            reps = self.sr.comment_repr(lookup_rows(self.comment_table, batch.candidates, self.projection))
            task_loss = self.sr.comm_rank_loss(user, reps, batch.labels, batch.candidates > 0)
        out = {"task_loss": task_loss}
        if self.id_text_weight > 0:
            out["id_text_loss"] = self.sr.id_text_loss(inputs, self.id_text_negatives, generator)
            out["loss"] = task_loss + self.id_text_weight * out["id_text_loss"]
        else:
            out["loss"] = task_loss
        return out

    # ------------------------------------------------------------------ scorer interface

    @torch.no_grad()
    def score_videos(self, history: HistoryBatch, candidates: Tensor | None) -> Tensor:
        """``[B, K]`` scores of ``candidates`` (or ``[B, V+1]`` of every video when None)."""
        user = self.sr.user_repr(self.inputs(history), "rec")
        reps = self._all_videos() if candidates is None else self._videos(candidates)
        return self.sr.scores(user, reps)

    @torch.no_grad()
    def rank_videos(self, history: HistoryBatch) -> Tensor:
        """``[B]`` full-ranking rank of each row's target among every video (row 0, padding,
        excluded): ``ranks_single(score_videos(history, None), target, columns >= 1)`` without the
        ``[B, V+1]`` score matrix (:func:`~lsvcr.metrics.ranking.full_ranks`)."""
        user = self.sr.user_repr(self.inputs(history), "rec")
        return full_ranks(user / self.sr.temperature, self._all_videos(), history.target, first=1)

    @torch.no_grad()
    def score_comments(self, history: HistoryBatch, candidates: Tensor) -> Tensor:
        """``[B, K]`` scores of candidate comments of the video being watched."""
        if self.comment_table is None:
            raise ValueError(f"{type(self.sr).__name__} cannot rank comments (it reads no comment text)")
        user = self.sr.user_repr(self.inputs(history), "comm_rank")
        reps = self.sr.comment_repr(lookup_rows(self.comment_table, candidates, self.projection))
        return self.sr.scores(user, reps)
