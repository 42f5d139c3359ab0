"""stage=embed: encode every video title and comment once into memory-mapped text tables.

    lsvcr stage=embed model/llm=tiny
    lsvcr stage=embed model/llm=qwen2_5_0_5b hardware=gpu embed.batch_size=256
    lsvcr stage=embed init_from=<alignment run dir>   # tables from the aligned LLM

The tables and their cache are :mod:`lsvcr.models.llm.table_cache` (layout, fingerprint, locking,
sharded encoding); :mod:`lsvcr.pipelines.tables` reads their settings from the config. This stage
builds them ahead of ``stage=finetune``, which would otherwise build them itself, and writes
``embed.json`` (where they are, whether this run built them, their shape and encoding speed).
"""

from __future__ import annotations

import logging
import time

from omegaconf import DictConfig

from lsvcr.pipelines.common import load_dataset, run_dir, write_json
from lsvcr.pipelines.tables import ensure_tables

log = logging.getLogger("lsvcr")


def run(cfg: DictConfig) -> dict:
    t0 = time.perf_counter()
    ds = load_dataset(cfg)  # rank 0 prepares a missing dataset first; the other ranks then read it
    tables = ensure_tables(cfg, ds)
    video, comment, manifest = tables.video, tables.comment, tables.manifest
    summary = {
        "tables_dir": str(tables.dir),
        "built": tables.built,
        "model": manifest["model"],
        "rows": {"video": int(video.shape[0]), "comment": int(comment.shape[0])},
        "dim": int(video.shape[1]),
        "seconds": round(time.perf_counter() - t0, 2),
        "encode_seconds": manifest.get("encode_seconds"),
        "items_per_second": manifest.get("items_per_second"),
    }
    write_json(run_dir(cfg) / "embed.json", summary)
    log.info("%s text tables (%s) in %s: %d video + %d comment rows x %d, %.1fs (%s encoding: %s items/s)",
             "built" if tables.built else "reused", manifest["model"], summary["tables_dir"], video.shape[0],
             comment.shape[0], video.shape[1], summary["seconds"], "this run's" if tables.built else "earlier",
             summary["items_per_second"])
    return summary
