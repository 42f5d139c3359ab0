"""Readers: turn a directory of raw files into :class:`~lsvcr.data.raw.RawTables`.

Three layouts are understood (``read_source(kind, root)``):

- ``native``: our documented format. ``root`` holds ``videos``, ``comments``,
  ``video_interactions`` and ``comment_interactions``, each as ``<name>.csv`` or
  ``<name>.parquet`` (exactly one of the two), with the columns of :data:`~lsvcr.data.raw.SCHEMA`.
- ``kuaicomt``: the public KuaiComt release (``user_video_inter.csv``, ``user_comment_inter.csv``,
  ``video_features.csv``, ``comment_features.csv``); columns are matched through :data:`KUAICOMT_ALIASES`.
- ``official``: the files read by the official LSVCR code (``photo.json``, ``comment.json``,
  ``all_photos.pkl``, ``all_comments.pkl``, ``rec.{train,val,test}.json``). They carry no
  timestamps, so interactions are rebuilt with synthetic, order-preserving ones
  (see :func:`read_official`).

Readers keep rows in file order and do not judge values: :func:`lsvcr.data.validate.validate`
does, and names the offending row. When a reader drops rows itself (KuaiComt's video-signal
filter), it adds a :data:`ROW_COLUMN` column with each kept row's 1-based position in the file,
so those messages still point at the right row.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import pickle
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from lsvcr.data.errors import ConfigError, DataError
from lsvcr.data.raw import SCHEMA, RawTables

log = logging.getLogger(__name__)

#: Optional column: 1-based row of the source file, present when the reader dropped rows.
ROW_COLUMN = "_row"

_TEXT_TYPES = {"title": pa.string(), "text": pa.string(), "category": pa.string()}
_NATIVE_TYPES = {**_TEXT_TYPES, "timestamp": pa.int64(), "like_count": pa.int64()}
_ROW_RE = re.compile(r"Row #(\d+): ")
_COLUMN_RE = re.compile(r"In CSV column #(\d+): ")


# ----------------------------------------------------------------------------- CSV helpers


def csv_line(path: str | Path, row: int) -> int:
    """Physical line (1-based) of data row ``row`` of a CSV file with a header.

    Blank lines are skipped by the CSV reader, so they are skipped here too; only called on
    error paths, where reading the file up to the row is affordable.
    """
    seen = 0
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip(b"\r\n"):
                seen += 1
                if seen == row + 1:
                    return line_no
    return row + 1


def _csv_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise DataError(f"{path}: empty file, expected a header line")
    return header


def _csv_error(path: Path, header: list[str], message: str) -> DataError:
    """Turn pyarrow's message (``In CSV column #k: Row #n: detail``) into one naming the line."""
    detail = message.removeprefix("CSV parse error: ")
    where = ""
    row_match = _ROW_RE.search(detail)
    if row_match:
        row = int(row_match.group(1)) - 1  # pyarrow counts the header as row 1
        where = f" row {row} (line {csv_line(path, row)})"
    col_match = _COLUMN_RE.search(detail)
    if col_match and int(col_match.group(1)) < len(header):
        where += f", column '{header[int(col_match.group(1))]}'"
    detail = _COLUMN_RE.sub("", _ROW_RE.sub("", detail))
    return DataError(f"{path}:{where or ' unreadable CSV'}: {detail}")


def read_csv(path: str | Path, columns: Sequence[str] | None = None, types: dict | None = None) -> pa.Table:
    """Read ``columns`` (all when None) of a CSV file with a header, in file order.

    ``types`` forces the Arrow type of some columns; the others are inferred. Empty fields of
    string columns are read as null. A row that does not parse raises :class:`DataError`
    naming the file, row and line instead of pyarrow's error.
    """
    path = Path(path)
    header = _csv_header(path)
    convert = pacsv.ConvertOptions(
        include_columns=list(columns) if columns is not None else None,
        column_types=types or {},
        strings_can_be_null=True,
    )

    def read(threads: bool) -> pa.Table:
        return pacsv.read_csv(path, read_options=pacsv.ReadOptions(use_threads=threads), convert_options=convert)

    try:
        return read(True)
    except pa.ArrowInvalid as first:
        # Only the single-threaded reader reports row numbers; pay for it on the error path only.
        try:
            read(False)
        except pa.ArrowInvalid as e:
            raise _csv_error(path, header, str(e)) from None
        raise DataError(f"{path}: unreadable CSV: {first}") from None


