"""RecBole atomic files (``NAME.inter``, ``NAME.item``, optional ``NAME.user``) as :class:`RawTables`.

The format (https://recbole.io/atomic_files.html): tab-separated, one typed header line
``field:type`` with ``type`` one of ``token``, ``token_seq``, ``float``, ``float_seq``; no quoting.
This is how public benchmarks (MovieLens, Amazon, Yelp, ...) are distributed for RecBole, so a
model trained here can be set against RecBole's published numbers on the same preprocessing.

RecBole's filters are applied by the same names, with the same meaning and in the same order as
RecBole's ``Dataset._data_filtering``:

1. rows with a missing user or item id are dropped;
2. ``rm_dup_inter`` (``first`` / ``last`` / None): duplicate (user, item) pairs, judged after a
   stable sort by time;
3. ``val_interval``: ``{field: "[3,inf)"}`` keeps rows whose float field lies in the interval(s)
   (``"(0,1];[3,4)"``: several, joined by ``;``), or ``{field: [a, b]}`` whose token field is
   one of the listed values; applied to every file that has the field;
4. interactions whose item is not in ``NAME.item`` (or whose user is not in ``NAME.user``, when
   given) are dropped (RecBole's ``filter_inter_by_user_or_item``);
5. ``user_inter_num_interval`` / ``item_inter_num_interval`` (e.g. ``"[10,inf)"``): the k-core
   filter, iterated to a fixed point: both sides are counted on the same interactions, the users
   and items outside their interval are banned together, their interactions dropped, and again
   until nothing is banned. Items of ``NAME.item`` with fewer interactions than the lower bound
   (none at all included) are banned too, as RecBole does, so they are not ranking candidates.

Every step's dropped rows are counted in ``RawTables.source["filters"]`` (written to the prepared
dataset's manifest). A video's title text is the ``title_fields`` of ``NAME.item`` joined by
``title_separator`` (empty fields left out); ``category_field`` gives the category (its first token).
RecBole datasets have no comments: the comment tables are empty, and the stages that need comments
say so (:func:`lsvcr.pipelines.common.require_comments`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from lsvcr.data.raw import RawTables
from lsvcr.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
_INTERVAL_RE = re.compile(r"^\s*([\[(])\s*([^,]+?)\s*,\s*([^,]+?)\s*([\])])\s*$")


# ----------------------------------------------------------------------------- intervals


def parse_intervals(text: str | None, where: str) -> list[tuple[str, float, float, str]] | None:
    """RecBole's interval strings: ``"[3,inf)"``, ``"(0,1];[3,4)"`` -> ``[(bracket, lo, hi, bracket)]``.

    Unlike RecBole (which warns and ignores a malformed interval), a malformed one is an error
    naming the config key: a filter that silently does nothing changes the benchmark.
    """
    if text is None:
        return None
    out = []
    for part in str(text).split(";"):
        m = _INTERVAL_RE.match(part)
        try:
            lo, hi = (float(v) for v in m.group(2, 3)) if m else (math.nan, math.nan)
        except ValueError:
            lo = hi = math.nan
        if not m or math.isnan(lo) or math.isnan(hi) or lo > hi:
            raise ConfigError(f"{where}={text!r}: expected intervals like '[3,inf)' or '(0,1];[3,4)', "
                              f"not {part.strip()!r}")
        out.append((m.group(1), lo, hi, m.group(4)))
    return out


def within(values: np.ndarray, intervals: Sequence[tuple[str, float, float, str]]) -> np.ndarray:
    """Boolean mask: ``values`` inside any of ``intervals`` (NaN is inside none)."""
    keep = np.zeros(len(values), bool)
    for left, lo, hi, right in intervals:
        ok = (values >= lo) if left == "[" else (values > lo)
        ok &= (values <= hi) if right == "]" else (values < hi)
        keep |= ok
    return keep


# ----------------------------------------------------------------------------- reading


def _header(path: Path) -> list[tuple[str, str]]:
    """``[(field, type)]`` of an atomic file's typed header."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            line = f.readline().rstrip("\r\n")
    except UnicodeDecodeError:
        raise DataError(f"{path}: the header line is not UTF-8; re-encode the file as UTF-8") from None
    if not line:
        raise DataError(f"{path}: empty file, expected a typed header line such as 'user_id:token\\titem_id:token'")
    fields = []
    for col in line.split("\t"):
        name, sep, typ = col.rpartition(":")
        if not sep or not name or typ not in FIELD_TYPES:
            raise DataError(f"{path}: header column {col!r} is not 'name:type' with type one of "
                            f"{', '.join(FIELD_TYPES)} (RecBole atomic files are tab-separated with typed headers)")
        fields.append((name, typ))
    names = [n for n, _ in fields]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{path}: header repeats field(s) {', '.join(dup)}")
    return fields


