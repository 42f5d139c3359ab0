"""The SR's input form: text embeddings per history position, not indices.

Fine-tuning looks the embeddings up in frozen tables (:func:`lookup_inputs`); alignment computes
them with the LLM inside the step and can call the same function on per-batch tables whose rows
are batch-local (row 0 = padding either way), so the SR never sees where they came from.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from lsvcr.data.batch import HistoryBatch


@dataclass
class SRInputs:
    """Both histories of B samples as embeddings (E = text embedding size).

    Text fields are None when the inputs were built without tables (ID-only models).

    Attributes:
        v_title: ``[B, Lv, E]`` title of each video-history item.
        v_comment: ``[B, Lv, E]`` the hot comment shown with it (zeros when none).
        v_ids: ``[B, Lv]`` video indices (0 = padding).
        v_mask: ``[B, Lv]`` bool, True at real items.
        c_title: ``[B, Lc, E]`` title of each comment-history video.
        c_comment: ``[B, Lc, E]`` mean of the user's comments under that video.
        c_ids: ``[B, Lc]`` video indices (0 = padding).
        c_mask: ``[B, Lc]`` bool, True at real items.
        target_ids: ``[B]`` target video (comm_rank: the video being watched).
        target_title: ``[B, E]`` its title.
        v_position, c_position: ``[B, Lv]``, ``[B, Lc]`` given position ids (alignment's random
            positions drawn by the collator); None = the SR's own.
    """

    v_title: Tensor | None
    v_comment: Tensor | None
    v_ids: Tensor
    v_mask: Tensor
    c_title: Tensor | None
    c_comment: Tensor | None
    c_ids: Tensor
    c_mask: Tensor
    target_ids: Tensor
    target_title: Tensor | None
    v_position: Tensor | None = None
    c_position: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.v_ids.shape[0]


def lookup_rows(table: Tensor, index: Tensor, projection: nn.Module | None = None) -> Tensor:
    """``table [N, E']`` rows at ``index [...]`` -> ``[..., E]`` on ``index``'s device, through
    ``projection`` (E' -> E) when given. Only the gathered rows are projected, never the whole table.

    The rows are gathered where the table is and only they move: a table left in host memory (the
    memory-mapped file) serves a batch on an accelerator with one ``[..., E']`` copy.
    """
    rows = table.index_select(0, index.reshape(-1).to(table.device)).reshape(*index.shape, table.shape[-1])
    rows = rows.to(index.device)
    return rows if projection is None else projection(rows)


def _slot_mean(values: Tensor, slot: Tensor, weight: Tensor, num_slots: int) -> Tensor:
    """Weighted mean of ``values [N, E]`` per ``slot [N]`` -> ``[num_slots, E]``; empty slots = 0."""
    # in place on fresh buffers: the out-of-place forms copy the [num_slots, E] zeros first
    sums = values.new_zeros(num_slots, values.shape[-1]).index_add_(0, slot, values * weight.unsqueeze(-1))
    counts = weight.new_zeros(num_slots).index_add_(0, slot, weight)
    return sums.div_(counts.clamp_(min=1).unsqueeze(-1))


def lookup_inputs(
    batch: HistoryBatch,
    video_emb: Tensor | None,
    comment_emb: Tensor | None,
    projection: nn.Module | None = None,
) -> SRInputs:
    """Turn an index batch into :class:`SRInputs`.

    ``video_emb [V+1, E']`` and ``comment_emb [C+1, E']`` are text tables (row 0 = padding) that
    ``batch``'s indices point into, global or batch-local. ``projection`` (the alignment's
    ``llm_emb_mlp``, for tables wider than the SR's input) is applied per comment before the
    comment-history mean, which is how alignment, encoding each comment on its own, sees them.
    With both tables None the text fields are None (ID-only models).
    """
    text = video_emb is not None and comment_emb is not None
    if not text and (video_emb is not None or comment_emb is not None):
        raise ValueError("lookup_inputs needs both text tables or neither")
    v_title = v_comment = c_title = c_comment = target_title = None
    if text:
        b, lc = batch.c_video.shape
        v_title = lookup_rows(video_emb, batch.v_video, projection)
        v_comment = lookup_rows(comment_emb, batch.v_comment, projection)
        c_title = lookup_rows(video_emb, batch.c_video, projection)
        target_title = lookup_rows(video_emb, batch.target, projection)
        flat = lookup_rows(comment_emb, batch.c_comment, projection)  # [N, E]
        # Index 0 is padding even inside the flat list; it must not dilute the mean.
        weight = (batch.c_comment > 0).to(flat.dtype)
        c_comment = _slot_mean(flat, batch.c_slot, weight, b * lc).view(b, lc, flat.shape[-1])
    return SRInputs(
        v_title=v_title,
        v_comment=v_comment,
        v_ids=batch.v_video,
        v_mask=batch.v_mask,
        c_title=c_title,
        c_comment=c_comment,
        c_ids=batch.c_video,
        c_mask=batch.c_mask,
        target_ids=batch.target,
        target_title=target_title,
        v_position=batch.v_position,
        c_position=batch.c_position,
    )
