"""Typed batches: the index form of both user histories, as the data loader hands them out.

Histories are right-padded: position 0 is the oldest kept item, padding (index 0) follows the
last real item. The comment history is ragged (several comments per video), so its comments are
given flat with the slot each belongs to; the SR averages the comments of a slot.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class HistoryBatch:
    """Both histories of B samples plus the target, as indices (0 = padding).

    Attributes:
        v_video: ``[B, Lv]`` video history, oldest first.
        v_comment: ``[B, Lv]`` the hot comment shown with each history video (0 = none).
        c_video: ``[B, Lc]`` videos of the comment history (one per (user, video) group).
        c_comment: ``[N]`` every comment the user interacted with, all groups of the batch.
        c_slot: ``[N]`` flat slot ``b * Lc + j`` of each entry of ``c_comment``.
        target: ``[B]`` target video (rec: the next video; comm_rank: the video being watched).
        user: ``[B]`` user index (for scorers that need it, e.g. an oracle or a user-ID model).
        v_position, c_position: ``[B, Lv]``, ``[B, Lc]`` position ids the SR should use instead of
            its own (the alignment's random positions, drawn per sample by the collator); None =
            the SR's.
    """

    v_video: torch.Tensor
    v_comment: torch.Tensor
    c_video: torch.Tensor
    c_comment: torch.Tensor
    c_slot: torch.Tensor
    target: torch.Tensor
    user: torch.Tensor | None = None
    v_position: torch.Tensor | None = None
    c_position: torch.Tensor | None = None

    @property
    def v_mask(self) -> torch.Tensor:
        """``[B, Lv]`` True at real items."""
        return self.v_video > 0

    @property
    def c_mask(self) -> torch.Tensor:
        """``[B, Lc]`` True at real items."""
        return self.c_video > 0

    def to(self, device: torch.device | str) -> "HistoryBatch":
        return type(self)(**{f.name: None if getattr(self, f.name) is None else
                             getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})

    def rows(self, lo: int, hi: int) -> "HistoryBatch":
        """Samples ``lo:hi`` (the flat comment list is filtered by slot)."""
        if lo == 0 and hi >= len(self.target):
            return self
        width = self.c_video.shape[1]
        keep = (self.c_slot >= lo * width) & (self.c_slot < hi * width)
        cut = [None if x is None else x[lo:hi] for x in (self.user, self.v_position, self.c_position)]
        return HistoryBatch(self.v_video[lo:hi], self.v_comment[lo:hi], self.c_video[lo:hi], self.c_comment[keep],
                            self.c_slot[keep] - lo * width, self.target[lo:hi], *cut)


@dataclass
class RecBatch:
    """A video-recommendation batch.

    Attributes:
        history: histories; ``history.target`` is the next video.
        candidates: ``[B, 1+K]`` the target (column 0) and K sampled negative videos, or None
            for a softmax over every video.
    """

    history: HistoryBatch
    candidates: torch.Tensor | None = None

    def to(self, device) -> "RecBatch":
        return RecBatch(self.history.to(device), None if self.candidates is None else self.candidates.to(device))


@dataclass
class CommRankBatch:
    """A comment-ranking batch.

    Attributes:
        history: histories; ``history.target`` is the video being watched.
        candidates: ``[B, K]`` candidate comments (0 = padding), positives first in training.
        labels: ``[B, K]`` bool, True at positives.
    """

    history: HistoryBatch
    candidates: torch.Tensor
    labels: torch.Tensor

    def to(self, device) -> "CommRankBatch":
        return CommRankBatch(self.history.to(device), self.candidates.to(device), self.labels.to(device))


@dataclass
class SequenceBatch:
    """Windows of users' video sequences where every position is a target (the standard SASRec
    training: one causal pass trains up to ``L`` next-video predictions per window).

    Attributes:
        ids: ``[B, L]`` input videos, oldest first, right-padded with 0.
        labels: ``[B, L]`` the next video at each position, 0 where there is no loss (padding, or a
            position another window trains).
        comments: ``[B, L]`` the hot comment shown with each input video (0 = none), as
            :attr:`HistoryBatch.v_comment`; read by SRs with text inputs.
    """

    ids: torch.Tensor
    labels: torch.Tensor
    comments: torch.Tensor

    def to(self, device) -> "SequenceBatch":
        return SequenceBatch(*(t.to(device, non_blocking=True) for t in (self.ids, self.labels, self.comments)))


def sorted_random_positions(noise: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Robust position ids ``[B, L]`` (``v_position`` / ``c_position`` above, and the SR's own draw in
    training): each sample's real items (``mask [B, L]``, right-padded) get a
    sorted random subset of ``0..P-1``, drawn from ``noise [B, P]`` (uniforms); padding gets 0.

    The subset has the sample's own length, so its draw does not depend on how wide the batch is.
    """
    perm = noise.argsort(dim=-1)[:, : mask.shape[1]].to(mask.device)
    return torch.where(mask, torch.where(mask, perm, noise.shape[1]).sort(dim=-1).values, 0)
