"""stage=embed: encode every video title and comment once into memory-mapped text tables.

    lsvcr stage=embed model/llm=tiny
    lsvcr stage=embed model/llm=qwen2_5_0_5b hardware=gpu embed.batch_size=256
    lsvcr stage=embed finetune.init_from=<alignment run dir>   # tables from the aligned LLM

The tables live in :func:`tables_dir` (``<prepared dataset>/embeddings/<llm>-<fingerprint>/``):
``videos.npy`` ``[V+1, out_dim]``, ``comments.npy`` ``[C+1, out_dim]`` (row 0 = padding), optionally
``videos_hidden.npy`` / ``comments_hidden.npy`` with the raw pooled LLM states, and
``embed_manifest.json``, written last, so a directory with a manifest is complete. A directory that
is already complete is reused (:func:`ensure_tables`, which ``stage=finetune`` calls too). A dataset
whose reader imported its text tables (``data=official``'s ``photo_embs.npy`` / ``comment_embs.npy``,
manifest key ``text_tables``) carries them in that layout, and they are used instead: nothing is
encoded (:func:`imported_tables`).

With ``torch.distributed`` initialised every rank encodes its shard of the length-sorted batches,
then rank 0 merges the shards and writes the manifest; one process is the ``world = 1`` case.

Runs started together (a sweep's jobs on one machine, all needing the same tables) take turns:
rank 0 of each holds an exclusive lock on ``<tables dir>/.build.lock`` while it decides whether to
build and builds (:func:`_build_lock`), so one run encodes and the others wait, then reuse its tables.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lsvcr import distributed
from lsvcr.data.store import PreparedDataset
from lsvcr.data.table_files import TABLES_MANIFEST, load_tables, merge_shards, write_tables_manifest
from lsvcr.errors import ConfigError, DataError, checked_int
from lsvcr.models.llm.table_encoder import encode_table
from lsvcr.models.llm.text_encoder import DEFAULT_OUT_DIM, LLMTextEncoder
from lsvcr.pipelines.common import load_dataset, run_dir, write_json

log = logging.getLogger("lsvcr")

# table name in the manifest -> file stem; "<stem>_hidden" holds the raw pooled states
TABLES = {"video": "videos", "comment": "comments"}
_TEXT_CHUNK = 4096


def _short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _init_from(cfg: DictConfig) -> str | None:
    """``finetune.init_from`` as an absolute path, so two spellings of one run share one table directory."""
    value = OmegaConf.select(cfg, "finetune.init_from", default=None)
    return str(Path(value).expanduser().resolve()) if value else None


def _out_dim(cfg: DictConfig) -> int:
    return int(cfg.embed.get("out_dim", DEFAULT_OUT_DIM))


def mlp_seed(cfg: DictConfig) -> int:
    """The seed of an un-aligned run's random ``llm_emb_mlp``: ``embed.mlp_seed``, else ``seed``."""
    value = cfg.embed.get("mlp_seed")
    return int(cfg.seed) if value is None else checked_int(value, "embed.mlp_seed", 0, "an int >= 0 or null")


def tables_fingerprint(cfg: DictConfig) -> str:
    """Short hash of every setting that changes a table's values.

    ``embed.batch_size`` is left out on purpose: rows are batch-invariant (position ids count real
    tokens, padding is masked). ``out_dim`` sets the width, and an un-aligned run's ``llm_emb_mlp``
    is drawn from :func:`mlp_seed`, so both are in; an aligned run's MLP comes from its checkpoint instead.
    """
    init_from = _init_from(cfg)
    return _short_hash({
        "llm": OmegaConf.to_container(cfg.model.llm, resolve=True),
        "max_length": int(cfg.embed.max_length),
        "init_from": init_from,
        "out_dim": _out_dim(cfg),
        "mlp_seed": None if init_from else mlp_seed(cfg),
    })


def imported_tables(ds: PreparedDataset) -> dict | None:
    """The manifest entry of the text tables ``ds`` carries (imported by its reader), or None."""
    return ds.manifest.get("text_tables")


def tables_dir(cfg: DictConfig, ds: PreparedDataset) -> Path:
    """The imported tables of ``ds``, else ``embed.out_dir`` if set, else
    ``<ds.root>/embeddings/<llm name>-<fingerprint>``."""
    if imported_tables(ds):
        return ds.root / imported_tables(ds)["dir"]
    if cfg.embed.get("out_dir"):
        return Path(cfg.embed.out_dir)
    return ds.root / "embeddings" / f"{cfg.model.llm.name}-{tables_fingerprint(cfg)}"


def llm_workdir(cfg: DictConfig, ds: PreparedDataset) -> Path:
    """Per-dataset, per-LLM directory where a built LLM keeps its files (the tiny LM's tokenizer).

    Every stage that builds ``cfg.model.llm`` on ``ds`` passes this, so they share one tokenizer.
    """
    node = OmegaConf.to_container(cfg.model.llm, resolve=True)
    return ds.root / "llm" / f"{cfg.model.llm.name}-{_short_hash(node)}"