def read_atomic(path: str | Path, fields: Sequence[str] | None = None) -> tuple[pa.Table, dict[str, str]]:
    """Read an atomic file: token fields as strings, float fields as float64 (sequences as strings).

    Returns ``(table, {field: type})`` for the fields read (all when ``fields`` is None). A row
    with the wrong number of columns or a non-numeric float is one :class:`DataError` naming the
    file and line; a field asked for but absent names the fields present.
    """
    path = Path(path)
    header = _header(path)
    types = dict(header)
    if fields is not None:
        missing = [f for f in fields if f not in types]
        if missing:
            raise DataError(f"{path}: no field {', '.join(missing)}; fields: {', '.join(types)}")
        types = {f: types[f] for f in fields}
    names = [n for n, _ in header]
    column_types = {n: pa.float64() if t == "float" else pa.string() for n, t in types.items()}
    def read(threads: bool) -> pa.Table:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, use_threads=threads),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pacsv.ConvertOptions(include_columns=list(types), column_types=column_types,
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False),
        )

    try:
        return read(True), types
    except pa.ArrowInvalid as first:
        try:  # only the single-threaded reader reports row numbers; pay for it on the error path only
            read(False)
        except pa.ArrowInvalid as e:
            raise DataError(f"{path}: {_arrow_message(str(e), names)}") from None
        raise DataError(f"{path}: {_arrow_message(str(first), names)}") from None


def _arrow_message(message: str, names: list[str]) -> str:
    """pyarrow's CSV message with the physical line (pyarrow's row N counts the skipped header
    line, so it is line N) and the column's name."""
    message = message.removeprefix("CSV parse error: ")
    where = ""
    row = re.search(r"Row #(\d+): ", message)
    if row:
        where = f"line {int(row.group(1))}: "
        message = message.replace(row.group(0), "")
    col = re.search(r"In CSV column #(\d+): ", message)
    if col:
        where += f"column '{names[int(col.group(1))]}': " if int(col.group(1)) < len(names) else ""
        message = message.replace(col.group(0), "")
    if "UTF8" in message:
        message += "; the file is not UTF-8: re-encode it as UTF-8"
    return where + message


# ----------------------------------------------------------------------------- filters


def _value_filter(table: pa.Table, types: dict[str, str], field: str, rule, where: str) -> np.ndarray:
    """Keep-mask of ``val_interval[field]`` on ``table``."""
    if types[field] == "float":
        intervals = parse_intervals(rule, f"{where}.{field}")
        return within(table[field].to_numpy(zero_copy_only=False), intervals)
    if types[field] == "token":
        allowed = [str(v) for v in (rule if isinstance(rule, (list, tuple)) else [rule])]
        return pc.fill_null(pc.is_in(table[field], value_set=pa.array(allowed)), False).to_numpy(zero_copy_only=False)
    raise ConfigError(f"{where}.{field}: filtering a {types[field]} field is not supported (float or token fields only)")


def _codes(values: pa.ChunkedArray, universe: pa.Array) -> np.ndarray:
    return pc.index_in(values, value_set=universe).to_numpy(zero_copy_only=False)


