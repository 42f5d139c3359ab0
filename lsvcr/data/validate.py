"""Validation of raw tables: fatal problems raise one clear error, recoverable ones are skipped.

Fatal (raise :class:`DataError` naming the file, the 1-based data row and its key):
missing or mistyped columns, null ids, negative timestamps and like counts, (with
``timestamps="strict"``) a user's interaction rows out of time order, comment interactions whose
times cannot be on the videos' clock (another unit, or another column), and comment interactions
whose own video column disagrees with their comment's video on most rows (swapped columns).
Recoverable (counted per reason in :data:`REASONS`, one warning each, rows dropped): duplicate
video/comment ids (the first is kept), duplicate interaction rows (equal in every column the
reader read: user, item and time, not the source file's other columns), interactions without a
timestamp (empty or NaN), comments of unknown videos, interactions with unknown videos or
comments, and (a minority of) comment interactions filed under another video than their comment's.
Kept and counted (in ``source["empty_text"]``): videos with an empty title and comments with an
empty text; their text becomes ``empty_text`` (default ``""``).

Id columns are cast to one type per kind of id (int64 when every table has integers, else
string), so the builder can join them.

Tables are only filtered, never sorted or re-indexed; every check is a vectorised Arrow/numpy
pass, so KuaiComt-sized tables (tens of millions of rows) are fine.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lsvcr.data.raw import SCHEMA, RawTables
from lsvcr.data.sources import ROW_COLUMN, csv_line
from lsvcr.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TIMESTAMP_MODES = ("strict", "sort")

#: Recoverable problem -> (table it drops rows from, description for the warning).
REASONS: dict[str, tuple[str, str]] = {
    "duplicate_video_id": ("videos", "videos whose video_id repeats an earlier row"),
    "duplicate_comment_id": ("comments", "comments whose comment_id repeats an earlier row"),
    "comment_unknown_video": ("comments", "comments whose video_id is not in videos"),
    "video_interaction_null_timestamp": ("video_interactions", "interactions without a timestamp (empty or NaN)"),
    "duplicate_video_interaction": ("video_interactions", "duplicate rows (equal user, video and timestamp)"),
    "video_interaction_unknown_video": ("video_interactions", "interactions whose video_id is not in videos"),
    "comment_interaction_null_timestamp": ("comment_interactions", "interactions without a timestamp (empty or NaN)"),
    "duplicate_comment_interaction": ("comment_interactions", "duplicate rows (equal user, comment and timestamp)"),
    "comment_interaction_unknown_comment": (
        "comment_interactions",
        "interactions whose comment_id is not in comments",
    ),
    "comment_interaction_wrong_video": (
        "comment_interactions",
        "interactions whose video column is not their comment's video",
    ),
}
#: share of disagreeing rows above which a comment-interaction video column means swapped columns
WRONG_VIDEO_FATAL = 0.5

_KEY = {  # the id shown with a row in messages
    "videos": "video_id",
    "comments": "comment_id",
    "video_interactions": "user_id",
    "comment_interactions": "user_id",
}
_BLANK = r"^[\s\p{Z}]*$"  # also catches full-width spaces, common in Chinese text


def _row_label(raw: RawTables, name: str, i: int) -> str:
    """``row N (line L)`` for 0-based table row ``i``; the line only for CSV files."""
    t = raw.table(name)
    row = t[ROW_COLUMN][i].as_py() if ROW_COLUMN in t.column_names else i + 1
    origin = raw.where(name)
    if origin.endswith(".csv") and Path(origin).is_file():
        return f"row {row} (line {csv_line(origin, row)})"
    return f"row {row}"


def _where(raw: RawTables, name: str, i: int) -> str:
    """``file: row N (line L), key=value`` for 0-based table row ``i``."""
    key = _KEY[name]
    return f"{raw.where(name)}: {_row_label(raw, name, i)}, {key}={raw.table(name)[key][i].as_py()!r}"


def _first(mask: pa.ChunkedArray | pa.Array) -> int:
    """Index of the first True (nulls count as False), -1 when none."""
    return pc.index(pc.fill_null(mask, False), True).as_py()


def _blank(col: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_null(col.type):
        return pc.is_null(col)
    return pc.or_kleene(pc.is_null(col), pc.match_substring_regex(col, _BLANK))


def _check_values(raw: RawTables, name: str) -> None:
    t = raw.table(name)
    checks = [(pc.is_null(t[c]), f"null {c}", None) for c, kind in SCHEMA[name].items() if kind == "id"]
    checks += [(pc.less(t["timestamp"], 0), "negative timestamp", "timestamp")] if "timestamp" in SCHEMA[name] else []
    checks += [(pc.or_kleene(pc.is_null(t[c]), pc.less(t[c], 0)), f"null or negative {c}", c)
               for c in ("like_count",) if c in SCHEMA[name]]
    for mask, problem, shown in checks:
        i = _first(mask)
        if i >= 0:
            value = f" ({t[shown][i].as_py()})" if shown else ""
            raise DataError(f"{_where(raw, name, i)}: {problem}{value}")


def _codes(col: pa.ChunkedArray) -> np.ndarray:
    """Integer codes with equal codes for equal values (ids may be strings)."""
    if pa.types.is_integer(col.type):
        return col.to_numpy()
    return pc.dictionary_encode(col.combine_chunks()).indices.to_numpy(zero_copy_only=False)


def _check_time_order(raw: RawTables, name: str) -> None:
    """Each user's rows must have non-decreasing timestamps in file order."""
    t = raw.table(name)
    if t.num_rows < 2:
        return
    valid = pc.is_valid(t["timestamp"]).to_numpy(zero_copy_only=False)  # rows without a time are dropped later
    rows = np.flatnonzero(valid)
    user = _codes(t["user_id"])[rows]
    order = rows[np.argsort(user, kind="stable")]  # by user, file order within a user
    user = _codes(t["user_id"])[order]
    time = pc.fill_null(t["timestamp"], 0).to_numpy()[order]
    bad = np.flatnonzero((user[1:] == user[:-1]) & (time[1:] < time[:-1]))
    if len(bad) == 0:
        return
    k = bad[np.argmin(order[bad + 1])]  # the violation that comes first in the file
    i, j = int(order[k + 1]), int(order[k])
    raise DataError(
        f"{_where(raw, name, i)}: timestamp {time[k + 1]} is earlier than {time[k]} at this user's "
        f"previous {_row_label(raw, name, j)}; a user's interactions must be in time order (out-of-order "
        "rows usually mean mixed time units or a broken export). If the file is only unsorted, set "
        "data.timestamps=sort"
    )


