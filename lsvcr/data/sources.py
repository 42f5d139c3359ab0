"""Readers: turn a directory of raw files into :class:`~lsvcr.data.raw.RawTables`.

Three layouts are understood, each a reader a ``data`` config names as its ``reader._target_``:

- ``native`` (:func:`read_native`): our documented format. ``root`` holds ``videos``, ``comments``,
  ``video_interactions`` and ``comment_interactions``, each as ``<name>.csv`` or
  ``<name>.parquet`` (exactly one of the two), with the columns of :data:`~lsvcr.data.raw.SCHEMA`.
- ``kuaicomt`` (:func:`read_kuaicomt`): the public KuaiComt release (``user_video_inter.csv``, ``user_comment_inter.csv``,
  ``video_features.csv``, ``comment_features.csv``); columns are matched through :data:`KUAICOMT_ALIASES`.
- ``official`` (:func:`lsvcr.data.official.read_official`): the files read by the official LSVCR code (``photo.json``, ``comment.json``,
  ``all_photos.pkl``, ``all_comments.pkl``, ``rec.{train,val,test}.json``). They carry no
  timestamps, so interactions are rebuilt with synthetic, order-preserving ones
  (see that function).

Readers keep rows in file order and do not judge values: :func:`lsvcr.data.validate.validate`
does, and names the offending row. When a reader drops rows itself (KuaiComt's video-signal
filter), it adds a :data:`ROW_COLUMN` column with each kept row's 1-based position in the file,
so those messages still point at the right row.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from lsvcr.data.raw import SCHEMA, RawTables
from lsvcr.errors import DataError

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
    with open(path, "rb") as f:
        first = f.readline()
    try:
        header = next(csv.reader([first.decode("utf-8-sig").rstrip("\r\n")]), None)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 (header line, byte {e.start}); re-encode it as UTF-8 "
                        "(e.g. iconv -f GBK -t UTF-8)") from None
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
    if "invalid UTF8" in detail:
        return DataError(f"{path} is not UTF-8 ({where.strip() or 'somewhere'}); re-encode it as UTF-8 "
                         "(e.g. iconv -f GBK -t UTF-8)")
    return DataError(f"{path}:{where or ' unreadable CSV'}: {detail}")


#: Bytes of CSV parsed at a time. The streaming reader holds a few blocks, so reading a file costs
#: about what is kept of it, not its size (KuaiComt's user_video_inter.csv is ~9 GB).
BLOCK_SIZE = 4 << 20
_CONVERSION_RE = re.compile(r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error")


class _Retype(Exception):
    """A block does not fit the column type inferred from the first block."""

    def __init__(self, column: str):
        self.column = column


def read_csv(path: str | Path, columns: Sequence[str] | None = None, types: dict | None = None,
             notes: dict | None = None, transform: Callable[[pa.RecordBatch, int], pa.Table] | None = None) -> pa.Table:
    """Read ``columns`` (all when None) of a CSV file with a header, in file order.

    ``types`` forces the Arrow type of some columns; the others are inferred. Empty fields of
    string columns are read as null. The file is parsed in blocks of :data:`BLOCK_SIZE` bytes and
    only what is kept of each block stays in memory: the block itself, or ``transform(block,
    first_row)`` when given (``first_row``: the 0-based data row of the block's first row; the
    KuaiComt reader drops rows without a signal there). Inferred types come from the first block;
    when a later block does not fit (an id column that turns non-numeric) the file is read again
    with that column as strings, the type a whole-file read gives it.

    A row that does not parse raises :class:`DataError` naming the file, row and line instead of
    pyarrow's error; so does a file that is not UTF-8. One exception: a last line with too few
    fields (a file cut off while it was written or copied) is skipped with a warning and recorded
    in ``notes[str(path)]`` (``truncated_last_line``: its line number), which the readers put into
    the manifest.
    """
    path = Path(path)
    header = _csv_header(path)
    types = dict(types or {})
    while True:
        try:
            return _read_blocks(path, header, columns, types, notes, transform)
        except _Retype as e:
            log.info("%s: column '%s' is not numeric throughout: read as strings", path, e.column)
            types[e.column] = pa.string()


def _open_csv(path: Path, columns, types: dict, threads: bool, handler=None) -> pacsv.CSVStreamingReader:
    convert = pacsv.ConvertOptions(include_columns=list(columns) if columns is not None else None,
                                   column_types=types, strings_can_be_null=True)
    return pacsv.open_csv(path, read_options=pacsv.ReadOptions(use_threads=threads, block_size=BLOCK_SIZE),
                          parse_options=pacsv.ParseOptions(invalid_row_handler=handler), convert_options=convert)


def _read_blocks(path: Path, header: list[str], columns, types: dict, notes: dict | None, transform) -> pa.Table:
    invalid: list = []

    def skip(row) -> str:
        invalid.append(row)
        return "skip"

    parts, row = [], 0
    try:
        reader = _open_csv(path, columns, types, True, skip)
        for block in reader:
            parts.append(transform(block, row) if transform else pa.Table.from_batches([block]))
            row += block.num_rows
    except pa.ArrowInvalid as first:
        match = _CONVERSION_RE.search(str(first))
        if match and int(match.group(1)) < len(header) and header[int(match.group(1))] not in types:
            raise _Retype(header[int(match.group(1))]) from None
        _raise_with_row(path, header, columns, types)
        raise DataError(f"{path}: unreadable CSV: {first}") from None
    if invalid:
        if len(invalid) == 1 and _is_last_line(path, invalid[0].text) and invalid[0].actual_columns < len(header):
            line = _line_count(path)
            log.warning("%s: line %d has %d of %d fields (a truncated last line): skipped", path, line,
                        invalid[0].actual_columns, len(header))
            if notes is not None:
                notes.setdefault(str(path), {})["truncated_last_line"] = line
        else:
            _raise_with_row(path, header, columns, types)  # the first malformed row, with its line number
            raise DataError(f"{path}: a row has the wrong number of fields")  # not reached
    if not parts:  # a header-only file
        empty = pa.RecordBatch.from_pylist([], schema=reader.schema)
        parts = [transform(empty, 0) if transform else pa.Table.from_batches([empty])]
    return pa.concat_tables(parts)


def _raise_with_row(path: Path, header: list[str], columns, types: dict) -> None:
    """Read ``path`` again on one thread, the only reader that reports row numbers, and raise its
    first error as a :class:`DataError` naming the row and line (error paths only)."""
    try:
        for _ in _open_csv(path, columns, types, False):
            pass
    except pa.ArrowInvalid as e:
        raise _csv_error(path, header, str(e)) from None


def _is_last_line(path: Path, text: str) -> bool:
    """Whether ``text`` is the file's last non-empty line."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - len(text.encode()) - 4096))
        tail = f.read().rstrip(b"\r\n")
    return tail.rsplit(b"\n", 1)[-1].rstrip(b"\r") == text.encode()


