"""Turn validated :class:`RawTables` into a prepared-dataset directory (:mod:`lsvcr.data.store`).

Everything is columnar: ids are mapped with Arrow's ``index_in``, interactions are sorted with
``np.lexsort``, and samples are offsets into the sorted interaction arrays, so building a
KuaiComt-sized dataset never holds a Python object per interaction.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lsvcr.data.raw import RawTables
from lsvcr.data.samples import SplitConfig, build_samples
from lsvcr.data.store import ARRAYS, write_manifest
from lsvcr.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class Indexed:
    """The world after id mapping and sorting, as numpy arrays (see store.py for meanings)."""

    arrays: dict[str, np.ndarray]
    num_users: int
    num_videos: int
    num_comments: int
    categories: list[str]
    user_ids: pa.Array  # raw id of user i+1


def _to_index(values: pa.ChunkedArray, value_set: pa.Array, where: str) -> np.ndarray:
    """Map raw ids to 1-based indices of ``value_set``; unknown ids are a bug here (validation
    has removed them), so they raise."""
    if values.type != value_set.type:
        values = values.cast(value_set.type)
    idx = pc.index_in(values, value_set=value_set)
    if idx.null_count:
        raise DataError(f"{where}: {idx.null_count} ids not found after validation")
    return idx.to_numpy(zero_copy_only=False).astype(np.int64) + 1


def _ptr(owner: np.ndarray, n: int) -> np.ndarray:
    """CSR pointer ``[n+2]`` for rows sorted by ``owner`` in 1..n (index 0 = padding, empty)."""
    ptr = np.zeros(n + 2, np.int64)
    np.cumsum(np.bincount(owner, minlength=n + 1), out=ptr[1:])
    return ptr


def index_world(raw: RawTables) -> Indexed:
    """Map ids to contiguous indices (0 = padding) and sort interactions by (user, time)."""
    vids = raw.videos["video_id"].combine_chunks()
    cids = raw.comments["comment_id"].combine_chunks()
    vi_users = raw.video_interactions["user_id"]
    uniq = pc.unique(pa.chunked_array(
        vi_users.chunks + raw.comment_interactions["user_id"].cast(vi_users.type).chunks, vi_users.type
    ))
    user_ids = uniq.take(pc.array_sort_indices(uniq))  # sorted: reproducible indices
    nu, nv, nc = len(user_ids), len(vids), len(cids)

    comment_video = np.zeros(nc + 1, np.int32)
    comment_video[1:] = _to_index(raw.comments["video_id"], vids, raw.where("comments"))
    likes = np.zeros(nc + 1, np.int64)
    likes[1:] = raw.comments["like_count"].to_numpy()
    # comments of each video, most liked first (ties: earlier row first)
    corder = np.lexsort((np.arange(nc), -likes[1:], comment_video[1:])).astype(np.int32) + 1

    cat_col = raw.videos["category"] if "category" in raw.videos.column_names else pa.nulls(nv, pa.string())
    cat_enc = pc.dictionary_encode(pa.chunked_array(cat_col).cast(pa.string())).combine_chunks()
    category = np.zeros(nv + 1, np.int32)
    category[1:] = pc.fill_null(cat_enc.indices, -1).to_numpy(zero_copy_only=False) + 1

    vi_user = _to_index(raw.video_interactions["user_id"], user_ids, raw.where("video_interactions"))
    vi_video = _to_index(raw.video_interactions["video_id"], vids, raw.where("video_interactions"))
    vi_time = raw.video_interactions["timestamp"].to_numpy().astype(np.int64)
    o = np.lexsort((np.arange(len(vi_user)), vi_time, vi_user))
    vi_user, vi_video, vi_time = vi_user[o], vi_video[o], vi_time[o]

    ci_user = _to_index(raw.comment_interactions["user_id"], user_ids, raw.where("comment_interactions"))
    ci_comment = _to_index(raw.comment_interactions["comment_id"], cids, raw.where("comment_interactions"))
    ci_time = raw.comment_interactions["timestamp"].to_numpy().astype(np.int64)
    o = np.lexsort((np.arange(len(ci_user)), ci_time, ci_user))
    ci_user, ci_comment, ci_time = ci_user[o], ci_comment[o], ci_time[o]
    ci_video = comment_video[ci_comment]
    ci_ptr = _ptr(ci_user, nu)
    ci_group, ci_ngroups = _comment_groups(ci_user, ci_video.astype(np.int64), ci_ptr, nv)

    arrays = {
        "video_category": category,
        "comment_video": comment_video,
        "comment_likes": likes,
        "video_comment_ptr": _ptr(comment_video[corder], nv),
        "video_comments": corder,
        "vi_ptr": _ptr(vi_user, nu),
        "vi_video": vi_video.astype(np.int32),
        "vi_time": vi_time,
        "ci_ptr": ci_ptr,
        "ci_comment": ci_comment.astype(np.int32),
        "ci_video": ci_video.astype(np.int32),
        "ci_time": ci_time,
        "ci_group": ci_group,
        "ci_ngroups": ci_ngroups,
    }
    assert set(arrays) == set(ARRAYS)
    cats = [str(c) for c in cat_enc.dictionary.to_pylist()]
    return Indexed(arrays, nu, nv, nc, cats, user_ids)


def _comment_groups(user: np.ndarray, video: np.ndarray, ptr: np.ndarray, nv: int):
    """Per comment interaction (sorted by user, time): the rank of its (user, video) group among
    the user's groups ordered by first interaction, and the number of groups the user has opened
    up to and including this interaction."""
    n = len(user)
    if n == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    key = user * (nv + 1) + video
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    is_first = np.zeros(n, np.int64)
    is_first[first] = 1
    running = np.cumsum(is_first)
    # groups opened before the user's first event, subtracted to restart the count per user
    before = np.concatenate([[0], running])[ptr[user]]
    ngroups = running - before
    group_rank = ngroups[first][inverse] - 1
    return group_rank.astype(np.int32), ngroups.astype(np.int32)


def write_dataset(
    raw: RawTables,
    out_dir: str | Path,
    split: SplitConfig,
    manifest_extra: dict | None = None,
    overwrite: bool = False,
    history_ties: str = "exclude",
) -> Path:
    """Index ``raw`` (already validated), build samples, and write everything under ``out_dir``.

    Samples the source gives (``raw.given_samples``) replace the ones ``split`` would derive, and
    text tables it gives (``raw.text_tables``) are written with the dataset. Writes into a
    temporary sibling first and renames, so a crashed run never leaves a directory that looks
    prepared.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ConfigError(f"{out_dir} exists; pass overwrite (data.overwrite=true) to rebuild it")
    t0 = time.perf_counter()
    world = index_world(raw)
    t_index = time.perf_counter() - t0
    if raw.given_samples is not None:
        samples, sample_stats = raw.given_samples.build(raw, world)
    else:
        samples, sample_stats = build_samples(world.arrays, world.num_users, split, history_ties)
    t_samples = time.perf_counter() - t0 - t_index

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "arrays").mkdir(parents=True)
    for name, arr in world.arrays.items():
        np.save(tmp / "arrays" / f"{name}.npy", arr)
    for (task, part), s in samples.items():
        s.save(tmp / "samples" / f"{task}.{part}")
    _write_tables(raw, world.user_ids, tmp)
    text_tables = raw.text_tables.write(raw, tmp) if raw.text_tables is not None else None
    counts = {
        "users": world.num_users,
        "videos": world.num_videos,
        "comments": world.num_comments,
        "video_interactions": int(len(world.arrays["vi_video"])),
        "comment_interactions": int(len(world.arrays["ci_comment"])),
        "samples": {f"{t}.{p}": len(s) for (t, p), s in samples.items()},
    }
    write_manifest(tmp, {
        "counts": counts,
        "categories": world.categories,
        "split": raw.given_samples.describe() if raw.given_samples is not None else split.as_dict(),
        "history_ties": history_ties,
        "sample_stats": sample_stats,
        "seconds": {"index": round(t_index, 3), "samples": round(t_samples, 3)},
        **({"text_tables": text_tables} if text_tables is not None else {}),
        **(manifest_extra or {}),
    })
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    log.info("prepared %s: %s", out_dir, counts)
    return out_dir


def _write_tables(raw: RawTables, user_ids: pa.Array, root: Path) -> None:
    cat = raw.videos["category"] if "category" in raw.videos.column_names else pa.nulls(len(raw.videos), pa.string())
    pq.write_table(pa.table({
        "raw_id": raw.videos["video_id"].cast(pa.string()),
        "title": raw.videos["title"],
        "category": pa.chunked_array(cat).cast(pa.string()),
    }), root / "videos.parquet")
    pq.write_table(pa.table({
        "raw_id": raw.comments["comment_id"].cast(pa.string()),
        "text": raw.comments["text"],
    }), root / "comments.parquet")
    pq.write_table(pa.table({"raw_id": user_ids.cast(pa.string())}), root / "users.parquet")