_MIX = np.uint64(0x9E3779B97F4A7C15)


def _row_hashes(t: pa.Table, keys: list[str]) -> np.ndarray:
    """A 64-bit hash of each row's ``keys``: equal rows hash equal; unequal rows may collide
    (nulls hash like 0 or -1), so a shared hash only makes rows candidates for an exact check."""
    h = np.zeros(t.num_rows, np.uint64)
    for k in keys:
        col = t[k]
        if pa.types.is_integer(col.type):
            x = pc.fill_null(col, 0).cast(pa.int64()).to_numpy()
        else:
            x = pc.fill_null(pc.dictionary_encode(col.combine_chunks()).indices, -1).to_numpy().astype(np.int64)
        h ^= x.view(np.uint64)
        h *= _MIX
        h ^= h >> np.uint64(29)
    return h


def _dedupe(t: pa.Table, keys: list[str]) -> tuple[pa.Table, int]:
    """Keep the first row of each distinct ``keys`` value, preserving order.

    Rows whose key hash is unique are unique; only rows sharing a hash are grouped exactly, so
    tens of millions of distinct interactions cost two uint64 arrays, not a hash table of rows,
    and a table without duplicates is returned as it is (no copy).
    """
    if t.num_rows == 0:
        return t, 0
    h = _row_hashes(t, keys)
    s = np.sort(h)
    shared = np.unique(s[1:][s[1:] == s[:-1]])
    del s
    if len(shared) == 0:
        return t, 0
    cand = np.flatnonzero(shared[np.minimum(np.searchsorted(shared, h), len(shared) - 1)] == h)
    del h
    sub = t.select(keys).take(pa.array(cand)).append_column("__i", pa.array(cand))
    first = sub.group_by(keys).aggregate([("__i", "min")])["__i_min"].to_numpy()
    drop = np.setdiff1d(cand, first)
    if len(drop) == 0:
        return t, 0
    keep = np.ones(t.num_rows, dtype=bool)
    keep[drop] = False
    return t.filter(pa.array(keep)), len(drop)


