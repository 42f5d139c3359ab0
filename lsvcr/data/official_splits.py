"""The official files' own samples as the prepared splits (``data=official data.splits=given``).

Every line of ``rec.{train,val,test}.json`` and ``comm_rank.{train,val,test}.json`` becomes one
sample of that task and split, with the line's user, target and histories, and for comm_rank its
``pos_comments`` as the positives. A prepared sample's histories are the first interactions of its
user (``vi_end`` / ``ci_end`` of :class:`~lsvcr.data.store.SampleSet`), so a line is kept when its
``photo_inter_his`` is a prefix of the user's reconstructed video sequence and its
``comment_inter_his``, read as (video, comment) interactions, a prefix of the user's comment
interactions; :func:`lsvcr.data.official.read_official` rebuilds each user from their longest
sample of either task, so every line of consistent files is. A line that is not, or whose items
validation removed, is skipped and counted per reason (:data:`REASONS`, one warning each); when
most lines of one file are skipped the files disagree with each other and preparing stops with
the file, line and reason (judged from ``FATAL_MIN_ROWS`` skipped lines on, as validation does).

Two passes, neither holding a Python object per sample: the reader checks each line against the
reconstruction while streaming the file and keeps a few numbers per sample
(:func:`read_given_samples`); after validation and indexing, :meth:`OfficialSplits.build` maps
ids to indices, checks that validation kept every history row, and writes the sample sets.

A prepared comment history is one group per (user, video) and one interaction per comment and
visit, so a video listed in two groups of a history becomes one group and a comment listed twice at
one stamp one interaction; such lines are kept and counted (``comment_history_merged``).
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lsvcr.data.official_samples import Sequences, comment_rows, first_rows, json_lines
from lsvcr.data.samples import emit_samples, ptr_owner
from lsvcr.data.store import SPLITS, TASKS, SampleSet
from lsvcr.data.validate import FATAL_MIN_ROWS
from lsvcr.errors import DataError

log = logging.getLogger(__name__)

#: Why a line of a sample file is not a prepared sample -> what the warning says about it.
REASONS: dict[str, str] = {
    "history_not_prefix": "history is not a prefix of the user's sequence in the other files",
    "comment_under_other_video": "comment history files a comment under another video than the comment_list holding it",
    "history_rows_dropped": "history holds an interaction that validation skipped (unknown or duplicate id)",
    "unknown_target": "target_photo is not a video of all_photos.pkl",
    "bad_positives": "pos_comments is empty or names a comment that is not one of target_photo's",
}
#: share of a file's lines skipped above which the files are inconsistent, not a few lines
INCONSISTENT_FATAL = 0.5


@dataclass
class _FileSamples:
    """The kept lines of one sample file, as raw ids and prefix lengths, and what was skipped."""

    path: Path
    task: str
    split: str
    lines: int = 0
    user: list[str] = field(default_factory=list)
    target: list[str] = field(default_factory=list)
    line: list[int] = field(default_factory=list)
    n_videos: list[int] = field(default_factory=list)  # length of photo_inter_his
    n_comments: list[int] = field(default_factory=list)  # distinct comment interactions in comment_inter_his
    c_time: list[int] = field(default_factory=list)  # stamp of the last of them (0: none)
    c_upto: list[int] = field(default_factory=list)  # the user's comment rows stamped <= c_time
    pos: list[str] = field(default_factory=list)
    pos_n: list[int] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    first: dict[str, tuple[int, str]] = field(default_factory=dict)  # reason -> (line, what is wrong)
    merged: int = 0

    def skip(self, reason: str, line: int, detail: str, count: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count
        if reason not in self.first or line < self.first[reason][0]:
            self.first[reason] = (line, detail)


def _first_difference(given: list, expected: list, what: str, user: str) -> str:
    i = next(i for i, x in enumerate(given) if i >= len(expected) or x != expected[i])
    there = repr(expected[i]) if i < len(expected) else "nothing"
    return f"{what} item {i + 1} is {given[i]!r}, user {user}'s sequence has {there} there"


class _Checker:
    """Checks lines against the reconstructed sequences; each user's comment rows built once."""

    def __init__(self, seqs: Sequences, owner: dict[str, str]):
        self.seqs, self.owner = seqs, owner
        self.rows: dict[str, tuple[list, list, list, list]] = {}

    def _rows(self, user: str) -> tuple[list, list, list, list]:
        """The user's comment rows as listed, their stamps, how many distinct rows (the prepared
        ones) the first i of them hold, and the distinct rows' stamps."""
        if user not in self.rows:
            pairs, stamps = comment_rows(*self.seqs[user])
            first = first_rows(pairs, stamps)
            self.rows[user] = (pairs, stamps, [0, *accumulate(first)], [t for t, f in zip(stamps, first) if f])
        return self.rows[user]

    def __call__(self, rec: dict, out: _FileSamples, line: int) -> None:
        user = str(rec["user_id"])
        seq = self.seqs[user][0]
        pairs, stamps, distinct, distinct_stamps = self._rows(user)
        phis = [str(v) for v in rec["photo_inter_his"]]
        if seq[: len(phis)] != phis:
            return out.skip("history_not_prefix", line, _first_difference(phis, seq, "photo_inter_his", user))
        videos, groups = rec["comment_inter_his"]
        flat = [(str(v), str(c)) for v, group in zip(videos, groups) for c in group]
        m = len(flat)
        if pairs[:m] != flat:
            return out.skip("history_not_prefix", line, _first_difference(flat, pairs, "comment_inter_his", user))
        wrong = next(((v, c) for v, c in flat if self.owner.get(c, v) != v), None)
        if wrong is not None:
            return out.skip("comment_under_other_video", line, f"comment {wrong[1]!r} is filed under video {wrong[0]!r}, "
                            f"its comment_list is video {self.owner[wrong[1]]!r}'s")
        out.merged += distinct[m] < m or len(set(map(str, videos))) < len(videos) or any(len(g) == 0 for g in groups)
        out.user.append(user)
        out.target.append(str(rec["target_photo"]))
        out.line.append(line)
        out.n_videos.append(len(phis))
        out.n_comments.append(distinct[m])
        c_time = stamps[m - 1] if m else 0
        out.c_time.append(c_time)
        out.c_upto.append(bisect_right(distinct_stamps, c_time) if m else 0)
        if out.task == "comm_rank":
            out.pos.extend(map(str, rec["pos_comments"]))
            out.pos_n.append(len(rec["pos_comments"]))


