"""What every pipeline needs: the prepared dataset, the run directory, the logger, results files."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from lsvcr.data.builder import write_dataset
from lsvcr.data.samples import SplitConfig
from lsvcr.data.store import PreparedDataset
from lsvcr.distributed import rank_zero_first
from lsvcr.errors import ConfigError
from lsvcr.metrics.evaluator import EvalConfig
from lsvcr.tasks import Task
from lsvcr.utils.hashing import short_hash
from lsvcr.utils.loggers import is_rank_zero

log = logging.getLogger("lsvcr")

# data keys that do not change the prepared files (they act when batches are built)
_LOAD_TIME_KEYS = ("max_phis_len", "max_chis_len", "prepared_dir")


def data_fingerprint(data_cfg: DictConfig) -> str:
    """Short hash of everything in ``data`` that shapes the prepared files."""
    d = OmegaConf.to_container(data_cfg, resolve=True)
    d = {k: v for k, v in d.items() if k not in _LOAD_TIME_KEYS}
    return short_hash(d)


def prepared_dir(cfg: DictConfig) -> Path:
    if cfg.data.get("prepared_dir"):
        return Path(cfg.data.prepared_dir)
    return Path(cfg.paths.data_dir) / f"{cfg.data.name}-{data_fingerprint(cfg.data)}"


def prepare(cfg: DictConfig, overwrite: bool = True) -> Path:
    """Read ``data.reader``, validate, and write the prepared dataset; returns its directory."""
    from lsvcr.data.validate import validate

    if cfg.data.get("reader") is None:
        raise ConfigError(f"data={cfg.data.name} has no reader: it can only load {prepared_dir(cfg)}")
    out = prepared_dir(cfg)
    t0 = time.perf_counter()
    raw = instantiate(cfg.data.reader, _convert_="all")
    t_read = time.perf_counter() - t0
    raw, skipped = validate(raw, timestamps=cfg.data.timestamps, empty_text=cfg.data.get("empty_text", ""))
    t_valid = time.perf_counter() - t0 - t_read
    split = SplitConfig(**OmegaConf.to_container(cfg.data.split, resolve=True))
    write_dataset(raw, out, split, overwrite=overwrite, history_ties=cfg.data.get("history_ties", "exclude"), manifest_extra={
        "source": {"name": cfg.data.name, **raw.source},
        "fingerprint": data_fingerprint(cfg.data),
        "data_config": OmegaConf.to_container(cfg.data, resolve=True),
        "skipped": skipped,
        "read_seconds": round(t_read, 3),
        "validate_seconds": round(t_valid, 3),
    })
    return out


def load_dataset(cfg: DictConfig) -> PreparedDataset:
    """The prepared dataset for ``cfg.data``, preparing it first when it does not exist yet."""
    path = prepared_dir(cfg)
    with rank_zero_first():  # one rank prepares; the others then find the manifest
        if not (path / "manifest.json").exists():
            if cfg.data.get("prepared_dir") and cfg.data.get("reader") is None:
                return PreparedDataset(path)  # raises a clear "not a prepared dataset" error
            log.info("no prepared dataset at %s: preparing it", path)
            prepare(cfg, overwrite=True)
    return PreparedDataset(path)


def require_comments(cfg: DictConfig, ds: PreparedDataset, task: Task) -> None:
    """One clear error when the run needs comment behaviour that ``ds`` does not have: a
    comment-ranking ``task`` (:meth:`~lsvcr.tasks.Task.check_data`), or an SR reading the comment
    history (``model.sr.use_comment_history``)."""
    task.check_data(ds, cfg.data.name)
    if cfg.model.sr.get("use_comment_history") and not int(ds.manifest["counts"]["comment_interactions"]):
        raise ConfigError(f"model.sr.use_comment_history=true reads the comment history, but data={cfg.data.name} "
                          f"has no comment interactions ({ds.num_comments} comments, 0 comment interactions in "
                          f"{ds.root}); set model.sr.use_comment_history=false (the video stream alone)")


def sr_class(sr_cfg: DictConfig) -> type | None:
    """The class a ``model/sr`` node's ``_target_`` names (None without one); an unknown class is
    one ConfigError naming the key, not Hydra's chain later."""
    if "_target_" not in sr_cfg:
        return None
    try:
        cls = get_class(sr_cfg._target_)
    except Exception as e:
        raise ConfigError(f"model.sr._target_={sr_cfg._target_}: {str(e).splitlines()[0]}") from None
    return cls if isinstance(cls, type) else None


def check_max_position(cfg: DictConfig) -> None:
    """``model.sr.max_position`` covers the longest history the data gives the SR (one error naming
    the keys), where the SR has positions."""
    longest = max(cfg.data.max_phis_len, cfg.data.max_chis_len)
    if cfg.model.sr.get("max_position", longest) < longest:
        raise ConfigError(f"model.sr.max_position={cfg.model.sr.max_position} is shorter than the histories "
                          f"(data.max_phis_len={cfg.data.max_phis_len}, data.max_chis_len={cfg.data.max_chis_len})")


def build(node: DictConfig, **kwargs):
    """Instantiate a config node with a ``_target_``, leaving out its descriptive ``name``."""
    resolved = OmegaConf.to_container(node, resolve=True)  # resolve against the full config first
    resolved.pop("name", None)
    return instantiate(resolved, **kwargs)


def eval_config(cfg: DictConfig) -> EvalConfig:
    e = cfg.eval
    return EvalConfig(protocols=tuple(e.protocols), rec_sampled_negatives=e.rec_sampled_negatives,
                      comm_max_candidates=e.comm_max_candidates, seed=e.seed, batch_size=e.batch_size,
                      recall_ks=tuple(e.recall_ks), ndcg_ks=tuple(e.ndcg_ks), mrr_ks=tuple(e.mrr_ks),
                      cold_max_train_interactions=e.get("cold_max_train_interactions", 5))


def run_dir(cfg: DictConfig) -> Path:
    path = Path(cfg.paths.run_dir)
    if is_rank_zero():
        path.mkdir(parents=True, exist_ok=True)
    return path


def start_logger(cfg: DictConfig, path: Path):
    logger = instantiate(cfg.logger)
    logger.start(path, OmegaConf.to_container(cfg, resolve=True))
    return logger


def write_json(path: Path, obj: Any) -> None:
    if is_rank_zero():
        path.write_text(json.dumps(obj, indent=2, sort_keys=True))