def _as_common(a: pa.ChunkedArray, b: pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """Cast two id columns to one type: int64 when both are integers, else string."""
    target = pa.int64() if pa.types.is_integer(a.type) and pa.types.is_integer(b.type) else pa.string()
    return a.cast(target), b.cast(target)


#: share of interactions with unknown ids above which the file's id column is wrong, not a few rows
#: (judged from FATAL_MIN_ROWS bad rows on: a handful of rows is a data problem, not a schema one)
UNKNOWN_FATAL = 0.5
FATAL_MIN_ROWS = 10


def _keep_known(t: pa.Table, col: str, known: pa.ChunkedArray, raw: RawTables | None = None,
                name: str | None = None, of: str = "") -> tuple[pa.Table, int]:
    """Rows of ``t`` whose ``col`` is in ``known``; with ``raw``/``name`` (an interaction table),
    most rows unknown is fatal: the ids come from another column or another dataset."""
    values, known = _as_common(t[col], known)
    mask = pc.is_in(values, value_set=known.combine_chunks())
    dropped = t.num_rows - pc.sum(mask).as_py() if t.num_rows else 0
    kept = t.filter(mask) if dropped else t  # no copy of a table with nothing to drop
    if raw is not None and dropped > UNKNOWN_FATAL * t.num_rows and dropped >= FATAL_MIN_ROWS:
        i = _first(pc.invert(mask))
        raise DataError(f"{_where(raw, name, i)}: {dropped} of {t.num_rows} rows name a {col} that is not in {of} "
                        f"(this row: {t[col][i].as_py()!r}); the column looks swapped or comes from another dataset")
    return kept, dropped


def _with_time(t: pa.Table) -> tuple[pa.Table, int]:
    if t["timestamp"].null_count == 0:
        return t, 0
    kept = t.filter(pc.is_valid(t["timestamp"]))
    return kept, t.num_rows - kept.num_rows


def _own_video(raw: RawTables, ci: pa.Table, comments: pa.Table) -> tuple[pa.Table, int]:
    """Drop comment interactions whose ``video_id`` column is not their comment's video; when most
    rows disagree the columns are swapped or mislabelled, which is fatal."""
    if "video_id" not in ci.column_names or ci.num_rows == 0:
        return (ci.drop_columns(["video_id"]) if "video_id" in ci.column_names else ci), 0
    own_ids, given = _as_common(comments["video_id"], ci["video_id"])
    cids, ci_cids = _as_common(comments["comment_id"], ci["comment_id"])
    own = pc.take(own_ids.combine_chunks(), pc.index_in(ci_cids, value_set=cids.combine_chunks()))
    agree = pc.fill_null(pc.equal(own, given), False)
    wrong = ci.num_rows - pc.sum(agree).as_py()
    if wrong > WRONG_VIDEO_FATAL * ci.num_rows and wrong >= FATAL_MIN_ROWS:
        i = _first(pc.invert(agree))
        raise DataError(
            f"{_where(raw, 'comment_interactions', i)}: {wrong} of {ci.num_rows} comment interactions name another "
            f"video than their comment's (this row: video {given[i].as_py()!r}, its comment {ci_cids[i].as_py()!r} is "
            f"under {own[i].as_py()!r}); the video and comment columns look swapped or mislabelled")
    return (ci.filter(agree) if wrong else ci).drop_columns(["video_id"]), wrong


def _check_comment_clock(raw: RawTables, vi: pa.Table, ci: pa.Table) -> None:
    """Comment interactions must be on the video interactions' clock: most of them within the
    videos' time range widened by its own length. Otherwise the unit (seconds / milliseconds)
    or the column (an id read as a time) is wrong, and histories would mix the two streams."""
    if vi.num_rows == 0 or ci.num_rows == 0:
        return
    lo, hi = pc.min(vi["timestamp"]).as_py(), pc.max(vi["timestamp"]).as_py()
    span = max(hi - lo, 1)
    inside = pc.and_(pc.greater_equal(ci["timestamp"], lo - span), pc.less_equal(ci["timestamp"], hi + span))
    share = pc.mean(inside.cast(pa.float64())).as_py()
    med, vi_med = float(np.median(ci["timestamp"].to_numpy())), float(np.median(vi["timestamp"].to_numpy()))
    # both tests must fail: out of range alone happens with small relative clocks, and a different
    # magnitude alone with comments all early in the window
    other_magnitude = vi_med <= 0 or not 0.1 <= med / vi_med <= 10
    if share < 0.5 and other_magnitude:
        med = int(med)
        raise DataError(
            f"{raw.where('comment_interactions')}: only {share:.0%} of comment interaction timestamps fall near the "
            f"video interactions' range [{lo}, {hi}] (median comment time {med}); the two files use different time "
            "units (seconds vs milliseconds) or the timestamp column holds something else (an id)")


def _same_id_types(tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """Cast each kind of id to one type across the tables: int64 if all are integers, else string."""
    for col, names in (("user_id", ("video_interactions", "comment_interactions")),
                       ("video_id", ("videos", "comments", "video_interactions")),
                       ("comment_id", ("comments", "comment_interactions"))):
        types = [tables[n].schema.field(col).type for n in names if tables[n].num_rows]
        target = pa.int64() if types and all(pa.types.is_integer(t) for t in types) else pa.string()
        for n in names:
            t = tables[n]
            i = t.schema.get_field_index(col)
            if t.schema.field(col).type != target:
                tables[n] = t.set_column(i, col, t[col].cast(target))
    return tables


def _drop_recoverable(raw: RawTables) -> tuple[dict[str, pa.Table], dict[str, int]]:
    n: dict[str, int] = {}
    videos, n["duplicate_video_id"] = _dedupe(raw.videos, ["video_id"])
    comments, n["duplicate_comment_id"] = _dedupe(raw.comments, ["comment_id"])
    comments, n["comment_unknown_video"] = _keep_known(comments, "video_id", videos["video_id"])
    vi = raw.video_interactions
    vi, n["video_interaction_null_timestamp"] = _with_time(vi)
    vi, n["duplicate_video_interaction"] = _dedupe(vi, [c for c in vi.column_names if c != ROW_COLUMN])
    vi, n["video_interaction_unknown_video"] = _keep_known(vi, "video_id", videos["video_id"], raw,
                                                           "video_interactions", "videos")
    ci = raw.comment_interactions
    ci, n["comment_interaction_null_timestamp"] = _with_time(ci)
    ci, n["duplicate_comment_interaction"] = _dedupe(ci, [c for c in ci.column_names if c not in (ROW_COLUMN, "video_id")])
    ci, n["comment_interaction_unknown_comment"] = _keep_known(ci, "comment_id", comments["comment_id"], raw,
                                                               "comment_interactions", "comments")
    ci, n["comment_interaction_wrong_video"] = _own_video(raw, ci, comments)
    _check_comment_clock(raw, vi, ci)
    tables = {"videos": videos, "comments": comments, "video_interactions": vi, "comment_interactions": ci}
    tables = {k: t.drop_columns([ROW_COLUMN]) if ROW_COLUMN in t.column_names else t for k, t in tables.items()}
    return _same_id_types(tables), {reason: n[reason] for reason in REASONS}


def _empty_types(raw: RawTables) -> None:
    """Give the columns of header-only files (Arrow type null) their schema type."""
    kinds = {"id": pa.string(), "string": pa.string(), "int": pa.int64()}
    for name, cols in SCHEMA.items():
        t = raw.table(name)
        for col, kind in cols.items():
            if col in t.column_names and pa.types.is_null(t.schema.field(col).type):
                t = t.set_column(t.schema.get_field_index(col), col, t[col].cast(kinds[kind.rstrip("?")]))
        setattr(raw, name, t)


def _fill_empty_text(raw: RawTables, empty_text: str) -> dict[str, int]:
    """Blank titles and comment texts become ``empty_text``; returns how many of each."""
    counts = {}
    for name, col, key in (("videos", "title", "empty_title"), ("comments", "text", "empty_comment_text")):
        t = raw.table(name)
        blank = _blank(t[col])
        counts[key] = int(pc.sum(pc.fill_null(blank, False).cast(pa.int64())).as_py() or 0)
        if counts[key]:
            i = _first(blank)
            log.warning("%s: %d rows with an empty %s kept with the text %r (first: %s)", raw.where(name),
                        counts[key], col, empty_text, _row_label(raw, name, i))
            filled = pc.if_else(pc.fill_null(blank, True), pa.scalar(empty_text, pa.string()), t[col].cast(pa.string()))
            setattr(raw, name, t.set_column(t.schema.get_field_index(col), col, filled))
    return counts


def validate(raw: RawTables, timestamps: str = "strict", empty_text: str = "") -> tuple[RawTables, dict[str, int]]:
    """Check ``raw`` and drop recoverable problems.

    Args:
        raw: tables as read by a source, rows in file order.
        timestamps: ``"strict"`` requires each user's interaction rows in non-decreasing time
            order; ``"sort"`` accepts any order (the builder sorts).

    Returns:
        The filtered tables (same origin and source, :data:`ROW_COLUMN` removed) and the number
        of rows skipped per reason of :data:`REASONS`.

    Raises:
        DataError: on the first fatal problem, naming the file, row and key.
        ConfigError: on an unknown ``timestamps`` mode.
    """
    if timestamps not in TIMESTAMP_MODES:
        raise ConfigError(f"data.timestamps={timestamps!r}: expected one of {', '.join(TIMESTAMP_MODES)}")
    if not isinstance(empty_text, str):
        raise ConfigError(f"data.empty_text={empty_text!r}: expected a string (quote it: \"data.empty_text='...'\")")
    raw.check_columns()
    raw = replace(raw, origin=dict(raw.origin), source=dict(raw.source))  # a copy: the caller's stays as read
    _empty_types(raw)
    for name in SCHEMA:
        _check_values(raw, name)
    raw.source["empty_text"] = _fill_empty_text(raw, empty_text)
    if timestamps == "strict":
        for name in ("video_interactions", "comment_interactions"):
            _check_time_order(raw, name)
    tables, counts = _drop_recoverable(raw)
    for reason, count in counts.items():
        if count:
            name, what = REASONS[reason]
            log.warning("%s: skipped %d %s (%s)", raw.where(name), count, what, reason)
    return replace(raw, **tables, origin=dict(raw.origin), source=dict(raw.source)), counts
