"""Validation of raw tables: fatal problems raise one clear error, recoverable ones are skipped.

Fatal (raise :class:`DataError` naming the file, the 1-based data row and its key):
missing or mistyped columns, null ids, null or blank titles and comment texts, null or negative
timestamps and like counts, and (with ``timestamps="strict"``) a user's interaction rows out of
time order. Recoverable (counted per reason in :data:`REASONS`, one warning each, rows dropped):
duplicate video/comment ids (the first is kept), exact duplicate interaction rows, comments of
unknown videos and interactions with unknown videos or comments.

Tables are only filtered, never sorted or re-indexed; every check is a vectorised Arrow/numpy
pass, so KuaiComt-sized tables (tens of millions of rows) are fine.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lsvcr.data.errors import ConfigError, DataError
from lsvcr.data.raw import SCHEMA, RawTables
from lsvcr.data.sources import ROW_COLUMN, csv_line

log = logging.getLogger(__name__)

TIMESTAMP_MODES = ("strict", "sort")

#: Recoverable problem -> (table it drops rows from, description for the warning).
REASONS: dict[str, tuple[str, str]] = {
    "duplicate_video_id": ("videos", "videos whose video_id repeats an earlier row"),
    "duplicate_comment_id": ("comments", "comments whose comment_id repeats an earlier row"),
    "comment_unknown_video": ("comments", "comments whose video_id is not in videos"),
    "duplicate_video_interaction": ("video_interactions", "exact duplicate rows"),
    "video_interaction_unknown_video": ("video_interactions", "interactions whose video_id is not in videos"),
    "duplicate_comment_interaction": ("comment_interactions", "exact duplicate rows"),
    "comment_interaction_unknown_comment": (
        "comment_interactions",
        "interactions whose comment_id is not in comments",
    ),
}

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
    checks += [(_blank(t[c]), f"empty {c}", None) for c in ("title", "text") if c in SCHEMA[name]]
    checks += [
        (pc.or_kleene(pc.is_null(t[c]), pc.less(t[c], 0)), f"null or negative {c}", c)
        for c in ("timestamp", "like_count")
        if c in SCHEMA[name]
    ]
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
    user = _codes(t["user_id"])
    order = np.argsort(user, kind="stable")  # by user, file order within a user
    user = user[order]
    time = t["timestamp"].to_numpy()[order]
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


def _dedupe(t: pa.Table, keys: list[str]) -> tuple[pa.Table, int]:
    """Keep the first row of each distinct ``keys`` value, preserving order."""
    if t.num_rows == 0:
        return t, 0
    idx = t.select(keys).append_column("__i", pa.array(np.arange(t.num_rows)))
    first = idx.group_by(keys).aggregate([("__i", "min")])["__i_min"].to_numpy()
    keep = np.zeros(t.num_rows, dtype=bool)
    keep[first] = True
    return t.filter(pa.array(keep)), t.num_rows - len(first)


def _as_common(a: pa.ChunkedArray, b: pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """Cast two id columns to one type: int64 when both are integers, else string."""
    target = pa.int64() if pa.types.is_integer(a.type) and pa.types.is_integer(b.type) else pa.string()
    return a.cast(target), b.cast(target)


def _keep_known(t: pa.Table, col: str, known: pa.ChunkedArray) -> tuple[pa.Table, int]:
    values, known = _as_common(t[col], known)
    mask = pc.is_in(values, value_set=known.combine_chunks())
    kept = t.filter(mask)
    return kept, t.num_rows - kept.num_rows


def _drop_recoverable(raw: RawTables) -> tuple[dict[str, pa.Table], dict[str, int]]:
    n: dict[str, int] = {}
    videos, n["duplicate_video_id"] = _dedupe(raw.videos, ["video_id"])
    comments, n["duplicate_comment_id"] = _dedupe(raw.comments, ["comment_id"])
    comments, n["comment_unknown_video"] = _keep_known(comments, "video_id", videos["video_id"])
    vi = raw.video_interactions
    vi, n["duplicate_video_interaction"] = _dedupe(vi, [c for c in vi.column_names if c != ROW_COLUMN])
    vi, n["video_interaction_unknown_video"] = _keep_known(vi, "video_id", videos["video_id"])
    ci = raw.comment_interactions
    ci, n["duplicate_comment_interaction"] = _dedupe(ci, [c for c in ci.column_names if c != ROW_COLUMN])
    ci, n["comment_interaction_unknown_comment"] = _keep_known(ci, "comment_id", comments["comment_id"])
    tables = {"videos": videos, "comments": comments, "video_interactions": vi, "comment_interactions": ci}
    tables = {k: t.drop_columns([ROW_COLUMN]) if ROW_COLUMN in t.column_names else t for k, t in tables.items()}
    return tables, {reason: n[reason] for reason in REASONS}


def validate(raw: RawTables, timestamps: str = "strict") -> tuple[RawTables, dict[str, int]]:
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
    raw.check_columns()
    for name in SCHEMA:
        _check_values(raw, name)
    if timestamps == "strict":
        for name in ("video_interactions", "comment_interactions"):
            _check_time_order(raw, name)
    tables, counts = _drop_recoverable(raw)
    for reason, count in counts.items():
        if count:
            name, what = REASONS[reason]
            log.warning("%s: skipped %d %s (%s)", raw.where(name), count, what, reason)
    return RawTables(**tables, origin=dict(raw.origin), source=dict(raw.source)), counts
