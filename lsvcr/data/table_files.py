"""Text-table files (DESIGN section 5): the format every stage reads and writes, and nothing else.

A table is ``[N+1, dim]``: row 0 is the zero padding row, row ``i+1`` is text ``i``, so the
prepared dataset's indices (0 = padding) address it directly. Tables are ``.npy`` files written
through ``np.lib.format.open_memmap`` under a temporary name (:func:`incomplete_path`) renamed on
completion, and read back with ``mmap_mode="r"``: 16 M comments never sit in memory twice. A
directory of tables has a manifest (:data:`TABLES_MANIFEST`) with each table's file, rows, width
and dtype; :func:`load_tables` checks the files against it.

A table encoded by several processes (:func:`lsvcr.models.llm.table_encoder.encode_table` with
``shard=(rank, world)``) is written as one partial file per rank (:func:`shard_paths`), and rank 0
assembles them with :func:`merge_shards` once all ranks are done::

    encode_table(enc, tok, titles, out / "video_emb.npy", shard=(rank, world))
    barrier()
    if rank == 0:
        merge_shards(out / "video_emb.npy", world)
        write_tables_manifest(out, model_name=..., checkpoint=..., max_length=64,
                              tables={"video": out / "video_emb.npy"})

Imports numpy only (no torch, no Hydra): an importer can write tables computed elsewhere.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lsvcr.errors import DataError

TABLES_MANIFEST = "embed_manifest.json"  # the file name of every existing table directory
_MERGE_CHUNK = 65536


def shard_paths(out_path: Path, rank: int, world: int) -> tuple[Path, Path]:
    """Partial-table file and its row-index file of one rank."""
    out_path = Path(out_path)
    stem = f"{out_path.stem}.shard{rank:03d}-of-{world:03d}"
    return out_path.with_name(f"{stem}.npy"), out_path.with_name(f"{stem}.index.npy")


def incomplete_path(path: Path) -> Path:
    """A temporary name beside ``path``, unique to this process and call, renamed onto ``path`` when
    complete: two writers of one table never share a half-written file."""
    return path.with_name(f"{path.stem}.incomplete-{os.getpid()}-{uuid.uuid4().hex[:8]}.npy")


def merge_shards(out_path: Path, world: int, remove: bool = True) -> np.ndarray:
    """Assemble the ``world`` partial files of ``out_path`` into the full ``[N+1, dim]`` table.

    The result is identical to a single-process
    :func:`~lsvcr.models.llm.table_encoder.encode_table`. Shard files are deleted
    afterwards unless ``remove`` is False.

    Raises:
        DataError: a shard is missing, or the shards do not cover every item exactly once.
    """
    out_path = Path(out_path)
    parts = [shard_paths(out_path, r, world) for r in range(world)]
    for rows_path, index_path in parts:
        for p in (rows_path, index_path):
            if not p.exists():
                raise DataError(f"{p}: missing embedding shard; did every rank of the embed stage finish?")
    indexes = [np.load(ip) for _, ip in parts]
    shards = [np.load(rp, mmap_mode="r") for rp, _ in parts]
    n = sum(len(ix) for ix in indexes)
    seen = np.sort(np.concatenate(indexes)) if n else np.zeros(0, np.int64)
    if not np.array_equal(seen, np.arange(n)):
        raise DataError(
            f"{out_path}: the {world} shards do not cover items 1..{n} exactly once; re-run the embed stage"
        )
    dims = {(s.shape[1], s.dtype) for s in shards}
    if len(dims) != 1:
        raise DataError(f"{out_path}: shards disagree on width/dtype {sorted(map(str, dims))}")
    dim, dtype = dims.pop()
    tmp = incomplete_path(out_path)
    table = np.lib.format.open_memmap(tmp, "w+", dtype, (n + 1, dim))
    table[0] = 0
    for rows, index in zip(shards, indexes):
        for s in range(0, len(index), _MERGE_CHUNK):
            table[index[s : s + _MERGE_CHUNK] + 1] = rows[s : s + _MERGE_CHUNK]
    table.flush()
    del table, shards
    os.replace(tmp, out_path)
    if remove:
        for rows_path, index_path in parts:
            rows_path.unlink()
            index_path.unlink()
    return np.load(out_path, mmap_mode="r")


def write_tables_manifest(
    out_dir: Path,
    *,
    model_name: str,
    checkpoint: str | None,
    max_length: int,
    tables: Mapping[str, Path],
    extra: Mapping | None = None,
) -> Path:
    """Write ``<out_dir>/embed_manifest.json`` describing ``tables`` (name -> ``.npy`` path).

    Shapes and dtypes are read from the files themselves, so the manifest cannot disagree with them.
    """
    out_dir = Path(out_dir)
    entries = {}
    for name, path in tables.items():
        arr = np.load(path, mmap_mode="r")
        entries[name] = {
            "file": os.path.relpath(Path(path), out_dir),
            "items": int(arr.shape[0]) - 1,
            "dim": int(arr.shape[1]),
            "dtype": str(arr.dtype),
        }
    manifest = {
        "model": model_name,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "max_length": int(max_length),
        "tables": entries,
        **dict(extra or {}),
    }
    path = out_dir / TABLES_MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return path


def load_tables(out_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read the manifest and memory-map each table, checking its shape and dtype against the manifest.

    Raises:
        DataError: the manifest or a table is missing, or a table does not match its manifest entry.
    """
    out_dir = Path(out_dir)
    mpath = out_dir / TABLES_MANIFEST
    if not mpath.exists():
        raise DataError(f"{mpath}: not found; run stage=embed first")
    manifest = json.loads(mpath.read_text())
    arrays = {}
    for name, entry in manifest["tables"].items():
        path = out_dir / entry["file"]
        if not path.exists():
            raise DataError(f"{path}: embedding table '{name}' listed in {mpath.name} is missing")
        arr = np.load(path, mmap_mode="r")
        if arr.shape != (entry["items"] + 1, entry["dim"]) or str(arr.dtype) != entry["dtype"]:
            raise DataError(
                f"{path}: shape {arr.shape} {arr.dtype}, manifest says "
                f"({entry['items'] + 1}, {entry['dim']}) {entry['dtype']}; run stage=embed again"
            )
        arrays[name] = arr
    return manifest, arrays
