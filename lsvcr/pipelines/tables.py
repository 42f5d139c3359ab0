"""The text tables of a run's config: :mod:`lsvcr.models.llm.table_cache` given the settings of
``model/llm``, ``embed`` and ``init_from``. Not a stage: ``stage=embed`` builds the tables
ahead, ``stage=finetune`` (and ``stage=evaluate`` rebuilding a checkpoint) reuse or build them, and
``stage=align`` shares :func:`llm_workdir` with them."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lsvcr import distributed
from lsvcr.data.store import PreparedDataset
from lsvcr.errors import ConfigError, checked_int
from lsvcr.models.llm import table_cache
from lsvcr.models.llm.table_cache import TableEncoder, TableSettings, TextTables, imported_tables
from lsvcr.models.llm.text_encoder import DEFAULT_OUT_DIM, LLMTextEncoder
from lsvcr.pipelines.handover import load_aligned_llm
from lsvcr.utils.hashing import short_hash

log = logging.getLogger("lsvcr")


def init_from(cfg: DictConfig) -> str | None:
    """``init_from`` as an absolute path, so two spellings of one run share one table directory."""
    value = OmegaConf.select(cfg, "init_from", default=None)
    return str(Path(value).expanduser().resolve()) if value else None


def mlp_seed(cfg: DictConfig) -> int:
    """The seed of an un-aligned run's random ``llm_emb_mlp``: ``embed.mlp_seed``, else ``seed``."""
    value = cfg.embed.get("mlp_seed")
    return int(cfg.seed) if value is None else checked_int(value, "embed.mlp_seed", 0, "an int >= 0 or null")


def table_settings(cfg: DictConfig) -> TableSettings:
    """The tables ``cfg`` asks for: ``model/llm``, ``embed.*``, ``init_from`` and the device of ``hardware``."""
    start = init_from(cfg)
    accelerator = str(OmegaConf.select(cfg, "hardware.accelerator", default="cpu"))
    device = f"cuda:{distributed.env_local_rank()}" if accelerator != "cpu" and torch.cuda.is_available() else "cpu"
    return TableSettings(
        llm_name=cfg.model.llm.name, llm=OmegaConf.to_container(cfg.model.llm, resolve=True),
        max_length=int(cfg.embed.max_length), out_dim=int(cfg.embed.get("out_dim", DEFAULT_OUT_DIM)),
        mlp_seed=None if start else mlp_seed(cfg), init_from=start, batch_size=int(cfg.embed.batch_size),
        hidden_table=bool(cfg.embed.hidden_table),
        out_dir=Path(cfg.embed.out_dir) if cfg.embed.get("out_dir") else None, device=device)


def tables_dir(cfg: DictConfig, ds: PreparedDataset) -> Path:
    """Where the tables of ``cfg`` on ``ds`` live (:func:`lsvcr.models.llm.table_cache.tables_dir`)."""
    return table_cache.tables_dir(table_settings(cfg), ds)


def ensure_tables(cfg: DictConfig, ds: PreparedDataset) -> TextTables:
    """The tables of ``cfg`` on ``ds``, built first when they do not exist yet; imported tables are
    checked against the run's settings instead."""
    settings = table_settings(cfg)
    if imported_tables(ds):
        _check_imported(cfg, imported_tables(ds))
    return table_cache.ensure_tables(settings, ds, lambda: load_encoder(cfg, ds))


def llm_workdir(cfg: DictConfig, ds: PreparedDataset) -> Path:
    """Per-dataset, per-LLM directory where a built LLM keeps its files (the tiny LM's tokenizer).

    Every stage that builds ``cfg.model.llm`` on ``ds`` passes this, so they share one tokenizer.
    """
    node = OmegaConf.to_container(cfg.model.llm, resolve=True)
    return ds.root / "llm" / f"{cfg.model.llm.name}-{short_hash(node)}"


def load_encoder(cfg: DictConfig, ds: PreparedDataset) -> TableEncoder:
    """The encoder of the tables: an alignment run's LLM and trained ``llm_emb_mlp``
    (``init_from``), else ``model/llm`` with a random ``llm_emb_mlp`` drawn from :func:`mlp_seed`."""
    start = init_from(cfg)
    if start:
        bundle, encoder = load_aligned_llm(cfg, start)  # raises ConfigError naming a bad init_from
        return TableEncoder(encoder, bundle.tokenizer, bundle.name, start)
    spec = instantiate(cfg.model.llm)
    with distributed.rank_zero_first():  # rank 0 trains and saves the tokenizer; the others reload it
        bundle = spec.build(ds.texts, llm_workdir(cfg, ds))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mlp_seed(cfg))  # an un-aligned run's llm_emb_mlp: random, but reproducible
        encoder = LLMTextEncoder(bundle.model, out_dim=table_settings(cfg).out_dim)
    return TableEncoder(encoder, bundle.tokenizer, bundle.name, bundle.source)


def _check_imported(cfg: DictConfig, info: dict) -> None:
    """The imported tables fit this run: no conflicting embed settings, and the SR's input width
    (a wider table needs an alignment run's ``llm_emb_mlp``, which ``init_from`` checks)."""
    files = f"{info['video']['file']} and {info['comment']['file']}"
    if cfg.embed.get("out_dir"):
        raise ConfigError(f"embed.out_dir={cfg.embed.out_dir}: this dataset's text tables are imported from {files} "
                          "(data.embeddings); set data.embeddings=false to use other tables")
    if cfg.embed.hidden_table:
        raise ConfigError(f"embed.hidden_table=true: this dataset's text tables are imported from {files} "
                          "(data.embeddings) and have no hidden-size tables; set data.embeddings=false to encode "
                          "the texts with model/llm")
    if init_from(cfg):
        log.warning("init_from=%s: its LLM does not make the text tables, they are imported from %s "
                    "(set data.embeddings=false to encode the texts with it)", init_from(cfg), files)
        return
    width = OmegaConf.select(cfg, "model.sr.llm_emb_size", default=None)
    if width is not None and int(width) != info["dim"]:
        rows = info["video"]["rows"]
        raise ConfigError(f"{info['video']['file']}: shape ({rows}, {info['dim']}), model.sr.llm_emb_size={width} "
                          f"expects ({rows}, {width}); set embed.out_dim={info['dim']} (model.sr.llm_emb_size "
                          "follows it) or import tables of that width")