def kcore(users: np.ndarray, items: np.ndarray, user_interval, item_interval,
          num_users: int, num_items: int, item_universe: np.ndarray | None = None,
          user_universe: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """RecBole's ``_filter_by_inter_num`` on integer codes: the keep-mask of interactions and the
    number of rounds it took to reach the fixed point.

    Args:
        users, items: ``[N]`` codes in ``0..num_users-1`` / ``0..num_items-1``.
        user_interval, item_interval: parsed intervals (None = no limit on that side).
        item_universe, user_universe: bool ``[num_*]``: ids listed in the ``.item`` / ``.user``
            file, banned when their count is below the interval's first lower bound (RecBole
            checks the feature file's ids against ``inter_interval[0]``'s lower end).
    """
    keep = np.ones(len(users), bool)
    rounds = 0
    while True:
        u_count = np.bincount(users[keep], minlength=num_users)
        i_count = np.bincount(items[keep], minlength=num_items)
        ban_u = _banned(u_count, user_interval, user_universe)
        ban_i = _banned(i_count, item_interval, item_universe)
        if user_universe is not None:
            user_universe = user_universe & ~ban_u
        if item_universe is not None:
            item_universe = item_universe & ~ban_i
        drop = keep & (ban_u[users] | ban_i[items])
        if not drop.any():
            # banned ids without interactions left (feature-file rows) end the loop, as in RecBole
            return keep, rounds
        keep &= ~drop
        rounds += 1


def _banned(count: np.ndarray, interval, universe: np.ndarray | None) -> np.ndarray:
    if interval is None:
        return np.zeros(len(count), bool)
    ban = (count > 0) & ~within(count.astype(np.float64), interval)
    if universe is not None:
        ban |= universe & (count < interval[0][1])
    return ban


# ----------------------------------------------------------------------------- the reader


def read_recbole(
    root: str | Path,
    name: str | None = None,
    title_fields: Sequence[str] = ("movie_title",),
    title_separator: str = ". ",
    category_field: str | None = None,
    user_field: str = "user_id",
    item_field: str = "item_id",
    time_field: str = "timestamp",
    val_interval: Mapping[str, object] | None = None,
    rm_dup_inter: str | None = None,
    user_inter_num_interval: str | None = None,
    item_inter_num_interval: str | None = None,
) -> RawTables:
    """Read ``root/NAME.inter`` and ``root/NAME.item`` (and ``root/NAME.user``) with RecBole's filters.

    Args:
        root: the dataset directory (RecBole's ``data_path/dataset``).
        name: the dataset name (file stem); default: the directory's name.
        title_fields: ``NAME.item`` fields joined into each video's title text.
        val_interval, rm_dup_inter, user_inter_num_interval, item_inter_num_interval: RecBole's
            filter settings of the same names (module docstring).

    Timestamps become int64 (RecBole stores them as floats; fractional parts are rounded).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data directory not found")
    name = name or root.name
    files = {ext: root / f"{name}.{ext}" for ext in ("inter", "item", "user")}
    for ext in ("inter", "item"):
        if not files[ext].is_file():
            present = ", ".join(sorted(p.name for p in root.iterdir())) or "nothing"
            raise DataError(f"{root}: missing {files[ext].name} (a RecBole dataset needs NAME.inter and NAME.item; "
                            f"NAME = data.recbole_name={name}); the directory holds: {present}")
    if rm_dup_inter not in (None, "first", "last"):
        raise ConfigError(f"data.rm_dup_inter={rm_dup_inter!r}: expected first, last or null")
    val_interval = dict(val_interval or {})
    u_int = parse_intervals(user_inter_num_interval, "data.user_inter_num_interval")
    i_int = parse_intervals(item_inter_num_interval, "data.item_inter_num_interval")

    inter_types = dict(_header(files["inter"]))
    item_types = dict(_header(files["item"]))
    user_types = dict(_header(files["user"])) if files["user"].is_file() else None
    for field, key in ((user_field, "data.user_field"), (item_field, "data.item_field"), (time_field, "data.time_field")):
        if field not in inter_types:
            raise ConfigError(f"{key}={field}: {files['inter']} has no such field; fields: {', '.join(inter_types)}")
    if inter_types[time_field] != "float":
        raise DataError(f"{files['inter']}: the time field '{time_field}' is {inter_types[time_field]}, expected float")
    for field in [*title_fields, *([category_field] if category_field else [])]:
        if field not in item_types:
            raise ConfigError(f"data.title_fields / data.category_field: {files['item']} has no field '{field}'; "
                              f"fields: {', '.join(item_types)}")
    if item_field not in item_types:
        raise DataError(f"{files['item']}: no item id field '{item_field}'; fields: {', '.join(item_types)}")
    for field in val_interval:
        if not any(field in t for t in (inter_types, item_types, user_types or {})):
            raise ConfigError(f"data.val_interval.{field}: no such field in {name}.inter/.item/.user")

    inter_fields = list(dict.fromkeys([user_field, item_field, time_field, *[f for f in val_interval if f in inter_types]]))
    inter, _ = read_atomic(files["inter"], inter_fields)
    item_fields = list(dict.fromkeys([item_field, *title_fields, *([category_field] if category_field else []),
                                      *[f for f in val_interval if f in item_types]]))
    items, _ = read_atomic(files["item"], item_fields)
    users = None
    if user_types is not None:
        users, _ = read_atomic(files["user"], list(dict.fromkeys([user_field, *[f for f in val_interval if f in user_types]])))

    counts: dict[str, int] = {"inter_rows": inter.num_rows, "item_rows": items.num_rows}
    # 1. missing ids and times (RecBole drops missing ids; a missing time cannot be ordered)
    keep = pc.and_(pc.and_(pc.invert(_empty(inter[user_field])), pc.invert(_empty(inter[item_field]))),
                   pc.is_finite(pc.fill_null(inter[time_field], math.nan)))
    inter, counts["missing_id_or_time"] = _filter(inter, keep)
    items, counts["item_missing_id"] = _filter(items, pc.invert(_empty(items[item_field])))
    items, counts["item_duplicate_id"] = _first_of(items, item_field)
    # 2. duplicate (user, item) pairs, after a stable sort by time
    counts["duplicate_inter"] = 0
    if rm_dup_inter is not None:
        inter = inter.take(pc.sort_indices(inter, [(time_field, "ascending")]))
        inter, counts["duplicate_inter"] = _first_of(inter, [user_field, item_field], last=rm_dup_inter == "last")
    # 3. values
    for field, rule in val_interval.items():
        for label, table_name, types in (("inter", "inter", inter_types), ("item", "items", item_types),
                                         ("user", "users", user_types or {})):
            table = {"inter": inter, "items": items, "users": users}[table_name]
            if table is None or field not in types:
                continue
            table, dropped = _filter(table, _value_filter(table, types, field, rule, "data.val_interval"))
            counts[f"val_interval.{field}.{label}"] = dropped
            if table_name == "inter":
                inter = table
            elif table_name == "items":
                items = table
            else:
                users = table
    # 4. interactions of unknown items / users
    inter, counts["inter_unknown_item"] = _filter(inter, pc.is_in(inter[item_field], value_set=items[item_field].combine_chunks()))
    counts["inter_unknown_user"] = 0
    if users is not None:
        inter, counts["inter_unknown_user"] = _filter(inter, pc.is_in(inter[user_field], value_set=users[user_field].combine_chunks()))
    # 5. k-core to a fixed point
    item_ids = items[item_field].combine_chunks()
    user_ids = pc.unique(pa.chunked_array(inter[user_field].chunks + ([] if users is None else users[user_field].chunks),
                                          pa.string()))
    rounds = 0
    counts["kcore_inter"] = counts["kcore_items"] = 0
    if u_int is not None or i_int is not None:
        u_codes, i_codes = _codes(inter[user_field], user_ids), _codes(inter[item_field], item_ids)
        user_universe = None
        if users is not None:
            user_universe = np.zeros(len(user_ids), bool)
            user_universe[_codes(users[user_field], user_ids)] = True
        keep_np, rounds = kcore(u_codes, i_codes, u_int, i_int, len(user_ids), len(item_ids),
                                item_universe=np.ones(len(item_ids), bool), user_universe=user_universe)
        inter, counts["kcore_inter"] = _filter(inter, pa.array(keep_np))
        if i_int is not None:
            i_count = np.bincount(i_codes[keep_np], minlength=len(item_ids))
            items, counts["kcore_items"] = _filter(items, pa.array(within(i_count.astype(np.float64), i_int)
                                                                   & (i_count >= i_int[0][1])))
    counts["kcore_rounds"] = rounds
    for step, n in counts.items():
        if n and step not in ("inter_rows", "item_rows", "kcore_rounds"):
            log.info("%s: %s dropped %d rows", name, step, n)
    if inter.num_rows == 0:
        raise DataError(f"{root}: no interactions left after the filters ({_summary(counts)}); loosen "
                        "data.val_interval / data.user_inter_num_interval / data.item_inter_num_interval")

    title = _join_text(items, title_fields, title_separator)
    videos = {"video_id": items[item_field], "title": title}
    if category_field:
        videos["category"] = _first_token(items[category_field])
    time = pc.round(inter[time_field]).cast(pa.int64())
    vi = pa.table({"user_id": inter[user_field], "video_id": inter[item_field], "timestamp": time})
    comments = pa.table({"comment_id": pa.array([], pa.string()), "video_id": pa.array([], pa.string()),
                         "text": pa.array([], pa.string()), "like_count": pa.array([], pa.int64())})
    ci = pa.table({"user_id": pa.array([], pa.string()), "comment_id": pa.array([], pa.string()),
                   "timestamp": pa.array([], pa.int64())})
    origin = {"videos": str(files["item"]), "video_interactions": str(files["inter"]),
              "comments": f"{name} (RecBole: no comments)", "comment_interactions": f"{name} (RecBole: no comments)"}
    source = {"kind": "recbole", "root": str(root), "name": name, "title_fields": list(title_fields),
              "filters": counts, "has_comments": False}
    log.info("%s: %d interactions, %d items after RecBole filters (%s)", name, vi.num_rows, len(videos["video_id"]),
             _summary(counts))
    return RawTables(pa.table(videos), comments, vi, ci, origin=origin, source=source)


def _summary(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v)


def _empty(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.or_kleene(pc.is_null(col), pc.equal(pc.utf8_trim_whitespace(col), ""))


def _filter(table: pa.Table, keep) -> tuple[pa.Table, int]:
    kept = table.filter(keep)
    return kept, table.num_rows - kept.num_rows


def _first_of(table: pa.Table, keys: str | list[str], last: bool = False) -> tuple[pa.Table, int]:
    """The first (or last) row of each distinct ``keys`` value, in table order."""
    keys = [keys] if isinstance(keys, str) else keys
    if table.num_rows == 0:
        return table, 0
    idx = table.select(keys).append_column("__i", pa.array(np.arange(table.num_rows)))
    agg = "max" if last else "min"
    rows = np.sort(idx.group_by(keys).aggregate([("__i", agg)])[f"__i_{agg}"].to_numpy())
    return table.take(pa.array(rows)), table.num_rows - len(rows)


def _join_text(items: pa.Table, fields: Sequence[str], sep: str) -> pa.ChunkedArray:
    """Each row's non-empty ``fields`` joined by ``sep`` (a float field printed without '.0')."""
    cols = []
    for f in fields:
        col = items[f]
        if pa.types.is_floating(col.type):
            whole = pc.equal(col, pc.round(col))
            col = pc.if_else(whole, pc.cast(pc.round(col).cast(pa.int64()), pa.string()), pc.cast(col, pa.string()))
        col = pc.utf8_trim_whitespace(pc.fill_null(col.cast(pa.string()), ""))
        cols.append(pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col))
    if not cols:
        return pa.chunked_array([pa.array([""] * items.num_rows, pa.string())])
    joined = pc.binary_join_element_wise(*cols, sep, null_handling="skip")
    return pc.fill_null(joined, "")


def _first_token(col: pa.ChunkedArray) -> pa.Array:
    """The first whitespace-separated token of each value (null when empty)."""
    parts = pc.utf8_split_whitespace(pc.fill_null(col.cast(pa.string()), "")).combine_chunks()
    first = pc.list_element(pc.if_else(pc.greater(pc.list_value_length(parts), 0), parts,
                                       pa.scalar([None], parts.type)), 0)
    return first
