"""Reader for the files of the official LSVCR code (``photo.json``, ``comment.json``,
``all_photos.pkl``, ``all_comments.pkl``, ``rec.{train,val,test}.json``).

They carry no timestamps, so interactions are rebuilt with synthetic, order-preserving ones (see
:func:`read_official`). Their pickles are read with an unpickler that builds only lists, tuples,
ints and strings.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lsvcr.data.errors import DataError
from lsvcr.data.raw import RawTables
from lsvcr.data.sources import _existing_dir

log = logging.getLogger(__name__)


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
