"""Alignment batches (DESIGN section 4): one batch feeds both the LLM (prompts) and the SR (texts).

For rows of the ``rec`` and/or ``comm_rank`` sample sets (``task=joint`` mixes both; every row
carries its task id) :class:`AlignCollator` builds

- the LLM side: prompt + response tokens, labels and the last prompt token's column;
- the SR side: a :class:`HistoryBatch` whose indices point into a *batch-local* text table: the
  unique titles and comments this batch needs, tokenised as ``item_ids [N, S]``. The training step
  encodes them with the LLM text encoder and prepends a zero row, so local index ``r + 1`` is row
  ``r`` of ``item_ids`` and 0 stays padding (:func:`lsvcr.models.sr.inputs.lookup_inputs` reads
  it like a global table).

Two views (training only): with probability ``sample_prob`` per sample (drawn separately for the two
histories) and ``item_prob`` per history item, the prompt and the SR get *different* hot comments
of a video-history item (two of its top ``hot_comments``), and a comment-history item's comments
are mixed with as many popular comments of that video the user did not interact with and dealt
alternately to the two views. Without augmentation both views share one hot comment, drawn from
the top ``hot_comments`` in training; evaluation uses the hottest and never augments.

Every random choice in training (hot comment, augmentation, kept comments, response, template, the
SR's random positions) is drawn per sample by :class:`SampleRandom`, from streams of that sample
alone: a sample's draws do not depend on the other samples of its batch, so one process with
micro-batch 2m and two processes with m each build the same samples.

Per batch the work is numpy gathers over the prepared arrays; Python loops only assemble the
prompt strings of the batch's samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset, get_worker_info

from lsvcr.data.batch import HistoryBatch, sorted_random_positions
from lsvcr.data.history import HistoryGatherer, ragged_index
from lsvcr.data.prompts import PromptBuilder, PromptExample
from lsvcr.data.store import TASKS, PreparedDataset, SampleSet
from lsvcr.data.tokens import encode_texts
from lsvcr.errors import ConfigError, DataError

TASK_NAMES = TASKS  # a batch row's task id = the position of its sample set's name
TASK_IDS = {name: i for i, name in enumerate(TASK_NAMES)}
# one random stream per kind of draw (SampleRandom): a draw of one kind never shifts another's
(HOT, HOT_AUG_SAMPLE, HOT_AUG_ITEM, HOT_SHIFT, KEEP, AUG_SAMPLE, AUG_ITEM, POPULAR, FALLBACK, DEAL, RESPONSE,
 TEMPLATE, V_POSITION, C_POSITION) = range(14)


@dataclass
class AugmentConfig:
    """Two-view augmentation settings (paper: 0.5 per sample, 0.3 per item, top-3 hot comments)."""

    sample_prob: float = 0.5
    item_prob: float = 0.3
    hot_comments: int = 3  # a video's hot comments: its most liked ones
    popular_comments: int = 10  # pool of popular comments mixed into comment-history items

    def __post_init__(self):
        for name in ("sample_prob", "item_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"align.augment.{name}={getattr(self, name)}: expected a probability in [0, 1]")
        for name in ("hot_comments", "popular_comments"):
            if getattr(self, name) < 1:
                raise ConfigError(f"align.augment.{name}={getattr(self, name)}: expected >= 1")


class SampleRandom:
    """Random draws per sample: sample ``i`` draws kind ``stream`` from a generator seeded by
    ``(*keys[i], stream)``, one uniform per element it owns, in element order.

    A sample's draws thus depend only on its key and on its own elements: not on the other samples
    of the batch, the batch size or the padded history width (histories are right-padded, so a
    wider batch only appends draws). The alignment keys a sample by (seed, epoch, position in the
    epoch's order), so the process count does not change any draw.
    """

    def __init__(self, keys: Sequence[Sequence[int]]):
        self.keys = [[int(k) for k in key] for key in keys]

    @classmethod
    def of(cls, rng: SampleRandom | np.random.Generator | None, n: int) -> SampleRandom | None:
        """``rng`` itself, or per-sample keys for ``n`` samples drawn from a generator."""
        if rng is None or isinstance(rng, SampleRandom):
            return rng
        return cls([[int(k)] for k in rng.integers(0, 2**63, size=n)])

    def __len__(self) -> int:
        return len(self.keys)

    def random(self, stream: int, owner: np.ndarray) -> np.ndarray:
        """``[len(owner)]`` uniforms in [0, 1); element ``k`` belongs to sample ``owner[k]``."""
        owner = np.asarray(owner, np.int64)
        out = np.empty(len(owner))
        for i in np.unique(owner):
            mine = owner == i
            out[mine] = np.random.default_rng([*self.keys[i], stream]).random(int(mine.sum()))
        return out

    def rows(self, stream: int, width: int) -> np.ndarray:
        """``[B, width]`` uniforms, row ``i`` from sample ``i``."""
        return self.random(stream, np.repeat(np.arange(len(self)), width)).reshape(len(self), width)


@dataclass
class AlignBatch:
    """One alignment batch (B samples, T prompt+response tokens, N local texts of S tokens).

    Attributes:
        input_ids: ``[B, T]`` prompt then response then EOS, padded on the tokenizer's side.
        attention_mask: ``[B, T]``.
        labels: ``[B, T]`` response tokens and EOS; -100 on the prompt and padding.
        last_prompt_index: ``[B]`` column of each row's last prompt token.
        item_ids: ``[N, S]`` the batch's unique texts (local index ``r + 1`` = row ``r``).
        item_mask: ``[N, S]``.
        item_keys: ``[N]`` each text's global key (titles ``1..V``, comments ``V + 1..V + C``).
        history: both histories and the target video as *local* indices.
        target_row: ``[B]`` local index of the SR's target text (rec: the target title;
            comm_rank: the positive comment that is also the LM response).
        task: ``[B]`` 0 = rec, 1 = comm_rank.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    last_prompt_index: torch.Tensor
    item_ids: torch.Tensor
    item_mask: torch.Tensor
    item_keys: torch.Tensor
    history: HistoryBatch
    target_row: torch.Tensor
    task: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def has_comment_history(self) -> torch.Tensor:
        """``[B]`` bool, True where the sample has at least one comment-history item."""
        return self.history.c_mask.any(dim=1)

    def to(self, device) -> "AlignBatch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        moved = {k: v.to(device) if k == "history" else v.to(device, non_blocking=True) for k, v in moved.items()}
        return AlignBatch(**moved)