def dataset_texts(ds: PreparedDataset) -> Iterator[str]:
    """Titles and comments interleaved (title 1, comment 1, title 2, ...), then the longer list's rest.

    Interleaved because a tokenizer trained on the first ``max_texts`` must see both kinds even
    when comments outnumber titles 200 to 1. Read in chunks, so stopping early reads little.
    """
    titles, comments = ds.video_titles(), ds.comment_texts()
    for start in range(0, max(len(titles), len(comments)), _TEXT_CHUNK):
        t = titles.slice(start, _TEXT_CHUNK).to_pylist()
        c = comments.slice(start, _TEXT_CHUNK).to_pylist()
        for i in range(max(len(t), len(c))):
            if i < len(t):
                yield t[i]
            if i < len(c):
                yield c[i]


def _device(cfg: DictConfig) -> torch.device:
    accelerator = str(OmegaConf.select(cfg, "hardware.accelerator", default="cpu"))
    if accelerator != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", distributed.env_local_rank())
    return torch.device("cpu")


def _dataset_info(ds: PreparedDataset) -> dict:
    return {"root": str(ds.root), "fingerprint": ds.manifest.get("fingerprint"),
            "videos": ds.num_videos, "comments": ds.num_comments}


def _load_complete(out: Path, cfg: DictConfig, ds: PreparedDataset) -> tuple[dict, dict] | None:
    """Manifest and tables of ``out`` when they are complete and match ``cfg`` and ``ds``; else None.

    Raises:
        ConfigError: ``embed.out_dir`` holds complete tables made with other settings or another
            dataset (overwriting a directory the user named is left to the user).
    """
    if not (out / TABLES_MANIFEST).exists():
        return None
    try:
        manifest, arrays = load_tables(out)
    except (DataError, json.JSONDecodeError, KeyError) as e:
        log.warning("text tables in %s are incomplete (%s): building them again", out, e)
        return None
    wanted = set(TABLES) | ({f"{k}_hidden" for k in TABLES} if cfg.embed.hidden_table else set())
    if not wanted <= set(arrays):
        return None
    expected = {"fingerprint": tables_fingerprint(cfg), "dataset": _dataset_info(ds)["fingerprint"],
                "videos": ds.num_videos, "comments": ds.num_comments}
    found = {"fingerprint": manifest.get("fingerprint"), "dataset": manifest.get("dataset", {}).get("fingerprint"),
             "videos": manifest["tables"]["video"]["items"], "comments": manifest["tables"]["comment"]["items"]}
    if found == expected:
        return manifest, arrays
    if cfg.embed.get("out_dir"):
        raise ConfigError(f"embed.out_dir={out}: its tables were made with other settings or data "
                          f"({found}, this run needs {expected}); remove it or choose another embed.out_dir")
    return None


def ensure_tables(cfg: DictConfig, ds: PreparedDataset) -> tuple[np.ndarray, np.ndarray, dict]:
    """The video ``[V+1, E]`` and comment ``[C+1, E]`` tables (memory-mapped) and their manifest.

    Cheap when :func:`tables_dir` already holds complete tables; otherwise builds them first,
    exactly as ``stage=embed`` does.
    """
    video, comment, manifest, _ = _ensure(cfg, ds)
    return video, comment, manifest


def _check_imported(cfg: DictConfig, info: dict) -> None:
    """The imported tables fit this run: no conflicting embed settings, and the SR's input width
    (a wider table needs an alignment run's ``llm_emb_mlp``, which ``finetune.init_from`` checks)."""
    files = f"{info['video']['file']} and {info['comment']['file']}"
    if cfg.embed.get("out_dir"):
        raise ConfigError(f"embed.out_dir={cfg.embed.out_dir}: this dataset's text tables are imported from {files} "
                          "(data.embeddings); set data.embeddings=false to use other tables")
    if cfg.embed.hidden_table:
        raise ConfigError(f"embed.hidden_table=true: this dataset's text tables are imported from {files} "
                          "(data.embeddings) and have no hidden-size tables; set data.embeddings=false to encode "
                          "the texts with model/llm")
    if _init_from(cfg):
        log.warning("finetune.init_from=%s: its LLM does not make the text tables, they are imported from %s "
                    "(set data.embeddings=false to encode the texts with it)", _init_from(cfg), files)
        return
    width = OmegaConf.select(cfg, "model.sr.llm_emb_size", default=None)
    if width is not None and int(width) != info["dim"]:
        rows = info["video"]["rows"]
        raise ConfigError(f"{info['video']['file']}: shape ({rows}, {info['dim']}), model.sr.llm_emb_size={width} "
                          f"expects ({rows}, {width}); set embed.out_dim={info['dim']} (model.sr.llm_emb_size "
                          "follows it) or import tables of that width")


