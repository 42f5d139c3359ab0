"""The text-table cache: every video title and comment encoded once into memory-mapped tables.

Hydra-free: a caller describes the tables with :class:`TableSettings` and passes a function that
loads the text encoder (called only when the tables must be built); :func:`ensure_tables` returns
them, building them first when :func:`tables_dir` holds no complete tables made with those settings
on that dataset. ``stage=embed`` and ``stage=finetune`` reach it through
:mod:`lsvcr.pipelines.tables`, which reads the settings from the config.

The tables live in ``<prepared dataset>/embeddings/<llm>-<fingerprint>/`` (or the directory the
caller names): ``videos.npy`` ``[V+1, out_dim]``, ``comments.npy`` ``[C+1, out_dim]`` (row 0 =
padding), optionally ``videos_hidden.npy`` / ``comments_hidden.npy`` with the raw pooled LLM states,
and ``embed_manifest.json`` (:mod:`lsvcr.data.table_files`), written last, so a directory with a
manifest is complete. A dataset whose reader imported its text tables (``data=official``'s
``photo_embs.npy`` / ``comment_embs.npy``, manifest key ``text_tables``) carries them in that layout
and they are used instead: nothing is encoded (:func:`imported_tables`).

With ``torch.distributed`` initialised every rank encodes its shard of the length-sorted batches,
then rank 0 merges the shards and writes the manifest; one process is the ``world = 1`` case.
Runs started together (a sweep's jobs on one machine, all needing the same tables) take turns:
rank 0 of each holds an exclusive lock on ``<tables dir>/.build.lock`` while it decides whether to
build and builds, so one run encodes and the others wait, then reuse its tables.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from lsvcr import distributed
from lsvcr.data.store import PreparedDataset
from lsvcr.data.table_files import TABLES_MANIFEST, load_tables, merge_shards, write_tables_manifest
from lsvcr.errors import ConfigError, DataError
from lsvcr.models.llm.table_encoder import encode_table
from lsvcr.models.llm.text_encoder import LLMTextEncoder
from lsvcr.utils.hashing import short_hash

log = logging.getLogger("lsvcr")

# table name in the manifest -> file stem; "<stem>_hidden" holds the raw pooled states
TABLES = {"video": "videos", "comment": "comments"}


@dataclass(frozen=True)
class TableSettings:
    """Everything that decides a table's values, and where and how it is built.

    ``batch_size`` and ``device`` are left out of :attr:`fingerprint` on purpose: rows are
    batch-invariant (position ids count real tokens, padding is masked). ``out_dim`` sets the width,
    and an un-aligned run's ``llm_emb_mlp`` is drawn from ``mlp_seed``, so both are in; an aligned
    run's MLP comes from its checkpoint (``init_from``) instead, and ``mlp_seed`` is then None.
    """

    llm_name: str
    llm: dict                   # the LLM's resolved settings (model/llm)
    max_length: int             # tokens per text
    out_dim: int                # the width of the tables (llm_emb_mlp's output)
    mlp_seed: int | None        # the un-aligned llm_emb_mlp's seed; None when init_from gives it
    init_from: str | None       # the alignment run whose LLM encodes, as an absolute path
    batch_size: int = 64
    hidden_table: bool = False  # also keep the raw pooled hidden states
    out_dir: Path | None = None  # a directory the user named, instead of one under the dataset
    device: str = "cpu"

    @property
    def fingerprint(self) -> str:
        return short_hash({"llm": self.llm, "max_length": self.max_length, "init_from": self.init_from,
                           "out_dim": self.out_dim, "mlp_seed": self.mlp_seed})

    @property
    def wanted(self) -> set[str]:
        """The arrays a complete directory must hold for these settings."""
        return set(TABLES) | ({f"{k}_hidden" for k in TABLES} if self.hidden_table else set())


@dataclass
class TableEncoder:
    """What a caller's encoder loader returns: the encoder, its tokenizer, the LLM's name, and
    where its weights came from (recorded in the manifest)."""

    encoder: LLMTextEncoder
    tokenizer: Any
    name: str
    source: str


@dataclass
class TextTables:
    """The tables of one directory, memory-mapped: ``video`` ``[V+1, E]``, ``comment`` ``[C+1, E]``
    and every array the manifest lists (``arrays``, hidden-state tables included)."""

    dir: Path
    manifest: dict
    arrays: dict[str, np.ndarray]
    built: bool  # encoded by this call (False: reused or imported)

    @property
    def video(self) -> np.ndarray:
        return self.arrays["video"]

    @property
    def comment(self) -> np.ndarray:
        return self.arrays["comment"]


def imported_tables(ds: PreparedDataset) -> dict | None:
    """The manifest entry of the text tables ``ds`` carries (imported by its reader), or None."""
    return ds.manifest.get("text_tables")


def tables_dir(settings: TableSettings, ds: PreparedDataset) -> Path:
    """The imported tables of ``ds``, else ``settings.out_dir`` if set, else
    ``<ds.root>/embeddings/<llm name>-<fingerprint>``."""
    if imported_tables(ds):
        return ds.root / imported_tables(ds)["dir"]
    if settings.out_dir is not None:
        return Path(settings.out_dir)
    return ds.root / "embeddings" / f"{settings.llm_name}-{settings.fingerprint}"


def ensure_tables(settings: TableSettings, ds: PreparedDataset,
                  load_encoder: Callable[[], TableEncoder]) -> TextTables:
    """The tables of ``settings`` on ``ds``: cheap when :func:`tables_dir` already holds complete
    ones, else built first with the encoder ``load_encoder()`` returns (on every rank).

    Raises:
        ConfigError: ``settings.out_dir`` holds complete tables made with other settings or another
            dataset (overwriting a directory the user named is left to the user).
    """
    out = tables_dir(settings, ds)
    if imported_tables(ds):
        log.info("text tables: imported with the dataset, %s", out)
        manifest, arrays = load_tables(out)
        return TextTables(out, manifest, arrays, built=False)
    rank, world = distributed.rank_and_world()
    with _build_lock(out, rank):
        found = _load_complete(out, settings, ds) if rank == 0 else None
        build = [found is None]
        if world > 1:  # one decision for all ranks: a late rank must not see rank 0's new manifest
            dist.broadcast_object_list(build, src=0)
        if build[0]:
            log.info("text tables: building them in %s", out)
            _build(settings, ds, out, load_encoder(), rank, world)
        else:
            log.info("text tables: reusing %s", out)
    manifest, arrays = load_tables(out)
    return TextTables(out, manifest, arrays, built=build[0])


def _dataset_info(ds: PreparedDataset) -> dict:
    return {"root": str(ds.root), "fingerprint": ds.manifest.get("fingerprint"),
            "videos": ds.num_videos, "comments": ds.num_comments}


def _load_complete(out: Path, settings: TableSettings, ds: PreparedDataset) -> tuple[dict, dict] | None:
    """Manifest and tables of ``out`` when they are complete and match ``settings`` and ``ds``; else None."""
    if not (out / TABLES_MANIFEST).exists():
        return None
    try:
        manifest, arrays = load_tables(out)
    except (DataError, json.JSONDecodeError, KeyError) as e:
        log.warning("text tables in %s are incomplete (%s): building them again", out, e)
        return None
    if not settings.wanted <= set(arrays):
        return None
    expected = {"fingerprint": settings.fingerprint, "dataset": _dataset_info(ds)["fingerprint"],
                "videos": ds.num_videos, "comments": ds.num_comments}
    found = {"fingerprint": manifest.get("fingerprint"), "dataset": manifest.get("dataset", {}).get("fingerprint"),
             "videos": manifest["tables"]["video"]["items"], "comments": manifest["tables"]["comment"]["items"]}
    if found == expected:
        return manifest, arrays
    if settings.out_dir is not None:
        raise ConfigError(f"embed.out_dir={out}: its tables were made with other settings or data "
                          f"({found}, this run needs {expected}); remove it or choose another embed.out_dir")
    return None


@contextlib.contextmanager
def _build_lock(out: Path, rank: int) -> Iterator[None]:
    """On rank 0, an exclusive ``flock`` on ``out/.build.lock`` for the block: another run that needs
    the same tables waits here until this one has built them (and then finds them complete). The
    other ranks wait for rank 0's decision instead. Where ``fcntl`` is missing (Windows) there is no lock."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if rank != 0 or fcntl is None:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".build.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("text tables: another run is building %s; waiting for it", out)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(settings: TableSettings, ds: PreparedDataset, out: Path, loaded: TableEncoder, rank: int, world: int) -> None:
    if rank == 0:
        # a stale manifest would vouch for a half-rewritten directory if this run stopped midway
        (out / TABLES_MANIFEST).unlink(missing_ok=True)
    encoder = loaded.encoder.to(torch.device(settings.device)).eval()
    t0 = time.perf_counter()
    paths: dict[str, Path] = {}
    for key, stem in TABLES.items():
        texts = ds.video_titles() if key == "video" else ds.comment_texts()
        paths[key] = out / f"{stem}.npy"
        hidden = out / f"{stem}_hidden.npy" if settings.hidden_table else None
        if hidden is not None:
            paths[f"{key}_hidden"] = hidden
        encode_table(encoder, loaded.tokenizer, texts, paths[key], batch_size=settings.batch_size,
                     max_length=settings.max_length, desc=f"{key} texts", shard=(rank, world),
                     hidden_path=hidden, progress=rank == 0)
    distributed.barrier()
    if rank == 0:
        if world > 1:
            for path in paths.values():
                merge_shards(path, world)
        seconds = time.perf_counter() - t0
        write_tables_manifest(out, model_name=loaded.name, checkpoint=settings.init_from,
                             max_length=settings.max_length, tables=paths, extra={
                                 "source": loaded.source, "fingerprint": settings.fingerprint,
                                 "out_dim": encoder.out_dim, "hidden_size": encoder.hidden_size,
                                 "dataset": _dataset_info(ds), "processes": world,
                                 "encode_seconds": round(seconds, 3),
                                 "items_per_second": round((ds.num_videos + ds.num_comments) / max(seconds, 1e-9), 1),
                             })
    distributed.barrier()
