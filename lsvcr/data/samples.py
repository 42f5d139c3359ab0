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

from lsvcr.data.store import SampleSet
from lsvcr.errors import ConfigError

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


def ptr_owner(ptr: np.ndarray) -> np.ndarray:
    """Row -> owner index (int32) for a CSR pointer ``[n+2]``."""
    return np.repeat(np.arange(len(ptr) - 1, dtype=np.int32), np.diff(ptr))


def _groups(owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and size of each run of equal ``owner`` values (rows grouped by owner)."""
    n = len(owner)
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]]) if n else np.zeros(0, np.int64)
    return starts, np.diff(np.r_[starts, n])


def _assign_split(starts: np.ndarray, sizes: np.ndarray, t: np.ndarray, split: SplitConfig, thresholds) -> np.ndarray:
    """0 = train, 1 = val, 2 = test for each sample; ``starts``/``sizes``: the users' runs of samples."""
    if split.method == "loo":
        part = np.zeros(len(t), np.int8)
        ends = (starts + sizes)[sizes >= 3]
        part[ends - 2] = 1
        part[ends - 1] = 2
        return part
    t_val, t_test = thresholds
    return np.where(t >= t_test, 2, np.where(t >= t_val, 1, 0)).astype(np.int8)


def _time_keys(vi_user, vi_time, ci_user, ci_time) -> tuple[np.ndarray, np.ndarray]:
    """One int64 per interaction that orders like (user, time), for both streams.

    ``user * span + (time - first time)`` when it fits in 62 bits (any real log: 35 days of
    milliseconds times 10^5 users is 3e14), else dense time ranks (sorting every time once)."""
    both = [t for t in (vi_time, ci_time) if len(t)]
    lo = min(int(t.min()) for t in both) if both else 0
    span = (max(int(t.max()) for t in both) - lo + 1) if both else 1
    users = max([int(u.max()) + 1 for u in (vi_user, ci_user) if len(u)] or [1])
    if users * span < 2**62:
        return (vi_user.astype(np.int64) * span + (vi_time - lo), ci_user.astype(np.int64) * span + (ci_time - lo))
    times = np.unique(np.concatenate([vi_time, ci_time]))
    stride = len(times) + 1
    return (vi_user.astype(np.int64) * stride + np.searchsorted(times, vi_time),
            ci_user.astype(np.int64) * stride + np.searchsorted(times, ci_time))


def _run_starts(key: np.ndarray) -> np.ndarray:
    """For a sorted ``key``: the index of the first element equal to each element (int64)."""
    n = len(key)
    first = np.zeros(n, np.int64)
    if n:
        new = np.r_[True, key[1:] != key[:-1]]
        first[new] = np.flatnonzero(new)
        np.maximum.accumulate(first, out=first)
    return first


HISTORY_TIES = ("exclude", "sorted_order")


def build_samples(a: dict[str, np.ndarray], num_users: int, split: SplitConfig, history_ties: str = "exclude"):
    """Build the ``rec`` and ``comm_rank`` samples of every split from the indexed arrays.

    ``history_ties``: ``"exclude"`` keeps a rec target's same-time video interactions out of its
    history (strictly earlier only); ``"sorted_order"`` puts every interaction sorted before it in
    (ties in file order: RecBole's sequences). Comment histories are strictly earlier either way.

    Memory: a few arrays per video interaction (the samples themselves, one int64 key); nothing
    is sorted or searched at the size of the video interactions (histories end where a run of
    equal keys starts).

    Returns ``({(task, split): SampleSet}, stats)``.
    """
    if history_ties not in HISTORY_TIES:
        raise ConfigError(f"data.history_ties={history_ties!r}: expected one of {', '.join(HISTORY_TIES)}")
    vi_user, ci_user = ptr_owner(a["vi_ptr"]), ptr_owner(a["ci_ptr"])
    vi_key, ci_key = _time_keys(vi_user, a["vi_time"], ci_user, a["ci_time"])
    thresholds = None
    if split.method == "time":
        q = np.quantile(a["vi_time"], [1 - split.val_frac - split.test_frac, 1 - split.test_frac])
        thresholds = (int(np.ceil(q[0])), int(np.ceil(q[1])))
    cr, pos_ptr, pos = _comm_rank_columns(a, ci_user, ci_key, vi_key, num_users)
    # rec: every video interaction is a target
    rec = dict(
        user=vi_user, target=a["vi_video"].astype(np.int32, copy=False), time=a["vi_time"],
        vi_end=_run_starts(vi_key) if history_ties == "exclude" else np.arange(len(vi_key)),
        ci_end=np.searchsorted(ci_key, vi_key, "left"),
    )
    del vi_key
    part = _assign_split(*_groups(vi_user), a["vi_time"], split, thresholds)
    del vi_user  # rec holds it; emit_samples drops each of rec's columns once split
    stats: dict[str, int] = {}
    out: dict[tuple[str, str], SampleSet] = {}
    emit_samples("rec", rec, part, a, None, None, out, stats)
    emit_samples("comm_rank", cr, _assign_split(*_groups(cr["user"]), cr["time"], split, thresholds), a, pos_ptr, pos,
          out, stats)
    for k, v in stats.items():
        if v:
            log.info("samples: %s = %d", k, v)
    return out, stats


def _comm_rank_columns(a, ci_user, ci_key, vi_key, num_users):
    """comm_rank samples: one per (user, video) group, at its first comment interaction;
    positives = the distinct comments of the group. Returns (columns, pos_ptr, pos)."""
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
    cr = dict(
        user=g_user.astype(np.int32), target=a["ci_video"][g_first].astype(np.int32), time=a["ci_time"][g_first],
        vi_end=np.searchsorted(vi_key, ci_key[g_first], "left"),
        ci_end=np.searchsorted(ci_key, ci_key[g_first], "left"),
    )
    return cr, pos_ptr, p_comment.astype(np.int32)


def emit_samples(task, cols, part, a, pos_ptr, pos, out, stats) -> None:
    """Filter samples with no history at all (and, for comment-rank evaluation, with no negative
    comment to rank against) and store one SampleSet per split.

    Without positives (rec: one sample per video interaction) the columns are taken out of
    ``cols`` one at a time and split with boolean masks, so what is held at once is the samples
    plus one full column, not a second copy of every column and an index array."""
    user = cols["user"]
    has_hist = (cols["vi_end"] > a["vi_ptr"][user]) | (cols["ci_end"] > a["ci_ptr"][user])
    stats[f"{task}.dropped_no_history"] = int((~has_hist).sum())
    keep_eval = np.ones(len(user), bool)
    if pos is not None:
        n_pos = np.diff(pos_ptr)
        n_comments = np.diff(a["video_comment_ptr"])[cols["target"]]
        keep_eval = n_comments > n_pos
        stats[f"{task}.eval_dropped_no_negative"] = int((~keep_eval & has_hist & (part > 0)).sum())
    sels = {}
    for code, name in enumerate(("train", "val", "test")):
        sels[name] = has_hist & (part == code)
        if code > 0:
            sels[name] &= keep_eval
    del user, has_hist, keep_eval
    if pos is not None:
        full = SampleSet(**cols, pos_ptr=pos_ptr, pos=pos)
        for name, sel in sels.items():
            out[(task, name)] = full.subset(np.flatnonzero(sel))
        return
    parts: dict[str, dict[str, np.ndarray]] = {name: {} for name in sels}
    for f in list(cols):
        col = cols.pop(f)
        for name, sel in sels.items():
            parts[name][f] = col[sel]
        del col
    for name in sels:
        out[(task, name)] = SampleSet(**parts[name], pos_ptr=np.zeros(1, np.int64), pos=np.zeros(0, np.int32))