def _line_count(path: Path) -> int:
    """Number of lines (the last one without a newline counted)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


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


def _read_native_table(path: Path, columns: Sequence[str], notes: dict | None = None) -> pa.Table:
    if path.suffix == ".parquet":
        try:
            present = pq.read_schema(path).names
            return _plain_strings(pq.read_table(path, columns=[c for c in columns if c in present]))
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: unreadable Parquet file ({e})") from None
    include = [c for c in columns if c in _csv_header(path)]
    return read_csv(path, include, {c: t for c, t in _NATIVE_TYPES.items() if c in include}, notes)


def read_native(root: str | Path) -> RawTables:
    """Read our native layout (module docstring); missing columns are left to validation."""
    root = existing_dir(root)
    tables, origin, notes = {}, {}, {}
    for name, cols in SCHEMA.items():
        path = _native_file(root, name)
        tables[name] = _read_native_table(path, list(cols), notes)
        origin[name] = str(path)
    return RawTables(**tables, origin=origin, source={"kind": "native", "root": str(root), "read_skips": notes})


def existing_dir(root: str | Path) -> Path:
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


def _to_ms(values: pa.ChunkedArray | pa.Array, column: str, peak: float | None = None) -> pa.ChunkedArray | pa.Array:
    """Float or integer Unix times -> int64 milliseconds; non-finite values become null.

    A column not named as milliseconds holds seconds unless its largest value (``peak``, over the
    whole file: the caller may pass only some of its rows) says otherwise.
    """
    values = values.cast(pa.float64())
    if column not in _MS_TIME_COLUMNS:
        if peak is None or peak < _MS_THRESHOLD:
            values = pc.multiply(values, 1000.0)
    values = pc.if_else(pc.is_finite(values), pc.round(values), pa.scalar(None, pa.float64()))
    return values.cast(pa.int64())


class _KuaiComtBlocks:
    """``read_csv`` transform for a KuaiComt file: each block as our columns, without the rows where
    no ``signals`` column is positive (kept rows get their 1-based file row in :data:`ROW_COLUMN`),
    so a 120 M-row impression log never sits in memory whole. Counts the rows it saw and the
    largest raw timestamp (the unit of a seconds-named column is decided on the whole file)."""

    def __init__(self, picked: dict[str, str], signals: Sequence[str]):
        self.picked, self.signals = picked, tuple(signals)
        self.rows, self.time_peaks = 0, []
        self.time_column = picked.get("timestamp")

    def __call__(self, block: pa.RecordBatch, first_row: int) -> pa.Table:
        if first_row == 0:  # a new pass (read_csv reads the file again after retyping a column)
            self.rows, self.time_peaks = 0, []
        self.rows += block.num_rows
        table = pa.Table.from_batches([block]).select(list(self.picked.values())).rename_columns(list(self.picked))
        if self.time_column is not None:
            self.time_peaks.append(pc.max(block[self.time_column].cast(pa.float64())).as_py())
            if self.time_column in _MS_TIME_COLUMNS:  # the unit is in the name: convert now
                table = table.set_column(table.schema.get_field_index("timestamp"), "timestamp",
                                         _to_ms(table["timestamp"], self.time_column))
        if not self.signals:
            return table
        keep = np.zeros(block.num_rows, dtype=bool)
        for s in self.signals:
            keep |= pc.fill_null(pc.greater(block[s], 0), False).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(keep)
        return table.take(pa.array(rows)).append_column(ROW_COLUMN, pa.array(rows + first_row + 1, pa.int64()))

    def finish(self, table: pa.Table) -> pa.Table:
        """The whole file's table with a seconds-named timestamp column converted to ms."""
        if self.time_column is None or self.time_column in _MS_TIME_COLUMNS:
            return table
        peak = pc.max(pa.array(self.time_peaks, pa.float64())).as_py()
        i = table.schema.get_field_index("timestamp")
        return table.set_column(i, "timestamp", _to_ms(table["timestamp"], self.time_column, peak))