def _plain_strings(table: pa.Table) -> pa.Table:
    """Decode dictionary-encoded columns (common in Parquet) to their value type."""
    for i, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(f.type.value_type))
    return table


# ----------------------------------------------------------------------------- native


def _native_file(root: Path, name: str) -> Path:
    found = [root / f"{name}{ext}" for ext in (".csv", ".parquet") if (root / f"{name}{ext}").exists()]
    if not found:
        raise DataError(f"{root}: missing table '{name}': expected {name}.csv or {name}.parquet")
    if len(found) > 1:
        raise DataError(f"{root}: both {name}.csv and {name}.parquet exist; keep exactly one")
    return found[0]


def _read_native_table(path: Path, columns: Sequence[str]) -> pa.Table:
    if path.suffix == ".parquet":
        try:
            present = pq.read_schema(path).names
            return _plain_strings(pq.read_table(path, columns=[c for c in columns if c in present]))
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: unreadable Parquet file ({e})") from None
    include = [c for c in columns if c in _csv_header(path)]
    return read_csv(path, include, {c: t for c, t in _NATIVE_TYPES.items() if c in include})


def read_native(root: str | Path) -> RawTables:
    """Read our native layout (module docstring); missing columns are left to validation."""
    root = _existing_dir(root)
    tables, origin = {}, {}
    for name, cols in SCHEMA.items():
        path = _native_file(root, name)
        tables[name] = _read_native_table(path, list(cols))
        origin[name] = str(path)
    return RawTables(**tables, origin=origin, source={"kind": "native", "root": str(root)})


