"""The alignment stage's losses (DESIGN section 4), on representations already computed.

- ``lm_loss``: next-token cross-entropy on response tokens only.
- ``rec_loss``: InfoNCE between the SR user representation of each sample's task and its target
  text's key, in-batch negatives from every process.
- ``contrast_loss`` = behaviour contrast + symmetric InfoNCE(SR repr, LLM repr) (half each way).
  Behaviour contrast: the LLM representation is the anchor; the task-relevant SR read-out is the
  positive (rec: video-stream pooling; comm_rank: comment-stream query attention), the other
  stream's read-out the negative (rec: comment-stream pooling; comm_rank: video-stream query
  attention). Samples without a comment history contribute nothing: their comment-stream read-out
  has no evidence to be contrasted with.

Every mean follows the distributed convention of :mod:`lsvcr.losses.contrastive`: a rank's value
is ``(sum of its terms) * world_size / (number of terms on all ranks)``, so the averaged gradient
is that of the global mean even when ranks hold different numbers of terms.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from lsvcr.data.align_batch import TASK_IDS, AlignBatch
from lsvcr.losses.contrastive import batch_info_nce, behaviour_contrast, gather_rows, multi_process, symmetric_info_nce
from lsvcr.models.align import AlignmentModel
from lsvcr.models.sr.lsvcr import SRReadouts

REC, COMM_RANK = TASK_IDS["rec"], TASK_IDS["comm_rank"]  # an AlignBatch row's task id
#: the scalar losses of an alignment forward (:class:`AlignmentLoss`: these and the diagnostics)
LOSS_KEYS = ("loss", "lm_loss", "rec_loss", "contrast_loss", "behaviour_loss", "llm_sr_loss")
#: logged next to the losses (:func:`alignment_losses`): in-batch retrieval accuracy and representation collapse
DIAGNOSTIC_KEYS = ("rec_top1", "llm_sr_top1", "sr_cosine", "llm_cosine")


def global_mean(total: Tensor, count: int, group=None) -> Tensor:
    """``total`` (a sum of ``count`` local terms) -> its share of the mean over all ranks' terms.

    Every rank must call this (it all-reduces the count), also one with ``count == 0``.
    """
    if not multi_process(group):
        return total / max(count, 1)
    n = torch.tensor(float(count), device=total.device)
    dist.all_reduce(n, group=group)
    return total * dist.get_world_size(group) / n.clamp(min=1.0)


def response_lm_loss(hidden: Tensor, labels: Tensor, lm_head: Callable[[Tensor], Tensor], group=None) -> Tensor:
    """Causal-LM loss on response tokens: ``hidden [B, T, H]`` (decoder output), ``labels [B, T]``
    (-100 = ignore). The head runs only at positions that predict a label, so a 150k-word
    vocabulary never costs ``B x T x V`` logits."""
    target = labels[:, 1:]
    keep = target != -100
    logits = lm_head(hidden[:, :-1][keep])  # [K, vocab]
    if logits.dtype in (torch.float16, torch.bfloat16):  # a half-precision softmax over a big vocabulary loses too much
        logits = logits.float()
    total = F.cross_entropy(logits, target[keep], reduction="sum")
    return global_mean(total, int(keep.sum()), group)


def task_user_repr(readouts: SRReadouts, task: Tensor) -> Tensor:
    """``[B, d]`` normalised SR user representation of each sample's task (rec: video-stream
    pooling; comm_rank: comment-stream query attention, the video stream's without one)."""
    comm = readouts.comment_query if readouts.comment_query is not None else readouts.video_query
    return F.normalize(torch.where((task == REC).unsqueeze(-1), readouts.video_pool, comm), dim=-1)


def masked_behaviour_contrast(
    anchor: Tensor, positive: Tensor, negative: Tensor, mask: Tensor, temperature: float, group=None
) -> Tensor:
    """:func:`behaviour_contrast` over the rows where ``mask [B]`` is True (``[B, d]`` inputs)."""
    count = int(mask.sum())
    if count == 0:
        # zero, but every input stays in the graph: each rank's backward reaches the same parameters
        total = (anchor.sum() + positive.sum() + negative.sum()) * 0.0
    else:
        total = behaviour_contrast(anchor[mask], positive[mask], negative[mask], temperature) * count
    return global_mean(total, count, group)


