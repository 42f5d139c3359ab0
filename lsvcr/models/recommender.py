"""A sequential recommender with its frozen text tables: the representations the fine-tuning
losses (:mod:`lsvcr.losses.recommend`) are computed from, and the scorer interface the evaluator
uses (``score_videos`` / ``score_comments``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from lsvcr.data.batch import CommRankBatch, HistoryBatch, RecBatch, SequenceBatch
from lsvcr.models.sr.inputs import SRInputs, lookup_inputs, lookup_rows
from lsvcr.models.sr.layers import SequentialRecommender
from lsvcr.utils.ranks import full_ranks


def frozen_table(array: np.ndarray) -> Tensor:
    """A float32 CPU tensor of a text table: a float32 memory map (what
    :func:`lsvcr.data.table_files.load_tables` returns) is wrapped, not copied, so every process on a
    machine reads one copy of the file's pages; it is mapped copy-on-write, so nothing can write to
    the file. Any other array is converted (a copy)."""
    if isinstance(array, np.memmap) and array.dtype == np.float32 and array.flags.c_contiguous and array.filename:
        return torch.from_numpy(np.memmap(array.filename, np.float32, "c", offset=array.offset, shape=array.shape))
    return torch.from_numpy(np.array(array, np.float32))


class Recommender(nn.Module):
    """``sr`` plus the embed stage's text tables and, for tables wider than the SR's input, the
    alignment's ``llm_emb_mlp``.

    The tables are plain attributes, not buffers or parameters: checkpoints hold only trainable
    weights, ``model.to(device)`` and DDP leave them alone (nothing to broadcast), and a table in
    host memory (:func:`frozen_table`, the memory-mapped file) is gathered from batch by batch, only
    the rows a batch reads moving to its device. :meth:`place_tables` copies them to an
    accelerator instead (faster lookups, the tables' size in each process's device memory).

    Args:
        sr: an :class:`~lsvcr.models.sr.layers.SequentialRecommender` (LSVCR, SASRec).
        video_table: ``[V+1, E']`` title embeddings (row 0 = padding), or None for ID-only SRs.
        comment_table: ``[C+1, E']`` comment embeddings, or None.
        projection: ``E' -> E`` module applied to looked-up rows (trained with the SR).
    """

    def __init__(self, sr: SequentialRecommender, video_table: Tensor | None = None,
                 comment_table: Tensor | None = None, projection: nn.Module | None = None):
        super().__init__()
        if sr.use_text and (video_table is None or comment_table is None):
            raise ValueError(f"{type(sr).__name__} reads text: pass both text tables")
        self.sr = sr
        self.projection = projection
        self.video_table = video_table if sr.use_text else None
        self.comment_table = comment_table if sr.use_text else None
        self._cache: dict[str, Tensor] = {}  # a dict: a Parameter set as attribute would register

    def place_tables(self, device: torch.device | str) -> "Recommender":
        """Copy the text tables to ``device`` (a no-op where they already are)."""
        if self.video_table is not None:
            self.video_table, self.comment_table = self.video_table.to(device), self.comment_table.to(device)
        self._cache.clear()
        return self

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

    def videos(self, ids: Tensor) -> Tensor:
        """Candidate video representations ``[..., d]`` for ``ids [...]``."""
        title = None if self.video_table is None else lookup_rows(self.video_table, ids, self.projection)
        return self.sr.video_repr(ids, title)

    def all_videos(self) -> Tensor:
        """``[V+1, d]`` every video's representation (cached between weight updates in eval)."""
        if "videos" in self._cache and not self.training:
            return self._cache["videos"]
        table = self.video_table
        if table is not None:
            table = table.to(next(self.sr.parameters()).device)  # the whole table, once per weight update
            if self.projection is not None:
                table = self.projection(table)
        out = self.sr.video_table_repr(table)
        if not self.training:
            self._cache["videos"] = out.detach()
        return out

    def comments(self, ids: Tensor) -> Tensor:
        """Candidate comment representations ``[..., d]`` for ``ids [...]``."""
        if self.comment_table is None:
            raise ValueError(f"{type(self.sr).__name__} cannot rank comments (it reads no comment text)")
        return self.sr.comment_repr(lookup_rows(self.comment_table, ids, self.projection))

    def forward(self, batch: RecBatch | CommRankBatch | SequenceBatch, loss: Callable[..., dict[str, Tensor]],
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``loss(self, batch, generator)``: the training losses of a batch, e.g.
        :class:`lsvcr.losses.recommend.FinetuneLoss` (``{"loss", "task_loss", ...}``, scalars).

        (A forward, not a helper method, so DDP's gradient hooks see every weight the loss uses.)
        """
        return loss(self, batch, generator)

    # ------------------------------------------------------------------ scorer interface

    @torch.no_grad()
    def score_videos(self, history: HistoryBatch, candidates: Tensor | None) -> Tensor:
        """``[B, K]`` scores of ``candidates`` (or ``[B, V+1]`` of every video when None)."""
        user = self.sr.video_user(self.inputs(history))
        reps = self.all_videos() if candidates is None else self.videos(candidates)
        return self.sr.scores(user, reps)

    @torch.no_grad()
    def rank_videos(self, history: HistoryBatch) -> Tensor:
        """``[B]`` full-ranking rank of each row's target among every video (row 0, padding,
        excluded): ``ranks_single(score_videos(history, None), target, columns >= 1)`` without the
        ``[B, V+1]`` score matrix (:func:`~lsvcr.utils.ranks.full_ranks`)."""
        user = self.sr.video_user(self.inputs(history))
        return full_ranks(user / self.sr.temperature, self.all_videos(), history.target, first=1)

    @torch.no_grad()
    def score_comments(self, history: HistoryBatch, candidates: Tensor) -> Tensor:
        """``[B, K]`` scores of candidate comments of the video being watched."""
        reps = self.comments(candidates)  # first: an SR without comment text fails with that message
        return self.sr.scores(self.sr.comment_user(self.inputs(history)), reps)