@dataclass
class AlignViews:
    """A batch in index form with both views (global indices; SR view inside ``history``).

    Attributes:
        task: ``[B]`` task ids.
        history: histories as the SR sees them (``v_comment`` and ``c_comment``/``c_slot`` are the
            SR view).
        v_comment_llm: ``[B, Lv]`` the hot comment the prompt shows with each video-history item.
        c_comment_llm: ``[M]`` comments the prompt lists, with ``c_slot_llm [M]`` (``b * Lc + j``).
        response: ``[B]`` the comm_rank response comment (0 for rec rows).
    """

    task: np.ndarray
    history: HistoryBatch
    v_comment_llm: np.ndarray
    c_comment_llm: np.ndarray
    c_slot_llm: np.ndarray
    response: np.ndarray


def align_items(ds: PreparedDataset, tasks: Sequence[str], split: str = "train") -> np.ndarray:
    """``[N, 2]`` int64 rows ``(task id, row)`` of every sample of ``tasks`` in ``split``."""
    parts = [np.stack([np.full(len(ds.samples(t, split)), TASK_IDS[t]), np.arange(len(ds.samples(t, split)))], 1)
             for t in tasks]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 2), np.int64)


class AlignSamples(Dataset):
    """Map-style dataset of ``(task id, row)`` pairs; :class:`AlignCollator` turns them into batches."""

    def __init__(self, ds: PreparedDataset, tasks: Sequence[str], split: str = "train"):
        unknown = set(tasks) - set(TASK_NAMES)
        if unknown or not tasks:
            raise ConfigError(f"alignment tasks {list(tasks)}: expected a non-empty subset of {list(TASK_NAMES)}")
        self.items = align_items(ds, tasks, split)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, int]:
        return int(self.items[i, 0]), int(self.items[i, 1])