def read_given_samples(paths: list[Path], seqs: Sequences, comments: pa.Table,
                       comment_interactions: pa.Table) -> "OfficialSplits":
    """Check every line of the sample files ``paths`` against the reconstructed ``seqs``.

    ``comments``: the reader's comment table (the video each comment is under);
    ``comment_interactions``: the rebuilt ones (whose comments' videos are checked). Raises
    :class:`DataError` on a malformed line (file and line named).
    """
    seen = pc.unique(comment_interactions["comment_id"].combine_chunks())
    video = pc.take(comments["video_id"], pc.index_in(seen, value_set=comments["comment_id"].combine_chunks()))
    known = pc.is_valid(video)
    check = _Checker(seqs, dict(zip(seen.filter(known).to_pylist(), video.filter(known).to_pylist())))
    files = []
    for path in paths:
        task, split = path.name.split(".")[:2]
        out = _FileSamples(path, task, split)
        for line, rec in json_lines(path):
            out.lines += 1
            check(rec, out, line)
        files.append(out)
    return OfficialSplits(files)


def _index(ids: list[str], value_set: pa.Array) -> np.ndarray:
    """1-based indices of ``ids`` in ``value_set``; 0 where absent."""
    idx = pc.index_in(pa.array(ids, pa.string()).cast(value_set.type), value_set=value_set)
    return pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1


class OfficialSplits:
    """The sample files' kept lines, turned into prepared sample sets by :meth:`build` (a
    :class:`~lsvcr.data.raw.GivenSamples`)."""

    def __init__(self, files: list[_FileSamples]):
        self.files = files

    def describe(self) -> dict:
        return {"method": "given", "files": {
            f.path.name: {"lines": f.lines, "kept": f.lines - sum(f.skipped.values()), "skipped": dict(f.skipped),
                          "comment_history_merged": f.merged} for f in self.files}}

    def build(self, raw, world) -> tuple[dict[tuple[str, str], SampleSet], dict[str, int]]:
        """The sample sets of every task and split over ``world`` (``builder.Indexed`` of the
        validated ``raw``), and counts; raises :class:`DataError` when most lines of a file are skipped."""
        a = world.arrays
        longest = max([0, *(max(f.n_videos + f.c_time, default=0) for f in self.files)])
        stride = int(max(a["vi_time"].max(initial=0), a["ci_time"].max(initial=0), longest)) + 2
        keys = (ptr_owner(a["vi_ptr"]) * stride + a["vi_time"], ptr_owner(a["ci_ptr"]) * stride + a["ci_time"])
        ids = (world.user_ids, raw.videos["video_id"].combine_chunks(), raw.comments["comment_id"].combine_chunks())
        parts: dict[str, list[tuple[int, SampleSet]]] = {task: [] for task in TASKS}
        for f in self.files:
            parts[f.task].append((SPLITS.index(f.split), _resolve(f, a, ids, keys, stride)))
            _judge(f)
        stats = {f"given.{reason}": sum(f.skipped.get(reason, 0) for f in self.files) for reason in REASONS}
        stats["given.comment_history_merged"] = sum(f.merged for f in self.files)
        out: dict[tuple[str, str], SampleSet] = {}
        for task, sets in parts.items():
            s = _concat([s for _, s in sets])
            part = np.concatenate([np.full(len(s), code, np.int8) for code, s in sets])
            cols = dict(user=s.user, target=s.target, time=s.time, vi_end=s.vi_end, ci_end=s.ci_end)
            comm = task == "comm_rank"
            emit_samples(task, cols, part, a, s.pos_ptr if comm else None, s.pos if comm else None, out, stats)
        for k, v in stats.items():
            if v:
                log.info("samples: %s = %d", k, v)
        return out, stats


