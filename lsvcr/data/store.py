"""The prepared-dataset directory: manifest, Parquet text tables and memory-mappable arrays.

Layout (indices are contiguous, 0 is padding; ``V``/``C``/``U`` = number of videos/comments/users)::

    manifest.json                  schema version, counts, source, split settings, fingerprint
    videos.parquet                 row i = video i+1:   raw_id, title, category
    comments.parquet               row i = comment i+1: raw_id, text
    users.parquet                  row i = user i+1:    raw_id
    arrays/video_category.npy      int32 [V+1]   category index, 0 = none
    arrays/comment_video.npy       int32 [C+1]   video of each comment
    arrays/comment_likes.npy       int64 [C+1]   popularity (likes) of each comment
    arrays/video_comment_ptr.npy   int64 [V+2]   comments of video v, most liked first:
    arrays/video_comments.npy      int32 [C]       video_comments[ptr[v]:ptr[v+1]]
    arrays/vi_ptr.npy              int64 [U+2]   video interactions of user u, oldest first:
    arrays/vi_video.npy            int32 [Nv]      vi_video[ptr[u]:ptr[u+1]], vi_time likewise
    arrays/vi_time.npy             int64 [Nv]
    arrays/ci_ptr.npy              int64 [U+2]   comment interactions of user u, oldest first
    arrays/ci_comment.npy          int32 [Nc]
    arrays/ci_video.npy            int32 [Nc]
    arrays/ci_time.npy             int64 [Nc]
    arrays/ci_group.npy            int32 [Nc]    rank of the (user, video) group among the
                                                 user's groups, ordered by first interaction
    arrays/ci_ngroups.npy          int32 [Nc]    groups the user has opened up to this row
    samples/<task>.<split>/*.npy   see :class:`SampleSet`

Every array is read with ``mmap_mode="r"``, so opening a KuaiComt-sized dataset costs no memory
until rows are touched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lsvcr.errors import DataError

SCHEMA_VERSION = 1
TASKS = ("rec", "comm_rank")
SPLITS = ("train", "val", "test")
ARRAYS = (
    "video_category",
    "comment_video",
    "comment_likes",
    "video_comment_ptr",
    "video_comments",
    "vi_ptr",
    "vi_video",
    "vi_time",
    "ci_ptr",
    "ci_comment",
    "ci_video",
    "ci_time",
    "ci_group",
    "ci_ngroups",
)


@dataclass
class SampleSet:
    """Samples of one task and split, one row each.

    ``vi_end`` / ``ci_end`` are exclusive global offsets into ``vi_*`` / ``ci_*``: the user's
    history is ``[vi_ptr[user], vi_end)``, i.e. every interaction strictly before ``time`` (for the
    samples a source gives, :mod:`lsvcr.data.official_splits`, the given histories instead).
    For ``comm_rank``, the positives of sample i are ``pos[pos_ptr[i]:pos_ptr[i+1]]`` (comment
    indices under ``target``); for ``rec`` ``pos_ptr``/``pos`` are empty.
    """

    user: np.ndarray  # int32 [N]
    target: np.ndarray  # int32 [N] video index
    time: np.ndarray  # int64 [N]
    vi_end: np.ndarray  # int64 [N]
    ci_end: np.ndarray  # int64 [N]
    pos_ptr: np.ndarray  # int64 [N+1] (comm_rank) or [0]
    pos: np.ndarray  # int32 [P] (comm_rank) or [0]

    def __len__(self) -> int:
        return len(self.user)

    def positives(self, i: int) -> np.ndarray:
        return self.pos[self.pos_ptr[i] : self.pos_ptr[i + 1]]

    def subset(self, idx: np.ndarray) -> "SampleSet":
        """Rows ``idx`` as a new (in-memory) sample set, positives included."""
        idx = np.asarray(idx, dtype=np.int64)
        if len(self.pos_ptr) > 1:
            counts = (self.pos_ptr[idx + 1] - self.pos_ptr[idx]).astype(np.int64)
            ptr = np.zeros(len(idx) + 1, np.int64)
            np.cumsum(counts, out=ptr[1:])
            gather = np.repeat(self.pos_ptr[idx] - ptr[:-1], counts) + np.arange(ptr[-1])
            pos = np.asarray(self.pos[gather])
        else:
            ptr, pos = np.zeros(1, np.int64), np.zeros(0, np.int32)
        return SampleSet(
            user=np.asarray(self.user[idx]),
            target=np.asarray(self.target[idx]),
            time=np.asarray(self.time[idx]),
            vi_end=np.asarray(self.vi_end[idx]),
            ci_end=np.asarray(self.ci_end[idx]),
            pos_ptr=ptr,
            pos=pos,
        )

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        for f in fields(self):
            np.save(path / f"{f.name}.npy", getattr(self, f.name))

    @classmethod
    def load(cls, path: Path) -> "SampleSet":
        return cls(**{f.name: _load_array(path / f"{f.name}.npy") for f in fields(cls)})


def _load_array(path: Path) -> np.ndarray:
    if not path.exists():
        raise DataError(f"{path}: missing array file; the prepared dataset is incomplete, run stage=prepare again")
    return np.load(path, mmap_mode="r", allow_pickle=False)


class PreparedDataset:
    """Read access to a prepared-dataset directory (see module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        mpath = self.root / "manifest.json"
        if not mpath.exists():
            raise DataError(f"{mpath}: not found; '{self.root}' is not a prepared dataset (run stage=prepare)")
        try:
            self.manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{mpath}: invalid JSON ({e})") from None
        version = self.manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise DataError(
                f"{mpath}: schema_version {version}, this code reads {SCHEMA_VERSION}; run stage=prepare again"
            )
        counts = self.manifest["counts"]
        self.num_users: int = counts["users"]
        self.num_videos: int = counts["videos"]
        self.num_comments: int = counts["comments"]
        for name in ARRAYS:
            setattr(self, name, _load_array(self.root / "arrays" / f"{name}.npy"))
        self._samples: dict[tuple[str, str], SampleSet] = {}

    # arrays, declared for type checkers
    video_category: np.ndarray
    comment_video: np.ndarray
    comment_likes: np.ndarray
    video_comment_ptr: np.ndarray
    video_comments: np.ndarray
    vi_ptr: np.ndarray
    vi_video: np.ndarray
    vi_time: np.ndarray
    ci_ptr: np.ndarray
    ci_comment: np.ndarray
    ci_video: np.ndarray
    ci_time: np.ndarray
    ci_group: np.ndarray
    ci_ngroups: np.ndarray

    def samples(self, task: str, split: str) -> SampleSet:
        if task not in TASKS or split not in SPLITS:
            raise ValueError(f"unknown task/split {task}/{split}")
        key = (task, split)
        if key not in self._samples:
            self._samples[key] = SampleSet.load(self.root / "samples" / f"{task}.{split}")
        return self._samples[key]

    def comments_of(self, video: int) -> np.ndarray:
        """Comment indices of ``video``, most liked first."""
        return self.video_comments[self.video_comment_ptr[video] : self.video_comment_ptr[video + 1]]

    def video_titles(self) -> pa.StringArray:
        """Titles; element i is video i+1's title."""
        return pq.read_table(self.root / "videos.parquet", columns=["title"], memory_map=True)["title"].combine_chunks()

    def comment_texts(self) -> pa.StringArray:
        """Texts; element i is comment i+1's text."""
        return pq.read_table(self.root / "comments.parquet", columns=["text"], memory_map=True)["text"].combine_chunks()

    def texts(self, chunk: int = 4096) -> Iterator[str]:
        """Titles and comments interleaved (title 1, comment 1, title 2, ...), then the longer list's rest.

        Interleaved because a tokenizer trained on the first ``max_texts`` must see both kinds even
        when comments outnumber titles 200 to 1. Read in chunks, so stopping early reads little.
        """
        titles, comments = self.video_titles(), self.comment_texts()
        for start in range(0, max(len(titles), len(comments)), chunk):
            t = titles.slice(start, chunk).to_pylist()
            c = comments.slice(start, chunk).to_pylist()
            for i in range(max(len(t), len(c))):
                if i < len(t):
                    yield t[i]
                if i < len(c):
                    yield c[i]

    def raw_ids(self, kind: str) -> pa.Array:
        """Original ids of ``kind`` in {"users", "videos", "comments"}; element i is index i+1."""
        return pq.read_table(self.root / f"{kind}.parquet", columns=["raw_id"], memory_map=True)["raw_id"].combine_chunks()


def write_manifest(root: Path, manifest: dict) -> None:
    manifest = {"schema_version": SCHEMA_VERSION, **manifest}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