def _group_rank(groups: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order sorting by ``(groups, keys)`` and each element's rank within its group (in that order)."""
    order = np.lexsort((keys, groups))
    g = groups[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if len(g) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(g)])
    return order, np.arange(len(g)) - np.repeat(starts, sizes)


class _Texts:
    """Texts of an Arrow string array by 1-based index (element i is index i+1), fetched in one take."""

    def __init__(self, array: pa.Array):
        self.array = array

    def fetch(self, ids: np.ndarray) -> dict[int, str]:
        ids = np.unique(ids[ids > 0])
        texts = self.array.take(pa.array(ids - 1, type=pa.int64())).to_pylist()
        return {int(i): t or "" for i, t in zip(ids, texts)}


class AlignCollator:
    """``[(task id, row), ...]`` -> :class:`AlignBatch` (use as a DataLoader ``collate_fn``).

    Args:
        ds: the prepared dataset.
        gatherer: history gathering (history lengths come from it).
        prompt_builder: renders and tokenises prompts; its tokenizer also tokenises the SR texts.
        text_max_length: tokens per title / comment for the text encoder (the embedding stage's
            ``embed.max_length``, so alignment and the frozen tables see the same tokens).
        aug: two-view augmentation settings.
        seed: seeds augmentation, template and positive choices when the collator is called
            (``__call__``); each DataLoader worker and epoch (:meth:`set_epoch`) gets its own
            stream. Give each rank its own seed. (The alignment stage instead passes a
            :class:`SampleRandom` keyed by sample to :meth:`views` and :meth:`encode`.)
        split: which sample sets the rows index.
        train: False = evaluation: template 0, the hottest comment, the first positive, no
            augmentation, the most recent comments of an item.
        max_item_comments: a comment-history item keeps at most this many of the user's comments
            (a random subset in training), for both views.
        max_position: in training, draw the SR's random positions (a sorted random subset of
            ``0..max_position-1`` per sample) into ``history.v_position``/``c_position``; None = the
            SR draws them itself.
    """

    def __init__(
        self,
        ds: PreparedDataset,
        gatherer: HistoryGatherer,
        prompt_builder: PromptBuilder,
        text_max_length: int,
        aug: AugmentConfig | None = None,
        seed: int = 0,
        split: str = "train",
        train: bool = True,
        max_item_comments: int = 3,
        max_position: int | None = None,
    ):
        self.ds, self.gatherer, self.prompts = ds, gatherer, prompt_builder
        self.text_max_length = int(text_max_length)
        self.aug = aug or AugmentConfig()
        self.seed, self.split, self.train = int(seed), split, train
        self.max_item_comments = int(max_item_comments)
        self.max_position = max_position
        self.titles, self.comments = _Texts(ds.video_titles()), _Texts(ds.comment_texts())
        self.comment_ptr = np.asarray(ds.video_comment_ptr, np.int64)
        # one trailing 0 so that masked-out gathers stay in range even for a world without comments
        self.video_comments = np.append(np.asarray(ds.video_comments, np.int64), 0)
        self.epoch = 0
        self._rng_key: tuple[int, int] | None = None
        self._gen: np.random.Generator | None = None

    def set_epoch(self, epoch: int) -> None:
        """New random streams for ``epoch`` (call before the DataLoader starts iterating)."""
        self.epoch = int(epoch)

    def _rng(self) -> np.random.Generator | None:
        if not self.train:
            return None
        info = get_worker_info()
        key = (self.epoch, -1 if info is None else info.id)
        if key != self._rng_key:  # forked workers must not replay the parent's stream
            self._gen, self._rng_key = np.random.default_rng([self.seed, key[0], key[1] + 1]), key
        return self._gen

    def __call__(self, items: Sequence[tuple[int, int]] | np.ndarray) -> AlignBatch:
        rng = SampleRandom.of(self._rng(), len(items))
        return self.encode(self.views(items, rng), rng)

    # ---------------------------------------------------------------- index form, two views

    def views(self, items: Sequence[tuple[int, int]] | np.ndarray, rng: SampleRandom | np.random.Generator | None
              ) -> AlignViews:
        """Histories and both views in global indices; ``rng=None`` = evaluation (one plain view)."""
        items = np.asarray(items, dtype=np.int64).reshape(-1, 2)
        task, rows = items[:, 0], items[:, 1]
        rng = SampleRandom.of(rng, len(items))
        h = self.gatherer(self._joint_samples(task, rows), np.arange(len(items)))
        v_video, c_video = h.v_video.numpy(), h.c_video.numpy()
        v_llm, v_sr = self._hot_comment_views(v_video, rng)
        (c_llm, s_llm), (c_sr, s_sr) = self._comment_views(c_video, h.c_comment.numpy(), h.c_slot.numpy(), rng)
        history = HistoryBatch(
            v_video=h.v_video, v_comment=torch.from_numpy(v_sr), c_video=h.c_video,
            c_comment=torch.from_numpy(c_sr), c_slot=torch.from_numpy(s_sr), target=h.target, user=h.user,
        )
        if rng is not None and self.max_position is not None:
            history.v_position = self._positions(rng, V_POSITION, h.v_mask)
            history.c_position = self._positions(rng, C_POSITION, h.c_mask)
        return AlignViews(task, history, v_llm, c_llm, s_llm, self._responses(task, rows, rng))

    def _positions(self, rng: SampleRandom, stream: int, mask: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` the SR's random positions of one history (``mask [B, L]``)."""
        return sorted_random_positions(torch.from_numpy(rng.rows(stream, self.max_position)), mask)

    def _samples(self, task_id: int) -> SampleSet:
        return self.ds.samples(TASK_NAMES[task_id], self.split)

    def _joint_samples(self, task: np.ndarray, rows: np.ndarray) -> SampleSet:
        """The batch's rows of both tasks as one sample set, in batch order (positives omitted)."""
        cols = {name: np.zeros(len(rows), np.int64) for name in ("user", "target", "time", "vi_end", "ci_end")}
        for t in np.unique(task):
            if t not in (0, 1):
                raise DataError(f"alignment batch: unknown task id {t} (0 = rec, 1 = comm_rank)")
            m, s = task == t, self._samples(int(t))
            if rows[m].min() < 0 or rows[m].max() >= len(s):
                raise DataError(f"alignment batch: row out of range for {TASK_NAMES[t]}.{self.split} ({len(s)} rows)")
            for name in cols:
                cols[name][m] = getattr(s, name)[rows[m]]
        return SampleSet(**cols, pos_ptr=np.zeros(1, np.int64), pos=np.zeros(0, np.int32))

    def _hot_comment_views(self, v_video: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
        """``[B, Lv]`` hot comment of each video-history item for the prompt and for the SR."""
        start = self.comment_ptr[v_video]
        count = np.minimum(self.comment_ptr[v_video + 1] - start, self.aug.hot_comments) * (v_video > 0)
        if rng is None:
            first = np.zeros_like(v_video)
            second = first
        else:
            width = v_video.shape[1]
            first = np.floor(rng.rows(HOT, width) * count).astype(np.int64)
            aug = rng.rows(HOT_AUG_SAMPLE, 1) < self.aug.sample_prob
            aug = aug & (rng.rows(HOT_AUG_ITEM, width) < self.aug.item_prob)
            # a different one of the same top comments: shift by 1..count-1 (needs two of them)
            shift = 1 + np.floor(rng.rows(HOT_SHIFT, width) * (count - 1)).astype(np.int64)
            second = np.where(aug & (count >= 2), (first + shift) % np.maximum(count, 1), first)

        def pick(k: np.ndarray) -> np.ndarray:
            return np.where(count > 0, self.video_comments[np.where(count > 0, start + k, 0)], 0)

        return pick(first), pick(second)

    def _comment_views(self, c_video: np.ndarray, comment: np.ndarray, slot: np.ndarray, rng):
        """Comment-history entries ``(comment [M], slot [M])`` for the prompt and for the SR.

        Repeated (slot, comment) pairs are merged and each slot keeps ``max_item_comments`` of the
        user's comments (random ones in training, the most recent in evaluation).
        """
        width, lc = self.ds.num_comments + 1, c_video.shape[1]
        _, first = np.unique(slot * width + comment, return_index=True)
        first = np.sort(first)  # back to time order
        comment, slot = comment[first], slot[first]
        keys = rng.random(KEEP, slot // lc) if rng is not None else -np.arange(len(slot), dtype=np.float64)
        order, rank = _group_rank(slot, keys)
        keep = np.zeros(len(slot), bool)
        keep[order[rank < self.max_item_comments]] = True
        comment, slot = comment[keep], slot[keep]
        if rng is None or self.aug.sample_prob == 0 or self.aug.item_prob == 0:
            return (comment, slot), (comment, slot)
        aug_slot = (rng.rows(AUG_SAMPLE, 1) < self.aug.sample_prob) & (rng.rows(AUG_ITEM, lc) < self.aug.item_prob)
        in_aug = aug_slot.ravel()[slot]
        need = np.bincount(slot[in_aug], minlength=c_video.size)
        aug_slots = np.flatnonzero(need)
        drawn, drawn_slot = self._unseen_popular(aug_slots, c_video.reshape(-1)[aug_slots], need[aug_slots],
                                                 comment, slot, rng, lc)
        # the user's n comments and n others, shuffled within the item and dealt alternately
        mix_c = np.concatenate([comment[in_aug], drawn])
        mix_s = np.concatenate([slot[in_aug], drawn_slot])
        order, rank = _group_rank(mix_s, rng.random(DEAL, mix_s // lc))
        to_llm = order[rank % 2 == 0]
        to_sr = order[rank % 2 == 1]
        plain_c, plain_s = comment[~in_aug], slot[~in_aug]
        llm = (np.concatenate([plain_c, mix_c[to_llm]]), np.concatenate([plain_s, mix_s[to_llm]]))
        sr = (np.concatenate([plain_c, mix_c[to_sr]]), np.concatenate([plain_s, mix_s[to_sr]]))
        return llm, sr

    def _unseen_popular(self, slots, videos, need, comment, slot, rng: SampleRandom, lc: int
                        ) -> tuple[np.ndarray, np.ndarray]:
        """``need[i]`` comments for item ``slots[i]``: popular comments of ``videos[i]`` (top
        ``popular_comments``) the user did not interact with there, in random order and repeated
        when too few; random comments of the whole dataset when there are none."""
        start = self.comment_ptr[videos]
        count = np.minimum(self.comment_ptr[videos + 1] - start, self.aug.popular_comments)
        pos, owner = ragged_index(start, count)
        cand = self.video_comments[pos]
        width = self.ds.num_comments + 1
        unseen = ~np.isin(slots[owner] * width + cand, slot * width + comment)
        cand, owner = cand[unseen], owner[unseen]
        order, _ = _group_rank(owner, rng.random(POPULAR, slots[owner] // lc))
        cand = np.append(cand[order], 0)
        avail = np.bincount(owner, minlength=len(slots))
        first = np.cumsum(avail) - avail
        k, draw_owner = ragged_index(np.zeros(len(slots), np.int64), need)
        has = avail[draw_owner] > 0
        pick = np.where(has, first[draw_owner] + k % np.maximum(avail[draw_owner], 1), len(cand) - 1)
        uniform = rng.random(FALLBACK, slots[draw_owner] // lc)
        fallback = 1 + np.floor(uniform * max(self.ds.num_comments, 1)).astype(np.int64)
        return np.where(has, cand[pick], fallback), slots[draw_owner]

    def _responses(self, task: np.ndarray, rows: np.ndarray, rng) -> np.ndarray:
        """``[B]`` one positive comment per comm_rank row (random in training, the first in evaluation)."""
        out = np.zeros(len(rows), np.int64)
        m = task == TASK_IDS["comm_rank"]
        if not m.any():
            return out
        s = self._samples(TASK_IDS["comm_rank"])
        start = np.asarray(s.pos_ptr[rows[m]], np.int64)
        count = np.asarray(s.pos_ptr[rows[m] + 1], np.int64) - start
        if (count == 0).any():
            bad = rows[m][count == 0][0]
            raise DataError(f"comm_rank.{self.split} row {bad}: no positive comment; run stage=prepare again")
        if rng is None:
            k = np.zeros_like(count)
        else:
            k = np.floor(rng.random(RESPONSE, np.flatnonzero(m)) * count).astype(np.int64)
        out[m] = s.pos[start + k]
        return out

    # ---------------------------------------------------------------- tokens

    def encode(self, views: AlignViews, rng: SampleRandom | np.random.Generator | None = None) -> AlignBatch:
        """Texts of ``views``: the batch-local SR text table and the tokenised prompts."""
        h, nv = views.history, self.ds.num_videos
        rng = SampleRandom.of(rng, len(views.task))
        v_video, c_video, target = h.v_video.numpy(), h.c_video.numpy(), h.target.numpy()
        v_sr, c_sr = h.v_comment.numpy(), h.c_comment.numpy()
        is_rec = views.task == TASK_IDS["rec"]
        # one key space for the local table: titles are 1..V, comments V+1..V+C
        title_ids = np.concatenate([v_video.ravel(), c_video.ravel(), target])
        comment_ids = np.concatenate([v_sr.ravel(), c_sr, views.response[~is_rec]])
        keys = np.unique(np.concatenate([title_ids[title_ids > 0], nv + comment_ids[comment_ids > 0]]))

        def local(ids: np.ndarray, offset: int) -> torch.Tensor:
            return torch.from_numpy(np.where(ids > 0, np.searchsorted(keys, ids + offset) + 1, 0).astype(np.int64))

        history = HistoryBatch(
            v_video=local(v_video, 0), v_comment=local(v_sr, nv), c_video=local(c_video, 0),
            c_comment=local(c_sr, nv), c_slot=h.c_slot, target=local(target, 0), user=h.user,
            v_position=h.v_position, c_position=h.c_position,
        )
        target_row = torch.where(torch.from_numpy(is_rec), local(target, 0), local(views.response, nv))
        titles = self.titles.fetch(keys[keys <= nv])  # the prompt shows the same titles
        comments = self.comments.fetch(np.concatenate([keys[keys > nv] - nv, views.v_comment_llm.ravel(),
                                                       views.c_comment_llm]))
        texts = [titles[int(k)] if k <= nv else comments[int(k) - nv] for k in keys]
        items = encode_texts(self.prompts.tokenizer, texts, self.text_max_length)
        template_noise = None if rng is None else rng.random(TEMPLATE, np.arange(len(views.task)))
        llm = self.prompts.build(self._examples(views, titles, comments), template_noise)
        return AlignBatch(
            input_ids=llm["input_ids"], attention_mask=llm["attention_mask"], labels=llm["labels"],
            last_prompt_index=llm["last_prompt_index"], item_ids=items["input_ids"], item_mask=items["attention_mask"],
            item_keys=torch.from_numpy(keys.astype(np.int64)),
            history=history, target_row=target_row, task=torch.from_numpy(views.task.copy()),
        )

    def _examples(self, views: AlignViews, titles: dict[int, str], comments: dict[int, str]) -> list[PromptExample]:
        """The prompt view of each sample as text (histories oldest first)."""
        h = views.history
        v_video, c_video, target = h.v_video.numpy(), h.c_video.numpy(), h.target.numpy()
        lc = c_video.shape[1]
        order = np.argsort(views.c_slot_llm, kind="stable")
        c_comment, c_slot = views.c_comment_llm[order], views.c_slot_llm[order]
        bounds = np.searchsorted(c_slot, np.arange(c_video.size + 1))
        out = []
        for b, task in enumerate(views.task):
            video_items = [(titles[int(v)], comments.get(int(c), "")) for v, c in
                           zip(v_video[b], views.v_comment_llm[b]) if v > 0]
            comment_items = [(titles[int(c_video[b, j])],
                              [comments[int(x)] for x in c_comment[bounds[b * lc + j]: bounds[b * lc + j + 1]]])
                             for j in range(lc) if c_video[b, j] > 0]
            title = titles[int(target[b])]
            response = title if task == TASK_IDS["rec"] else comments[int(views.response[b])]
            out.append(PromptExample(TASK_NAMES[task], video_items, comment_items, title, response))
        return out