def _resolve(f: _FileSamples, a: dict, ids: tuple, keys: tuple, stride: int) -> SampleSet:
    """The kept lines of ``f`` as a sample set over the indexed arrays ``a``; lines whose target,
    history rows or positives did not survive validation are skipped (counted in ``f``)."""
    user, target = _index(f.user, ids[0]), _index(f.target, ids[1])
    k, m = np.asarray(f.n_videos, np.int64), np.asarray(f.n_comments, np.int64)
    c_time, c_upto = np.asarray(f.c_time, np.int64), np.asarray(f.c_upto, np.int64)
    # video rows are stamped 1..n, so all k history rows survived iff k rows are stamped <= k; the
    # comment prefix survived when every row stamped up to its last one did (rows keep their order)
    kept = np.searchsorted(keys[0], user * stride + k, "right") - a["vi_ptr"][user] == k
    kept &= np.searchsorted(keys[1], user * stride + c_time, "right") - a["ci_ptr"][user] == c_upto
    pos_ptr, pos = np.zeros(1, np.int64), np.zeros(0, np.int32)
    checks = [("unknown_target", target == 0, lambda i: f"target_photo {f.target[i]!r}"),
              ("history_rows_dropped", ~kept, lambda i: f"user_id {f.user[i]!r}")]
    if f.task == "comm_rank":
        pos_ptr = np.concatenate([[0], np.cumsum(f.pos_n, dtype=np.int64)])
        pos = _index(f.pos, ids[2]).astype(np.int32)
        of = np.repeat(np.arange(len(user)), f.pos_n)
        bad = ((pos == 0) | (a["comment_video"][pos] != target[of])).astype(np.float64)
        no_pos = (np.bincount(of, bad, minlength=len(user)) > 0) | (np.asarray(f.pos_n) == 0)
        checks.append(("bad_positives", no_pos, lambda i: f"pos_comments {f.pos[pos_ptr[i]:pos_ptr[i + 1]]!r}"))
    ok = np.ones(len(user), bool)
    for reason, failed, shown in checks:
        failed = np.flatnonzero(failed & ok)
        if len(failed):
            f.skip(reason, f.line[failed[0]], shown(int(failed[0])), count=len(failed))
            ok[failed] = False
    s = SampleSet(user=user.astype(np.int32), target=target.astype(np.int32), time=k + 1,
                  vi_end=a["vi_ptr"][user] + k, ci_end=a["ci_ptr"][user] + m, pos_ptr=pos_ptr, pos=pos)
    s = s.subset(np.flatnonzero(ok))
    if f.task == "comm_rank":  # a positive listed twice is one positive
        n = len(a["comment_video"])
        key = np.unique(np.repeat(np.arange(len(s), dtype=np.int64), np.diff(s.pos_ptr)) * n + s.pos)
        s.pos = (key % n).astype(np.int32)
        s.pos_ptr = np.concatenate([[0], np.cumsum(np.bincount(key // n, minlength=len(s)))]).astype(np.int64)
    return s


def _judge(f: _FileSamples) -> None:
    """Warn once per reason; stop when most of the file's lines are skipped."""
    total = sum(f.skipped.values())
    if total > INCONSISTENT_FATAL * f.lines and total >= FATAL_MIN_ROWS:
        reason = max(f.skipped, key=f.skipped.__getitem__)
        line, detail = f.first[reason]
        counts = ", ".join(f"{r} {n}" for r, n in f.skipped.items())
        raise DataError(f"{f.path}: line {line}: {REASONS[reason]} ({detail}); {total} of {f.lines} samples of "
                        f"this file do not fit ({counts}): the files do not describe one interaction sequence per "
                        "user. data.splits=resplit re-derives the splits from rec.*.json instead")
    for reason, n in f.skipped.items():
        line, detail = f.first[reason]
        log.warning("%s: skipped %d samples: %s (%s; first: line %d, %s)", f.path, n, REASONS[reason], reason, line,
                    detail)


def _concat(sets: list[SampleSet]) -> SampleSet:
    offsets = np.cumsum([0, *(int(s.pos_ptr[-1]) for s in sets)])
    return SampleSet(
        **{name: np.concatenate([getattr(s, name) for s in sets])
           for name in ("user", "target", "time", "vi_end", "ci_end", "pos")},
        pos_ptr=np.concatenate([[0], *(s.pos_ptr[1:] + o for s, o in zip(sets, offsets))]).astype(np.int64),
    )
