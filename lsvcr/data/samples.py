"""Splits and samples over the sorted interaction arrays.

A sample's histories are every interaction of its user *strictly before* the sample's time, so
no event at or after the target leaks into its input (equal timestamps count as "not before").

- ``rec``: one sample per video interaction (the target), given both histories before it.
- ``comm_rank``: one sample per (user, video) comment group, at the time of the group's first
  comment interaction; positives = the distinct comments the user interacted with under that video.

Splits: ``loo`` (per user, by time: last = test, second-last = val, the rest train; users with
fewer than three targets only train) or ``time`` (global time thresholds at the
``1 - val_frac - test_frac`` and ``1 - test_frac`` quantiles of video-interaction times).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from lsvcr.data.errors import ConfigError
from lsvcr.data.store import SampleSet

log = logging.getLogger(__name__)


@dataclass
class SplitConfig:
    method: str = "loo"
    val_frac: float = 0.1
    test_frac: float = 0.1

    def __post_init__(self):
        if self.method not in ("loo", "time"):
            raise ConfigError(f"data.split.method={self.method!r}: expected 'loo' or 'time'")
        if self.method == "time" and not (0 < self.val_frac and 0 < self.test_frac and self.val_frac + self.test_frac < 1):
            raise ConfigError(
                f"data.split.val_frac={self.val_frac}, data.split.test_frac={self.test_frac}: "
                "need both > 0 and val_frac + test_frac < 1"
            )

    def as_dict(self) -> dict:
        return asdict(self)


def _owner(ptr: np.ndarray) -> np.ndarray:
    """Row -> owner index for a CSR pointer ``[n+2]``."""
    return np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))


def _assign_split(pos: np.ndarray, count: np.ndarray, t: np.ndarray, split: SplitConfig, thresholds) -> np.ndarray:
    """0 = train, 1 = val, 2 = test for each sample (``pos``: its rank among its user's samples)."""
    if split.method == "loo":
        part = np.zeros(len(pos), np.int8)
        enough = count >= 3
        part[enough & (pos == count - 2)] = 1
        part[enough & (pos == count - 1)] = 2
        return part
    t_val, t_test = thresholds
    return np.where(t >= t_test, 2, np.where(t >= t_val, 1, 0)).astype(np.int8)


def _rank_within(owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows grouped by ``owner`` (contiguous): the row's rank in its group and the group size."""
    n = len(owner)
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]]) if n else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, n])
    first = np.repeat(starts, sizes)
    return np.arange(n) - first, np.repeat(sizes, sizes)


HISTORY_TIES = ("exclude", "sorted_order")


def build_samples(a: dict[str, np.ndarray], num_users: int, split: SplitConfig, history_ties: str = "exclude"):
    """Build the ``rec`` and ``comm_rank`` samples of every split from the indexed arrays.

    ``history_ties``: ``"exclude"`` keeps a rec target's same-time video interactions out of its
    history (strictly earlier only); ``"sorted_order"`` puts every interaction sorted before it in
    (ties in file order: RecBole's sequences). Comment histories are strictly earlier either way.

    Returns ``({(task, split): SampleSet}, stats)``.
    """
    if history_ties not in HISTORY_TIES:
        raise ConfigError(f"data.history_ties={history_ties!r}: expected one of {', '.join(HISTORY_TIES)}")
    vi_user, ci_user = _owner(a["vi_ptr"]), _owner(a["ci_ptr"])
    # dense time ranks make (user, time) one sortable int64 key without overflow
    times = np.unique(np.concatenate([a["vi_time"], a["ci_time"]]))
    stride = len(times) + 1
    vi_key = vi_user * stride + np.searchsorted(times, a["vi_time"])
    ci_key = ci_user * stride + np.searchsorted(times, a["ci_time"])
    thresholds = None
    if split.method == "time":
        q = np.quantile(a["vi_time"], [1 - split.val_frac - split.test_frac, 1 - split.test_frac])
        thresholds = (int(np.ceil(q[0])), int(np.ceil(q[1])))

    stats: dict[str, int] = {}
    out: dict[tuple[str, str], SampleSet] = {}

    # rec: every video interaction is a target
    rec = dict(
        user=vi_user.astype(np.int32), target=a["vi_video"].astype(np.int32), time=a["vi_time"],
        vi_end=np.searchsorted(vi_key, vi_key, "left") if history_ties == "exclude" else np.arange(len(vi_key)),
        ci_end=np.searchsorted(ci_key, vi_key, "left"),
    )
    pos, count = _rank_within(vi_user)
    part = _assign_split(pos, count, a["vi_time"], split, thresholds)
    _emit("rec", rec, part, a, None, None, out, stats)

    # comm_rank: one sample per (user, video) group, at its first comment interaction
    new_user = np.r_[True, ci_user[1:] != ci_user[:-1]]
    opens = new_user | np.r_[True, a["ci_ngroups"][1:] != a["ci_ngroups"][:-1]]
    g_first = np.flatnonzero(opens) if len(ci_user) else np.zeros(0, np.int64)
    g_user = ci_user[g_first]
    # sample id of every comment interaction: (user's first sample) + its group rank
    user_first_sample = np.searchsorted(g_user, np.arange(num_users + 2))
    ev_sample = user_first_sample[ci_user] + a["ci_group"]
    pairs = np.unique(ev_sample.astype(np.int64) * (len(a["comment_video"]) + 1) + a["ci_comment"])
    p_sample, p_comment = np.divmod(pairs, len(a["comment_video"]) + 1)
    pos_ptr = np.zeros(len(g_first) + 1, np.int64)
    np.cumsum(np.bincount(p_sample, minlength=len(g_first)), out=pos_ptr[1:])
    t = a["ci_time"][g_first]
    cr = dict(
        user=g_user.astype(np.int32), target=a["ci_video"][g_first].astype(np.int32), time=t,
        vi_end=np.searchsorted(vi_key, ci_key[g_first], "left"),
        ci_end=np.searchsorted(ci_key, ci_key[g_first], "left"),
    )
    pos, count = _rank_within(g_user)
    part = _assign_split(pos, count, t, split, thresholds)
    _emit("comm_rank", cr, part, a, pos_ptr, p_comment.astype(np.int32), out, stats)
    for k, v in stats.items():
        if v:
            log.info("samples: %s = %d", k, v)
    return out, stats


def _emit(task, cols, part, a, pos_ptr, pos, out, stats) -> None:
    """Filter samples with no history at all (and, for comment-rank evaluation, with no negative
    comment to rank against) and store one SampleSet per split."""
    user = cols["user"]
    has_hist = (cols["vi_end"] > a["vi_ptr"][user]) | (cols["ci_end"] > a["ci_ptr"][user])
    stats[f"{task}.dropped_no_history"] = int((~has_hist).sum())
    keep_eval = np.ones(len(user), bool)
    if pos is not None:
        n_pos = np.diff(pos_ptr)
        n_comments = np.diff(a["video_comment_ptr"])[cols["target"]]
        keep_eval = n_comments > n_pos
        stats[f"{task}.eval_dropped_no_negative"] = int((~keep_eval & has_hist & (part > 0)).sum())
    full = SampleSet(**cols, pos_ptr=pos_ptr if pos_ptr is not None else np.zeros(1, np.int64),
                     pos=pos if pos is not None else np.zeros(0, np.int32))
    for code, name in enumerate(("train", "val", "test")):
        sel = has_hist & (part == code)
        if code > 0:
            sel &= keep_eval
        out[(task, name)] = full.subset(np.flatnonzero(sel))
