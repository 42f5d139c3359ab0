"""Vectorised history gathering: sample rows -> :class:`HistoryBatch`.

Per batch this is a handful of numpy gathers over the sorted interaction arrays (no Python loop
over samples or items), which is what keeps data loading off the profile.
"""

from __future__ import annotations

import numpy as np
import torch

from lsvcr.data.batch import HistoryBatch
from lsvcr.data.store import PreparedDataset, SampleSet


def ragged_index(start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions ``start[i] + k`` for ``k < length[i]`` and their row ids."""
    total = int(length.sum())
    rows = np.repeat(np.arange(len(start)), length)
    offsets = np.arange(total) - np.repeat(np.cumsum(length) - length, length)
    return np.repeat(start, length) + offsets, rows


def hot_comments(ds: PreparedDataset) -> np.ndarray:
    """``[V+1]`` the hottest comment of each video (0 when it has none; video 0 is padding): the
    comment shown with a video-history item."""
    ptr = np.asarray(ds.video_comment_ptr)
    has = ptr[1:] > ptr[:-1]
    hot = np.zeros(len(ptr) - 1, np.int64)
    hot[has] = np.asarray(ds.video_comments)[ptr[:-1][has]]
    return hot


class HistoryGatherer:
    """Builds the index form of both histories for rows of a :class:`SampleSet`.

    Args:
        ds: the prepared dataset.
        max_phis_len: keep the most recent ``max_phis_len`` video interactions (the paper's
            name, as ``data.max_phis_len``: the photo, i.e. video, history).
        max_chis_len: keep the most recently opened ``max_chis_len`` comment groups
            (``data.max_chis_len``: the comment history).
        pad_to_max: pad to the maximum lengths instead of the longest history in the batch
            (fixed shapes, e.g. for compiled models).
    """

    def __init__(self, ds: PreparedDataset, max_phis_len: int, max_chis_len: int, pad_to_max: bool = False):
        self.ds = ds
        self.max_phis_len = max_phis_len
        self.max_chis_len = max_chis_len
        self.pad_to_max = pad_to_max
        self.hot_comment = hot_comments(ds)

    def __call__(self, samples: SampleSet, rows: np.ndarray) -> HistoryBatch:
        user = samples.user[rows].astype(np.int64)
        v_video = self._video_history(user, samples.vi_end[rows].astype(np.int64))
        c_video, c_comment, c_slot = self._comment_history(user, samples.ci_end[rows].astype(np.int64))
        return HistoryBatch(
            v_video=torch.from_numpy(v_video),
            v_comment=torch.from_numpy(self.hot_comment[v_video]),
            c_video=torch.from_numpy(c_video),
            c_comment=torch.from_numpy(c_comment),
            c_slot=torch.from_numpy(c_slot),
            target=torch.from_numpy(samples.target[rows].astype(np.int64)),
            user=torch.from_numpy(user),
        )

    def _video_history(self, user: np.ndarray, end: np.ndarray) -> np.ndarray:
        start = np.maximum(self.ds.vi_ptr[user], end - self.max_phis_len)
        length = end - start
        width = self.max_phis_len if self.pad_to_max else max(int(length.max(initial=0)), 1)
        out = np.zeros((len(user), width), np.int64)
        flat, rows = ragged_index(start, length)
        cols = flat - np.repeat(start, length)
        out[rows, cols] = self.ds.vi_video[flat]
        return out

    def _comment_history(self, user: np.ndarray, end: np.ndarray):
        ds = self.ds
        start = ds.ci_ptr[user]
        length = end - start
        ngroups = np.zeros(len(user), np.int64)
        if len(ds.ci_ngroups):  # a dataset without comment interactions has none
            ngroups = np.where(length > 0, ds.ci_ngroups[np.maximum(end - 1, 0)], 0).astype(np.int64)
        kept = np.minimum(ngroups, self.max_chis_len)
        first_kept = ngroups - kept
        width = self.max_chis_len if self.pad_to_max else max(int(kept.max(initial=0)), 1)
        flat, rows = ragged_index(start, length)
        group = ds.ci_group[flat].astype(np.int64)
        keep = group >= first_kept[rows]
        flat, rows, group = flat[keep], rows[keep], group[keep]
        slot_col = group - first_kept[rows]
        c_video = np.zeros((len(user), width), np.int64)
        c_video[rows, slot_col] = ds.ci_video[flat]
        return c_video, ds.ci_comment[flat].astype(np.int64), rows * width + slot_col