def _ensure(cfg: DictConfig, ds: PreparedDataset) -> tuple[np.ndarray, np.ndarray, dict, bool]:
    out = tables_dir(cfg, ds)
    if imported_tables(ds):
        _check_imported(cfg, imported_tables(ds))
        log.info("text tables: imported with the dataset, %s", out)
        manifest, arrays = load_tables(out)
        return arrays["video"], arrays["comment"], manifest, False
    rank, world = distributed.rank_and_world()
    with _build_lock(out, rank):
        found = _load_complete(out, cfg, ds) if rank == 0 else None
        build = [found is None]
        if world > 1:  # one decision for all ranks: a late rank must not see rank 0's new manifest
            dist.broadcast_object_list(build, src=0)
        if build[0]:
            log.info("text tables: building them in %s", out)
            _build_tables(cfg, ds, out, rank, world)
        else:
            log.info("text tables: reusing %s", out)
    manifest, arrays = load_tables(out)
    return arrays["video"], arrays["comment"], manifest, build[0]


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


def _load_encoder(cfg: DictConfig, ds: PreparedDataset):
    """(text encoder, tokenizer, model name, weights source) for the tables of ``cfg``.

    An alignment run is read by ``lsvcr.pipelines.handover.load_aligned_llm(cfg, init_from)``, which
    returns ``(LLMBundle, LLMTextEncoder)``: the LoRA LLM and its trained ``llm_emb_mlp``.
    """
    init_from = _init_from(cfg)
    if init_from:
        from lsvcr.pipelines.handover import load_aligned_llm  # raises ConfigError naming a bad init_from

        bundle, encoder = load_aligned_llm(cfg, init_from)
        return encoder, bundle.tokenizer, bundle.name, init_from
    spec = instantiate(cfg.model.llm)
    with distributed.rank_zero_first():  # rank 0 trains and saves the tokenizer; the others reload it
        bundle = spec.build(lambda: dataset_texts(ds), llm_workdir(cfg, ds))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mlp_seed(cfg))  # an un-aligned run's llm_emb_mlp: random, but reproducible
        encoder = LLMTextEncoder(bundle.model, out_dim=_out_dim(cfg))
    return encoder, bundle.tokenizer, bundle.name, bundle.source


def _build_tables(cfg: DictConfig, ds: PreparedDataset, out: Path, rank: int, world: int) -> None:
    if rank == 0:
        # a stale manifest would vouch for a half-rewritten directory if this run stopped midway
        (out / TABLES_MANIFEST).unlink(missing_ok=True)
    encoder, tokenizer, name, source = _load_encoder(cfg, ds)
    encoder.to(_device(cfg)).eval()
    t0 = time.perf_counter()
    paths: dict[str, Path] = {}
    for key, stem in TABLES.items():
        texts = ds.video_titles() if key == "video" else ds.comment_texts()
        paths[key] = out / f"{stem}.npy"
        hidden = out / f"{stem}_hidden.npy" if cfg.embed.hidden_table else None
        if hidden is not None:
            paths[f"{key}_hidden"] = hidden
        encode_table(encoder, tokenizer, texts, paths[key], batch_size=int(cfg.embed.batch_size),
                     max_length=int(cfg.embed.max_length), desc=f"{key} texts", shard=(rank, world),
                     hidden_path=hidden, progress=rank == 0)
    distributed.barrier()
    if rank == 0:
        if world > 1:
            for path in paths.values():
                merge_shards(path, world)
        seconds = time.perf_counter() - t0
        write_tables_manifest(out, model_name=name, checkpoint=_init_from(cfg), max_length=int(cfg.embed.max_length),
                             tables=paths, extra={
                                 "source": source, "fingerprint": tables_fingerprint(cfg),
                                 "out_dim": encoder.out_dim, "hidden_size": encoder.hidden_size,
                                 "dataset": _dataset_info(ds), "processes": world,
                                 "encode_seconds": round(seconds, 3),
                                 "items_per_second": round((ds.num_videos + ds.num_comments) / max(seconds, 1e-9), 1),
                             })
    distributed.barrier()


def run(cfg: DictConfig) -> dict:
    t0 = time.perf_counter()
    ds = load_dataset(cfg)  # rank 0 prepares a missing dataset first; the other ranks then read it
    video, comment, manifest, built = _ensure(cfg, ds)
    summary = {
        "tables_dir": str(tables_dir(cfg, ds)),
        "built": built,
        "model": manifest["model"],
        "rows": {"video": int(video.shape[0]), "comment": int(comment.shape[0])},
        "dim": int(video.shape[1]),
        "seconds": round(time.perf_counter() - t0, 2),
        "encode_seconds": manifest.get("encode_seconds"),
        "items_per_second": manifest.get("items_per_second"),
    }
    write_json(run_dir(cfg) / "embed.json", summary)
    log.info("%s text tables (%s) in %s: %d video + %d comment rows x %d, %.1fs (%s encoding: %s items/s)",
             "built" if built else "reused", manifest["model"], summary["tables_dir"], video.shape[0],
             comment.shape[0], video.shape[1], summary["seconds"], "this run's" if built else "earlier",
             summary["items_per_second"])
    return summary