def _existing_dir(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data directory not found")
    return root


# ----------------------------------------------------------------------------- KuaiComt

KUAICOMT_FILES = {
    "videos": "video_features.csv",
    "comments": "comment_features.csv",
    "video_interactions": "user_video_inter.csv",
    "comment_interactions": "user_comment_inter.csv",
}

#: Our column -> KuaiComt column names accepted for it, first present one wins. The release
#: documents ``caption``, ``comment_content``, ``comment_like_cnt``, ``time_ms`` (video
#: interactions, ms) and ``time_stamp`` / ``photo_id`` (comment interactions, seconds).
KUAICOMT_ALIASES = {
    "user_id": ("user_id",),
    "video_id": ("video_id", "photo_id"),
    "comment_id": ("comment_id",),
    "title": ("caption", "title"),
    "category": ("category",),
    "text": ("comment_content", "content", "text"),
    "like_count": ("comment_like_cnt", "like_cnt", "like_count"),
    "timestamp": ("time_ms", "timestamp_ms", "time_stamp", "timestamp"),
}
_MS_TIME_COLUMNS = frozenset({"time_ms", "timestamp_ms"})
#: Unix time in ms passed 1e11 in 1973 and in seconds will not before year 5138, so a
#: seconds-named column whose values reach it already holds milliseconds.
_MS_THRESHOLD = 1e11


def _kuaicomt_columns(path: Path, header: list[str], name: str) -> dict[str, str]:
    picked = {}
    for col, kind in SCHEMA[name].items():
        hit = next((a for a in KUAICOMT_ALIASES[col] if a in header), None)
        if hit is None and not kind.endswith("?"):
            raise DataError(
                f"{path}: no column for '{col}' (accepted names: {', '.join(KUAICOMT_ALIASES[col])}); "
                f"columns found: {', '.join(header)}"
            )
        if hit is not None:
            picked[col] = hit
    return picked


def _to_ms(values: pa.ChunkedArray, column: str) -> pa.ChunkedArray:
    """Float or integer Unix times -> int64 milliseconds; non-finite values become null."""
    values = values.cast(pa.float64())
    if column not in _MS_TIME_COLUMNS:
        peak = pc.max(values).as_py()
        if peak is None or peak < _MS_THRESHOLD:
            values = pc.multiply(values, 1000.0)
    values = pc.if_else(pc.is_finite(values), pc.round(values), pa.scalar(None, pa.float64()))
    return values.cast(pa.int64())


def _read_kuaicomt_table(path: Path, name: str, signals: Sequence[str]) -> pa.Table:
    header = _csv_header(path)
    picked = _kuaicomt_columns(path, header, name)
    missing = [s for s in signals if s not in header]
    if missing:
        raise DataError(f"{path}: no signal column {', '.join(missing)}; columns found: {', '.join(header)}")
    types = {theirs: _TEXT_TYPES[ours] for ours, theirs in picked.items() if ours in _TEXT_TYPES}
    types.update({theirs: pa.int64() for ours, theirs in picked.items() if ours == "like_count"})
    types.update({theirs: pa.float64() for ours, theirs in picked.items() if ours == "timestamp"})
    types.update({s: pa.float64() for s in signals})
    raw = read_csv(path, list(dict.fromkeys([*picked.values(), *signals])), types)
    table = raw.select(list(picked.values())).rename_columns(list(picked))
    if "timestamp" in picked:
        table = table.set_column(table.schema.get_field_index("timestamp"), "timestamp",
                                 _to_ms(table["timestamp"], picked["timestamp"]))
    if signals:
        keep = np.zeros(raw.num_rows, dtype=bool)
        for s in signals:
            keep |= pc.fill_null(pc.greater(raw[s], 0), False).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(keep)
        table = table.take(pa.array(rows)).append_column(ROW_COLUMN, pa.array(rows + 1, pa.int64()))
    return table


def read_kuaicomt(root: str | Path, video_signals: Sequence[str] = ("long_view", "is_like")) -> RawTables:
    """Read the KuaiComt release; timestamps become int64 milliseconds.

    ``user_video_inter.csv`` logs every video impression; a row counts as an interaction when
    any column of ``video_signals`` is positive (default: a long view or a like). Pass ``()``
    to keep every impression. Only the needed columns are read (the comment file is large).
    """
    root = _existing_dir(root)
    tables, origin = {}, {}
    for name, file in KUAICOMT_FILES.items():
        path = root / file
        if not path.exists():
            raise DataError(f"{root}: missing KuaiComt file {file} (expected {', '.join(KUAICOMT_FILES.values())})")
        signals = tuple(video_signals) if name == "video_interactions" else ()
        tables[name] = _read_kuaicomt_table(path, name, signals)
        origin[name] = str(path)
    source = {"kind": "kuaicomt", "root": str(root), "time_unit": "ms", "video_signals": list(video_signals)}
    return RawTables(**tables, origin=origin, source=source)


# ----------------------------------------------------------------------------- official LSVCR

OFFICIAL_SPLITS = ("train", "val", "test")  # chronological: a later split holds later targets


class _IdListUnpickler(pickle.Unpickler):
    """Unpickler that resolves no global at all: lists, tuples, ints and strs are built from
    opcodes alone, so anything that needs a class or function (``os.system``...) is refused."""

    def __init__(self, file: io.BufferedReader, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        raise DataError(f"{self.path}: refusing to load '{module}.{name}'; expected a plain list of ids")


def load_id_list(path: str | Path) -> list[str]:
    """Ids of an official ``all_*.pkl`` file (a list whose entry 0 is padding), as strings."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            ids = _IdListUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as e:  # any malformed pickle: EOFError, UnpicklingError, ValueError, ...
        raise DataError(f"{path}: unreadable pickle ({type(e).__name__}: {e})") from None
    if not isinstance(ids, (list, tuple)) or not all(type(x) in (int, str) for x in ids):
        raise DataError(f"{path}: expected a list of int or str ids, got {type(ids).__name__}")
    return [str(x) for x in ids[1:]]


def _load_json_object(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object mapping ids to entries")
    return obj


def _check_sample(rec: object, where: str) -> dict:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object")
    for key in ("user_id", "target_photo", "photo_inter_his", "comment_inter_his"):
        if key not in rec:
            raise DataError(f"{where}: missing key '{key}'")
    chis = rec["comment_inter_his"]
    ok = isinstance(chis, list) and len(chis) == 2 and all(isinstance(p, list) for p in chis)
    if not ok or len(chis[0]) != len(chis[1]) or not all(isinstance(g, list) for g in chis[1]):
        raise DataError(f"{where}: 'comment_inter_his' must be [[video ids], [[comment ids], ...]] of equal lengths")
    if not isinstance(rec["photo_inter_his"], list):
        raise DataError(f"{where}: 'photo_inter_his' must be a list of video ids")
    return rec


def _json_lines(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {line_no}: invalid JSON ({e.msg})") from None
            yield _check_sample(rec, f"{path}: line {line_no}")


def _latest_samples(paths: Sequence[Path]) -> dict[str, dict]:
    """Per user, the sample of the latest split with the longest video history (later lines
    win ties): its history plus target is the user's most complete sequence."""
    best: dict[str, tuple[tuple[int, int], dict]] = {}
    for rank, path in enumerate(paths):
        for rec in _json_lines(path):
            user, key = str(rec["user_id"]), (rank, len(rec["photo_inter_his"]))
            if user not in best or key >= best[user][0]:
                best[user] = (key, rec)
    return {user: rec for user, (_, rec) in best.items()}


def _official_interactions(samples: dict[str, dict]) -> tuple[pa.Table, pa.Table, dict[str, str]]:
    """Rebuild both interaction tables from one sample per user (see :func:`read_official`).

    Returns the two tables and comment -> video pairs seen in the comment histories.
    """
    vi: tuple[list, list, list] = ([], [], [])
    ci: tuple[list, list, list] = ([], [], [])
    comment_video: dict[str, str] = {}
    for user, rec in samples.items():
        seq = [str(v) for v in rec["photo_inter_his"]] + [str(rec["target_photo"])]
        vi[0].extend([user] * len(seq))
        vi[1].extend(seq)
        vi[2].extend(range(1, len(seq) + 1))
        position = {v: i for i, v in enumerate(seq[:-1], start=1)}  # last occurrence wins
        time = 1
        for video, group in zip(*rec["comment_inter_his"]):
            time = max(time, position.get(str(video), 0))
            for comment in map(str, group):
                ci[0].append(user)
                ci[1].append(comment)
                ci[2].append(time)
                comment_video.setdefault(comment, str(video))
    names = (["user_id", "video_id", "timestamp"], ["user_id", "comment_id", "timestamp"])
    types = [pa.string(), pa.string(), pa.int64()]
    tables = [pa.table([pa.array(c, t) for c, t in zip(cols, types)], names=n) for cols, n in zip((vi, ci), names)]
    return tables[0], tables[1], comment_video


def _check_listed(root: Path, ids: list[str], entries: dict, pkl: str, js: str) -> None:
    absent = next((i for i, x in enumerate(ids, start=1) if x not in entries), None)
    if absent is not None:
        raise DataError(f"{root / pkl}: entry {absent} (id '{ids[absent - 1]}') has no entry in {root / js}")


def _official_comments(
    comment_ids: list[str], comments: dict, photo_ids: list[str], lists: list[list[str]], comment_video: dict[str, str]
) -> pa.Table:
    """Comments with their video (null when unknown) and like_count (reverse rank, see caller)."""
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    likes = np.repeat(lengths, lengths) - (np.arange(lengths.sum()) - starts)
    owner = pc.take(pa.array(photo_ids, pa.string()), pa.array(np.repeat(np.arange(len(lists)), lengths)))
    flat = pa.array([c for lst in lists for c in lst], pa.string())
    first = pc.index_in(pa.array(comment_ids, pa.string()), value_set=flat)  # first listing wins
    video = pc.coalesce(pc.take(owner, first), pa.array([comment_video.get(c) for c in comment_ids], pa.string()))
    text = [comments[c].get("content") if isinstance(comments[c], dict) else comments[c] for c in comment_ids]
    return pa.table({
        "comment_id": pa.array(comment_ids, pa.string()),
        "video_id": video,
        "text": pa.array(text, pa.string()),
        "like_count": pc.fill_null(pc.take(pa.array(likes, pa.int64()), first), 0),
    })


def _official_items(root: Path, comment_video: dict[str, str]) -> tuple[pa.Table, pa.Table, int]:
    """Videos in ``all_photos.pkl`` order and comments in ``all_comments.pkl`` order.

    A comment's video and popularity come from the ``comment_list`` that holds it (like_count =
    reverse rank: the most popular of ``m`` gets ``m``); comments listed nowhere take the video
    of a comment history holding them (like_count 0) or are dropped. Returns the number dropped.
    """
    photo_ids, comment_ids = load_id_list(root / "all_photos.pkl"), load_id_list(root / "all_comments.pkl")
    photos, comments = _load_json_object(root / "photo.json"), _load_json_object(root / "comment.json")
    _check_listed(root, photo_ids, photos, "all_photos.pkl", "photo.json")
    _check_listed(root, comment_ids, comments, "all_comments.pkl", "comment.json")
    entry = [photos[p] if isinstance(photos[p], dict) else {} for p in photo_ids]
    videos = pa.table({
        "video_id": pa.array(photo_ids, pa.string()),
        "title": pa.array([e.get("title") for e in entry], pa.string()),
        "category": pa.nulls(len(photo_ids), pa.string()),
    })
    lists = [[str(c) for c in e.get("comment_list") or []] for e in entry]
    table = _official_comments(comment_ids, comments, photo_ids, lists, comment_video)
    known = pc.is_valid(table["video_id"])
    return videos, table.filter(known), len(comment_ids) - pc.sum(known).as_py()


def read_official(root: str | Path) -> RawTables:
    """Read the official LSVCR files and rebuild interactions with synthetic timestamps.

    The official files hold training samples, not event logs. Per user, the sample of the latest
    split with the longest ``photo_inter_his`` gives the video sequence ``photo_inter_his +
    [target_photo]``, stamped 1..n in that order. Its ``comment_inter_his`` gives the comment
    interactions: group g gets ``t_g = max(t_{g-1}, p_g)`` with ``t_0 = 1``, where ``p_g`` is the
    1-based position of the group's video in the video history (0 when absent). So a group on a
    history video shares that video's stamp (the comment was made while watching it), a group on
    another video takes the previous group's stamp, every stamp is below the target's (the whole
    history stays visible to the last sample) and stamps never decrease. Equal stamps are
    ordered by row, so the builder must sort stably. All ids are strings.
    """
    root = _existing_dir(root)
    paths = [root / f"rec.{s}.json" for s in OFFICIAL_SPLITS if (root / f"rec.{s}.json").exists()]
    if not paths:
        raise DataError(f"{root}: no rec.train.json, rec.val.json or rec.test.json found")
    video_inter, comment_inter, comment_video = _official_interactions(_latest_samples(paths))
    videos, comments, dropped = _official_items(root, comment_video)
    if dropped:
        log.warning("%s: skipped %d comments that belong to no video's comment_list or history", root, dropped)
    samples = ", ".join(str(p) for p in paths)
    origin = {"videos": str(root / "photo.json"), "comments": str(root / "comment.json"),
              "video_interactions": samples, "comment_interactions": samples}
    source = {"kind": "official", "root": str(root), "comments_without_video": dropped,
              "timestamps": "reconstructed: per-user sequence positions 1..n, the files hold no times"}
    return RawTables(videos, comments, video_inter, comment_inter, origin=origin, source=source)


# ----------------------------------------------------------------------------- dispatch

SOURCES: dict[str, Callable[..., RawTables]] = {
    "native": read_native,
    "kuaicomt": read_kuaicomt,
    "official": read_official,
}


def read_source(kind: str, root: str | Path, **options) -> RawTables:
    """Read ``root`` with the reader named ``kind``; ``options`` go to that reader."""
    if kind not in SOURCES:
        raise ConfigError(f"unknown data source '{kind}'; choose one of: {', '.join(SOURCES)}")
    return SOURCES[kind](root, **options)