def _read_kuaicomt_table(path: Path, name: str, signals: Sequence[str], notes: dict) -> tuple[pa.Table, int]:
    """One KuaiComt file as our table, with the rows where no ``signals`` column is positive
    dropped; returns the table and how many rows the signals dropped."""
    header = _csv_header(path)
    picked = _kuaicomt_columns(path, header, name)
    missing = [s for s in signals if s not in header]
    if missing:
        key = "data.video_signals" if name == "video_interactions" else "data.comment_signals"
        raise DataError(f"{path}: no signal column {', '.join(missing)} ({key}; {key}=[] keeps every row); "
                        f"columns found: {', '.join(header)}")
    types = {theirs: _TEXT_TYPES[ours] for ours, theirs in picked.items() if ours in _TEXT_TYPES}
    types.update({theirs: pa.int64() for ours, theirs in picked.items() if ours == "like_count"})
    types.update({theirs: pa.float64() for ours, theirs in picked.items() if ours == "timestamp"})
    types.update({s: pa.float64() for s in signals})
    blocks = _KuaiComtBlocks(picked, signals)
    table = blocks.finish(read_csv(path, list(dict.fromkeys([*picked.values(), *signals])), types, notes, blocks))
    return table, blocks.rows - table.num_rows


def read_kuaicomt(root: str | Path, video_signals: Sequence[str] = ("long_view", "is_like"),
                  comment_signals: Sequence[str] = ("is_like", "is_reply")) -> RawTables:
    """Read the KuaiComt release; timestamps become int64 milliseconds.

    ``user_video_inter.csv`` logs every video impression; a row counts as an interaction when
    any column of ``video_signals`` (``data.video_signals``) is positive (default: a long view or
    a like). ``user_comment_inter.csv`` likewise with ``comment_signals`` (``data.comment_signals``:
    a like or a reply). ``()`` keeps every row. The rows each filter drops are counted in
    ``source["signal_filtered"]``. The comment file's ``photo_id`` is kept as the interaction's
    ``video_id`` for validation to check against the comment's own video. Only the needed columns
    are read (the comment file is large).
    """
    root = existing_dir(root)
    tables, origin, filtered, notes = {}, {}, {}, {}
    signals = {"video_interactions": tuple(video_signals), "comment_interactions": tuple(comment_signals)}
    for name, file in KUAICOMT_FILES.items():
        path = root / file
        if not path.exists():
            raise DataError(f"{root}: missing KuaiComt file {file} (expected {', '.join(KUAICOMT_FILES.values())})")
        tables[name], dropped = _read_kuaicomt_table(path, name, signals.get(name, ()), notes)
        if name in signals:
            filtered[name] = dropped
            if dropped:
                log.info("%s: %d rows with no positive %s dropped", path, dropped, "/".join(signals[name]))
        origin[name] = str(path)
    source = {"kind": "kuaicomt", "root": str(root), "time_unit": "ms", "video_signals": list(video_signals),
              "comment_signals": list(comment_signals), "signal_filtered": filtered, "read_skips": notes}
    return RawTables(**tables, origin=origin, source=source)
