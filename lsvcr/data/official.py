"""Reader for the files of the official LSVCR code (``photo.json``, ``comment.json``,
``all_photos.pkl``, ``all_comments.pkl``, ``rec.{train,val,test}.json``,
``comm_rank.{train,val,test}.json``, and optionally ``photo_embs.npy`` / ``comment_embs.npy``).

They carry no timestamps, so interactions are rebuilt with synthetic, order-preserving ones (see
:func:`read_official`). The files' own samples are kept as the splits of both tasks
(:mod:`lsvcr.data.official_splits`, ``data.splits=given``) or re-derived (``resplit``); the
embedding tables become the dataset's text tables (:mod:`lsvcr.data.official_tables`). Pickles
are read with an unpickler that builds only lists, tuples, ints and strings.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lsvcr.data.official_samples import Sequences, comment_rows, first_rows, latest_samples, longest_sequences
from lsvcr.data.official_splits import read_given_samples
from lsvcr.data.official_tables import read_official_tables
from lsvcr.data.raw import RawTables
from lsvcr.data.sources import existing_dir
from lsvcr.data.store import TASKS
from lsvcr.errors import ConfigError, DataError

log = logging.getLogger(__name__)


OFFICIAL_SPLITS = ("train", "val", "test")  # chronological: a later split holds later targets
OFFICIAL_TASKS = TASKS  # rec.<split>.json and comm_rank.<split>.json: the sample sets' own names


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


def _official_interactions(seqs: Sequences, unique: bool = False) -> tuple[pa.Table, pa.Table, dict[str, str]]:
    """Rebuild both interaction tables from one sequence per user (see :func:`read_official`);
    ``unique``: leave out comment rows that repeat an earlier one (:func:`first_rows`).

    Returns the two tables and comment -> video pairs seen in the comment histories.
    """
    vi: tuple[list, list, list] = ([], [], [])
    ci: tuple[list, list, list] = ([], [], [])
    comment_video: dict[str, str] = {}
    for user, (seq, chis) in seqs.items():
        vi[0].extend([user] * len(seq))
        vi[1].extend(seq)
        vi[2].extend(range(1, len(seq) + 1))
        pairs, stamps = comment_rows(seq, chis)
        keep = first_rows(pairs, stamps) if unique else [True] * len(pairs)
        for (video, comment), time, kept in zip(pairs, stamps, keep):
            if not kept:
                continue
            ci[0].append(user)
            ci[1].append(comment)
            ci[2].append(time)
            comment_video.setdefault(comment, video)
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


def _official_items(root: Path, comment_video: dict[str, str]) -> tuple[pa.Table, pa.Table, int, list, list]:
    """Videos in ``all_photos.pkl`` order and comments in ``all_comments.pkl`` order.

    A comment's video and popularity come from the ``comment_list`` that holds it (like_count =
    reverse rank: the most popular of ``m`` gets ``m``); comments listed nowhere take the video
    of a comment history holding them (like_count 0) or are dropped. Returns the two tables, the
    number of comments dropped and both pickles' id lists (padding left out).
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
    return videos, table.filter(known), len(comment_ids) - pc.sum(known).as_py(), photo_ids, comment_ids


SPLIT_MODES = ("given", "resplit")


def _sample_files(root: Path, splits: str) -> list[Path]:
    """The sample files ``splits`` reads: every ``{rec,comm_rank}.{train,val,test}.json``
    (``given``), or the ``rec.*.json`` ones present (``resplit``)."""
    if splits not in SPLIT_MODES:
        raise ConfigError(f"data.splits={splits!r}: expected 'given' (keep the files' samples) or 'resplit' "
                          "(re-derive both tasks' splits from the reconstructed interactions, data.split)")
    if splits == "resplit":
        paths = [root / f"rec.{s}.json" for s in OFFICIAL_SPLITS if (root / f"rec.{s}.json").exists()]
        if not paths:
            raise DataError(f"{root}: no rec.train.json, rec.val.json or rec.test.json found")
        return paths
    paths = [root / f"{task}.{s}.json" for task in OFFICIAL_TASKS for s in OFFICIAL_SPLITS]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise DataError(f"{root}: missing {', '.join(missing)}; data.splits=given keeps the files' samples of both "
                        "tasks and needs all six sample files (data.splits=resplit re-derives the splits from "
                        "rec.*.json alone)")
    return paths


def read_official(root: str | Path, splits: str = "given", embeddings: bool | str = "auto",
                  photo_emb_file: str = "photo_embs.npy", comment_emb_file: str = "comment_embs.npy") -> RawTables:
    """Read the official LSVCR files and rebuild interactions with synthetic timestamps.

    The official files hold training samples, not event logs. Per user, one video sequence is
    stamped 1..n in its order: with ``splits="resplit"``, ``photo_inter_his + [target_photo]`` of
    the latest ``rec`` split's sample with the longest ``photo_inter_his``, whose
    ``comment_inter_his`` gives the comment interactions; with ``splits="given"`` the longest
    video sequence and the longest comment history of any sample of either task (so that every
    sample of consistent files is a prefix of them). Comment group g gets ``t_g = max(t_{g-1},
    p_g)`` with ``t_0 = 1``, where ``p_g`` is the 1-based position of the group's video in the
    sequence without its last video (0 when absent); with ``"given"`` a comment listed again at
    the same stamp is one interaction. So a group on a history video shares that
    video's stamp (the comment was made while watching it), a group on another video takes the
    previous group's stamp, every stamp is below the last video's (the whole history stays
    visible to the last sample) and stamps never decrease. Equal stamps are ordered by row, so
    the builder must sort stably. All ids are strings.

    ``splits="given"`` keeps the samples of ``rec.*`` and ``comm_rank.*`` as the splits
    (:class:`~lsvcr.data.official_splits.OfficialSplits`); ``"resplit"`` leaves them to
    ``data.split``. ``embeddings`` (``"auto"``: when both files exist) imports ``photo_emb_file``
    and ``comment_emb_file`` as the text tables (:mod:`lsvcr.data.official_tables`).
    """
    root = existing_dir(root)
    paths = _sample_files(root, splits)
    seqs = longest_sequences(paths) if splits == "given" else latest_samples(paths)
    # given: no repeated comment rows, so validation keeps every row the given histories point at
    video_inter, comment_inter, comment_video = _official_interactions(seqs, unique=splits == "given")
    videos, comments, dropped, photo_ids, comment_ids = _official_items(root, comment_video)
    if dropped:
        log.warning("%s: skipped %d comments that belong to no video's comment_list or history", root, dropped)
    tables = read_official_tables(root, embeddings, photo_emb_file, comment_emb_file, photo_ids, comment_ids)
    given = read_given_samples(paths, seqs, comments, comment_inter) if splits == "given" else None
    samples = ", ".join(str(p) for p in paths)
    origin = {"videos": str(root / "photo.json"), "comments": str(root / "comment.json"),
              "video_interactions": samples, "comment_interactions": samples}
    source = {"kind": "official", "root": str(root), "comments_without_video": dropped, "splits": splits,
              "timestamps": "reconstructed: per-user sequence positions 1..n, the files hold no times"}
    return RawTables(videos, comments, video_inter, comment_inter, origin=origin, source=source,
                     given_samples=given, text_tables=tables)