@torch.no_grad()
def in_batch_top1(query: Tensor, keys: Tensor, group=None) -> Tensor:
    """Share of rows whose own key (local row i of ``keys``) scores strictly above every other key of
    every rank (cosine): the in-batch retrieval accuracy an InfoNCE term trains. Ties count as misses,
    so collapsed (constant) representations score 0; chance is about 1 / (keys on all ranks). Same
    distributed convention as the losses (averaged over ranks it is the global share)."""
    all_keys, offset, _ = gather_rows(keys.detach(), group)
    scores = F.normalize(query.detach(), dim=-1) @ F.normalize(all_keys, dim=-1).T
    rows = torch.arange(query.shape[0], device=query.device)
    own = scores[rows, offset + rows]
    others = scores.index_put((rows, offset + rows), scores.new_tensor(float("-inf")))
    hits = (own > others.max(dim=1).values).sum(dtype=torch.float32) if scores.shape[1] > 1 else own.new_tensor(
        float(query.shape[0]))
    return global_mean(hits, query.shape[0], group)


@torch.no_grad()
def mean_pairwise_cosine(x: Tensor, group=None) -> Tensor:
    """Mean cosine between different rows of ``x [B, d]`` gathered from every rank: near 1 = the
    representation has collapsed to one direction; 0 for a batch of one. Every rank returns the
    value of the whole gathered batch (so averaged over ranks it is that value, and 2 ranks x m rows
    report what 1 process x 2m does, like the other diagnostics)."""
    z = F.normalize(gather_rows(x.detach().float(), group)[0], dim=-1)
    n = z.shape[0]
    if n < 2:
        return z.new_zeros(())
    total = z.sum(dim=0).square().sum() - n  # sum over i != j of z_i . z_j
    return total / (n * (n - 1))


def alignment_losses(
    llm_repr: Tensor,
    readouts: SRReadouts,
    target_key: Tensor,
    task: Tensor,
    has_comment_history: Tensor,
    temperature: float,
    group=None,
) -> dict[str, Tensor]:
    """The SR-side losses of one batch.

    Args:
        llm_repr: ``[B, d]`` LLM user representation (``contrast_adapter`` output).
        readouts: the SR's four read-outs, ``[B, d]`` each.
        target_key: ``[B, d]`` target text key (rec: the target title; comm_rank: the positive comment).
        task: ``[B]`` 0 = rec, 1 = comm_rank.
        has_comment_history: ``[B]`` bool.

    Returns:
        ``rec_loss``, ``behaviour_loss``, ``llm_sr_loss`` and ``contrast_loss`` (= the last two summed),
        and diagnostics without gradient: ``rec_top1`` and ``llm_sr_top1`` (:func:`in_batch_top1` of the
        SR representation against the target keys and the LLM representations), ``sr_cosine`` and
        ``llm_cosine`` (:func:`mean_pairwise_cosine` over all ranks' rows: collapse of either user
        representation).
    """
    sr_repr = task_user_repr(readouts, task)
    rec_loss = batch_info_nce(sr_repr, target_key, temperature, group)
    llm_sr = symmetric_info_nce(sr_repr, llm_repr, temperature, group)
    if readouts.comment_pool is None:  # an SR without the comment stream has nothing to contrast
        behaviour = global_mean(llm_repr.sum() * 0.0, 0, group)
    else:
        is_rec = (task == REC).unsqueeze(-1)
        positive = torch.where(is_rec, readouts.video_pool, readouts.comment_query)
        negative = torch.where(is_rec, readouts.comment_pool, readouts.video_query)
        behaviour = masked_behaviour_contrast(llm_repr, positive, negative, has_comment_history, temperature, group)
    return {"rec_loss": rec_loss, "behaviour_loss": behaviour, "llm_sr_loss": llm_sr, "contrast_loss": behaviour + llm_sr,
            "rec_top1": in_batch_top1(sr_repr, target_key, group), "llm_sr_top1": in_batch_top1(sr_repr, llm_repr, group),
            "sr_cosine": mean_pairwise_cosine(sr_repr, group), "llm_cosine": mean_pairwise_cosine(llm_repr, group)}


class AlignmentLoss:
    """The alignment objective of one batch, passed into ``AlignmentModel.forward``:
    ``loss = lm_loss + rec_weight * rec_loss + contrast_weight * contrast_loss`` (DESIGN section 4)
    with the parts and diagnostics of :func:`alignment_losses`. The weights and the temperature are
    the model's (``model.rec_weight``, ``model.contrast_weight``, ``model.temperature``): saved with
    its checkpoint and changed on it by a loss warm-up (:mod:`lsvcr.losses.warmup`)."""

    def __call__(self, model: AlignmentModel, batch: AlignBatch) -> dict[str, Tensor]:
        r = model.representations(batch)
        lm_loss = response_lm_loss(r.hidden, batch.labels, r.lm_head)
        out = alignment_losses(r.llm_repr, r.readouts, r.target_key, batch.task, batch.has_comment_history,
                               model.temperature)
        out["lm_loss"] = lm_loss
        out["loss"] = lm_loss + model.rec_weight * out["rec_loss"] + model.contrast_weight * out["contrast_loss"]
        return out
