"""Raw tables: the one in-memory shape every data source is turned into before `prepare`.

A source (the synthetic world, a directory of CSV/Parquet files, KuaiComt, the official LSVCR
JSON files) produces a :class:`RawTables`; :mod:`lsvcr.data.builder` validates it, maps ids to
contiguous indices and writes a prepared dataset (:mod:`lsvcr.data.store`).

Columns (ids may be int64 or string; they are opaque keys):

- ``videos``: ``video_id``, ``title`` (string), ``category`` (string, nullable)
- ``comments``: ``comment_id``, ``video_id``, ``text`` (string), ``like_count`` (int64)
- ``video_interactions``: ``user_id``, ``video_id``, ``timestamp`` (int64)
- ``comment_interactions``: ``user_id``, ``comment_id``, ``timestamp`` (int64); the video is the
  comment's own ``video_id``

A source may also hand over what it already has in prepared form (the official LSVCR files):
``given_samples`` (:class:`GivenSamples`, the files' splits, built instead of deriving splits from
the interactions) and ``text_tables`` (:class:`GivenTables`, embedding tables written instead of
running ``stage=embed``). Both act after validation and indexing, so they see the final indices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from lsvcr.errors import DataError

#: Required columns per table and the Arrow type family each must have.
SCHEMA: dict[str, dict[str, str]] = {
    "videos": {"video_id": "id", "title": "string", "category": "string?"},
    "comments": {"comment_id": "id", "video_id": "id", "text": "string", "like_count": "int"},
    "video_interactions": {"user_id": "id", "video_id": "id", "timestamp": "int"},
    # video_id (optional): the video the file says the comment is under, checked against the
    # comment's own video by validation (KuaiComt's photo_id)
    "comment_interactions": {"user_id": "id", "comment_id": "id", "timestamp": "int", "video_id": "id?"},
}


def _type_ok(kind: str, typ: pa.DataType) -> bool:
    kind = kind.rstrip("?")
    if kind == "id":
        return pa.types.is_integer(typ) or pa.types.is_string(typ) or pa.types.is_large_string(typ)
    if kind.startswith("string"):
        return pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_null(typ)
    if kind == "int":
        return pa.types.is_integer(typ)
    raise ValueError(kind)


class GivenSamples(Protocol):
    """Samples a source gives itself; :func:`lsvcr.data.builder.write_dataset` builds them instead
    of splitting the interactions."""

    def build(self, raw: "RawTables", world: Any) -> tuple[dict, dict]:
        """``({(task, split): SampleSet}, stats)`` over the indexed world (``builder.Indexed``) of
        the validated ``raw``."""

    def describe(self) -> dict:
        """What the manifest records as the split (``{"method": ..., ...}``)."""


class GivenTables(Protocol):
    """Text tables a source gives itself (written by :func:`lsvcr.data.builder.write_dataset`)."""

    def write(self, raw: "RawTables", root: Path) -> dict:
        """Write the tables for the items of the validated ``raw`` (in its row order = index order)
        under the dataset directory ``root``; returns the manifest's ``text_tables`` entry."""


@dataclass
class RawTables:
    """The four raw tables of a world, plus where they came from (for error messages)."""

    videos: pa.Table
    comments: pa.Table
    video_interactions: pa.Table
    comment_interactions: pa.Table
    #: table name -> file it was read from (or a description such as ``"synthetic"``)
    origin: dict[str, str] = field(default_factory=dict)
    #: free-form description of the source, stored in the manifest
    source: dict = field(default_factory=dict)
    #: samples given by the source (see :class:`GivenSamples`); None: derive them (``data.split``)
    given_samples: GivenSamples | None = None
    #: text tables given by the source (see :class:`GivenTables`); None: ``stage=embed`` makes them
    text_tables: GivenTables | None = None

    def table(self, name: str) -> pa.Table:
        return getattr(self, name)

    def where(self, name: str) -> str:
        return self.origin.get(name, name)

    def check_columns(self) -> None:
        """Raise :class:`DataError` naming the file and column when a table is missing a column
        or has a column of the wrong type."""
        for name, cols in SCHEMA.items():
            t = self.table(name)
            for col, kind in cols.items():
                if col not in t.column_names:
                    if kind.endswith("?"):
                        continue
                    raise DataError(
                        f"{self.where(name)}: missing column '{col}' "
                        f"(has: {', '.join(t.column_names) or 'none'})"
                    )
                typ = t.schema.field(col).type
                if t.num_rows == 0 and pa.types.is_null(typ):
                    continue  # a header-only file: no values, no type (validation casts it)
                if not _type_ok(kind, typ):
                    raise DataError(
                        f"{self.where(name)}: column '{col}' has type {typ}, expected {kind.rstrip('?')}"
                    )
