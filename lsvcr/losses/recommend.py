"""The fine-tuning losses (DESIGN section 6): the task's cross-entropy and the ID-text contrast.

The models produce representations and scores; these functions turn them into losses, so no model
imports a loss. :class:`FinetuneLoss` is the whole objective of one batch. It runs inside
:meth:`lsvcr.models.recommender.Recommender.forward` (the stage passes it in), so that DDP's
gradient hooks see every weight it uses::

    loss = FinetuneLoss(rec_task_loss, id_text_weight=0.1, id_text_negatives=99)
    out = model(batch, loss, generator=g)        # {"loss", "task_loss"[, "id_text_loss"]}
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lsvcr.data.batch import CommRankBatch, RecBatch, SequenceBatch
from lsvcr.losses.contrastive import info_nce_indexed, multi_positive_ce, sample_other_indices
from lsvcr.models.sr.inputs import SRInputs


def rec_loss_full(sr, user: Tensor, table_repr: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy over every video: ``user [B, d]``, ``table_repr [V+1, d]`` (row 0 = pad,
    never a candidate), ``target [B]`` video indices -> scalar; logits are ``sr.scores``."""
    # the padding row is left out of the softmax rather than masked: masking copies and fills a
    # [B, V+1] matrix forward and backward, a quarter of a SASRec step at MovieLens size
    return F.cross_entropy(sr.scores(user, table_repr[1:]), target - 1)


def rec_loss_sampled(sr, user: Tensor, target_repr: Tensor, negative_repr: Tensor) -> Tensor:
    """Cross-entropy over the target and K sampled negatives: ``user [B, d]``,
    ``target_repr [B, d]``, ``negative_repr [B, K, d]`` -> scalar."""
    candidates = torch.cat([target_repr.unsqueeze(1), negative_repr], dim=1)
    logits = sr.scores(user, candidates)
    return F.cross_entropy(logits, torch.zeros_like(logits[:, 0], dtype=torch.long))


def comm_rank_loss(sr, user: Tensor, candidate_repr: Tensor, labels: Tensor | None = None,
                   mask: Tensor | None = None) -> Tensor:
    """Comment-ranking loss: ``user [B, d]``, ``candidate_repr [B, K, d]``; ``labels [B, K]``
    bool (None = the positive is column 0, the rest negatives); ``mask [B, K]`` bool, False at
    padded candidates. See :func:`~lsvcr.losses.contrastive.multi_positive_ce`."""
    logits = sr.scores(user, candidate_repr)
    if labels is None:
        labels = torch.zeros_like(logits, dtype=torch.bool)
        labels[:, 0] = True
    return multi_positive_ce(logits, labels, mask)


def id_text_loss(sr, inputs: SRInputs, num_negatives: int = 99, generator: torch.Generator | None = None) -> Tensor:
    """InfoNCE between the ID embeddings and the adapted titles of the batch's unique history
    videos (``sr.id_text_pairs``), both directions; each video's negatives are other unique videos
    of the batch (``min(num_negatives, U - 1)`` of them, never itself). Unweighted scalar."""
    pairs = sr.id_text_pairs(inputs)
    if pairs is None:  # fewer than two unique videos: nothing to contrast (a zero that keeps the graph)
        return sr.id_embedding.weight.sum() * 0.0
    id_emb, text_emb = pairs
    n = id_emb.shape[0]
    neg_text = sample_other_indices(n, num_negatives, id_emb.device, generator)
    neg_id = sample_other_indices(n, num_negatives, id_emb.device, generator)
    id_to_text = info_nce_indexed(id_emb, text_emb, neg_text, sr.temperature)
    text_to_id = info_nce_indexed(text_emb, id_emb, neg_id, sr.temperature)
    return (id_to_text + text_to_id) / 2


def sequence_task_loss(model, batch: SequenceBatch) -> tuple[SRInputs, Tensor]:
    """rec on whole sequences: every labelled position of a :class:`~lsvcr.data.batch.SequenceBatch`,
    a softmax over every video. ``(inputs, loss)``; ``model`` a
    :class:`~lsvcr.models.recommender.Recommender`."""
    inputs = model.sequence_inputs(batch)
    trained = batch.labels > 0
    users = model.sr.sequence_users(inputs)[trained]
    return inputs, rec_loss_full(model.sr, users, model.all_videos(), batch.labels[trained])


def rec_task_loss(model, batch: RecBatch) -> tuple[SRInputs, Tensor]:
    """rec on one target per sample (:class:`~lsvcr.data.batch.RecBatch`): a softmax over every
    video, or the target against the batch's sampled negatives. ``(inputs, loss)``."""
    inputs = model.inputs(batch.history)
    user = model.sr.video_user(inputs)
    if batch.candidates is None:
        return inputs, rec_loss_full(model.sr, user, model.all_videos(), batch.history.target)
    reps = model.videos(batch.candidates)
    return inputs, rec_loss_sampled(model.sr, user, reps[:, 0], reps[:, 1:])


def comm_rank_task_loss(model, batch: CommRankBatch) -> tuple[SRInputs, Tensor]:
    """comm_rank (:class:`~lsvcr.data.batch.CommRankBatch`): the watched video's candidate
    comments, several positives. ``(inputs, loss)``."""
    inputs = model.inputs(batch.history)
    user = model.sr.comment_user(inputs)
    return inputs, comm_rank_loss(model.sr, user, model.comments(batch.candidates), batch.labels, batch.candidates > 0)


class FinetuneLoss:
    """The fine-tuning objective of a batch: the task's loss plus ``id_text_weight`` x
    :func:`id_text_loss` (for an SR with both ID and text embeddings, ``sr.has_id_text``).

    Args:
        task_loss: ``(model, batch) -> (inputs, loss)``, the task's own term (the task object
            picks it: :func:`rec_task_loss`, :func:`sequence_task_loss`, :func:`comm_rank_task_loss`).
    """

    def __init__(self, task_loss: Callable, id_text_weight: float = 0.1, id_text_negatives: int = 99):
        self.task_loss = task_loss
        self.id_text_weight, self.id_text_negatives = float(id_text_weight), int(id_text_negatives)

    def __call__(self, model, batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``{"loss", "task_loss"[, "id_text_loss"]}`` (scalars) of ``model``, a
        :class:`~lsvcr.models.recommender.Recommender`, on ``batch``."""
        inputs, task_loss = self.task_loss(model, batch)
        out = {"task_loss": task_loss}
        if self.id_text_weight > 0 and model.sr.has_id_text:
            out["id_text_loss"] = id_text_loss(model.sr, inputs, self.id_text_negatives, generator)
            out["loss"] = task_loss + self.id_text_weight * out["id_text_loss"]
        else:
            out["loss"] = task_loss
        return out
