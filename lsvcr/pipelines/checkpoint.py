"""A fine-tuned model on disk: how it is rebuilt, saved, resumed and selected. Not a stage:
``stage=finetune`` writes it, ``stage=evaluate`` (``evaluate.checkpoint``) reads it.

A finetune run directory holds ``checkpoint.json`` (the task, model, dataset sizes and the resolved
config nodes that shape the model: :func:`write_checkpoint_meta`), ``best/model.safetensors`` (the
selected weights) and ``last/`` (weights, optimizer and scheduler state and the counters after the
latest epoch: :class:`Checkpointer`, read back by ``finetune.resume``).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from lsvcr.data.store import PreparedDataset
from lsvcr.errors import ConfigError
from lsvcr.models.recommender import Recommender, frozen_table
from lsvcr.models.sr.layers import SequentialRecommender
from lsvcr.pipelines.common import build, check_max_position, require_comments, sr_class, write_json
from lsvcr.pipelines.handover import load_aligned_sr
from lsvcr.pipelines.tables import ensure_tables
from lsvcr.tasks import Task
from lsvcr.utils.loggers import is_rank_zero

log = logging.getLogger("lsvcr")

# <run>/checkpoint.json: what `stage=evaluate evaluate.checkpoint=<run>` needs to rebuild the model
CHECKPOINT_META = "checkpoint.json"
# the config nodes that shape a fine-tuned model and its text tables (saved in CHECKPOINT_META)
MODEL_KEYS = ("seed", "model", "embed", "finetune", "init_from")
WEIGHTS = "model.safetensors"


def is_trainable(sr_cfg: DictConfig) -> bool:
    """Whether a ``model/sr`` node builds an SR that ``stage=finetune`` trains (a
    :class:`~lsvcr.models.sr.layers.SequentialRecommender`), not a fitted
    :class:`~lsvcr.models.baseline.Baseline`."""
    cls = sr_class(sr_cfg)
    return cls is not None and issubclass(cls, SequentialRecommender)


def build_recommender(cfg: DictConfig, ds: PreparedDataset, task: Task) -> Recommender:
    """The SR of ``model/sr`` for ``task``, with its text tables (and the aligned weights of
    ``init_from``)."""
    if not is_trainable(cfg.model.sr):
        raise ConfigError(f"model/sr={cfg.model.sr.name} has nothing to fine-tune; use stage=evaluate")
    check_max_position(cfg)
    task.check_stage("finetune", "fine-tuning trains one task, rec or comm_rank")
    require_comments(cfg, ds, task)
    sr = build(cfg.model.sr, num_videos=ds.num_videos)
    task.check_sr(sr, cfg.model.sr.name)
    video = comment = projection = None
    if sr.use_text:
        tables = ensure_tables(cfg, ds)
        video, comment = frozen_table(tables.video), frozen_table(tables.comment)  # the files' pages, not copies
    if cfg.get("init_from"):
        projection = load_aligned_sr(cfg, sr, cfg.init_from, table_width=None if video is None else video.shape[1])
    elif video is not None and video.shape[1] != sr.adapter.in_features:
        raise ConfigError(f"text tables are {video.shape[1]} wide but model.sr.llm_emb_size={sr.adapter.in_features}; "
                          "a wider table needs the llm_emb_mlp of an alignment run (init_from)")
    return Recommender(sr, video, comment, projection)


def write_checkpoint_meta(path: Path, cfg: DictConfig, ds: PreparedDataset) -> None:
    """``<run>/checkpoint.json``: the task, model, dataset sizes and resolved model config of this run."""
    # resolved against the whole config first: model nodes may interpolate other nodes (data.comments)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    nodes = {k: resolved[k] for k in MODEL_KEYS if k in resolved}
    write_json(path / CHECKPOINT_META, {"stage": "finetune", "task": cfg.task.name, "model": cfg.model.sr.name,
                                         "num_videos": ds.num_videos, "num_comments": ds.num_comments,
                                         "dataset": str(ds.root), "config": nodes,
                                         "history": {"max_phis_len": int(cfg.data.max_phis_len),
                                                     "max_chis_len": int(cfg.data.max_chis_len)}})


def checkpoint_meta(cfg: DictConfig, run) -> tuple[Path, dict]:
    """``(run dir, its checkpoint.json)`` for ``evaluate.checkpoint=run``, checked against the
    config's task and model/sr (before any data is loaded)."""
    run = Path(str(run)).expanduser().resolve()
    where = f"evaluate.checkpoint={run}"
    meta_file, weights = run / CHECKPOINT_META, run / "best" / WEIGHTS
    missing = [f.relative_to(run).as_posix() for f in (meta_file, weights) if not f.exists()]
    if missing:
        raise ConfigError(f"{where}: not a finetune run directory (no {' or '.join(missing)}); "
                          "give a run directory written by stage=finetune")
    meta = json.loads(meta_file.read_text())
    if meta.get("stage") != "finetune":
        raise ConfigError(f"{where}: {meta_file.name} was written by stage={meta.get('stage')}, not stage=finetune")
    for key, flag, given in (("task", "task", cfg.task.name), ("model", "model/sr", cfg.model.sr.name)):
        if meta[key] != given:
            raise ConfigError(f"{where}: the checkpoint is {flag}={meta[key]}, not {flag}={given}; "
                              f"evaluate it with {flag}={meta[key]}")
    return run, meta


def load_finetuned(cfg: DictConfig, ds: PreparedDataset, run, task: Task) -> Recommender:
    """The best checkpoint of the finetune run ``run`` (``evaluate.checkpoint``), rebuilt with the
    run's own model, LLM and text-table settings, on ``ds``; every mismatch is one clear error."""
    run, meta = checkpoint_meta(cfg, run)
    where, weights = f"evaluate.checkpoint={run}", run / "best" / WEIGHTS
    if (meta["num_videos"], meta["num_comments"]) != (ds.num_videos, ds.num_comments):
        raise ConfigError(f"{where}: trained on {meta['num_videos']} videos and {meta['num_comments']} comments "
                          f"({meta['dataset']}); data={cfg.data.name} has {ds.num_videos} videos and "
                          f"{ds.num_comments} comments ({ds.root})")
    saved = dict(meta["config"])
    if "init_from" not in saved:  # written before init_from was a top-level key: it was finetune.init_from
        saved["init_from"] = (saved.get("finetune") or {}).get("init_from")
    run_cfg = copy.deepcopy(cfg)
    OmegaConf.set_struct(run_cfg, False)  # the run's finetune: node has keys this stage's has not
    model = build_recommender(OmegaConf.merge(run_cfg, saved), ds, task)
    try:
        model.load_state_dict(load_file(weights))
    except RuntimeError as e:
        raise ConfigError(f"{where}: {weights.name} does not fit its own config ({str(e).splitlines()[0]})") from None
    log.info("evaluating the best checkpoint of %s (epoch %s)", run,
             json.loads((run / "metrics.json").read_text()).get("best_epoch") if (run / "metrics.json").exists() else "?")
    return model.eval()


@dataclass
class EarlyStopper:
    """Selection on a validation score (higher is better): the best score and its epoch, and the
    evaluations since it improved; training stops after ``patience`` of them without a gain."""

    patience: int
    best: float = -math.inf
    best_epoch: int = -1
    bad: int = 0

    def update(self, score: float, epoch: int) -> bool:
        """Record ``epoch``'s score; True when it is the new best."""
        if score > self.best:
            self.best, self.best_epoch, self.bad = score, epoch, 0
            return True
        self.bad += 1
        return False

    @property
    def stopped(self) -> bool:
        return self.bad >= self.patience

    @property
    def selected(self) -> bool:
        """Whether any epoch was selected (validation produced a number at least once)."""
        return self.best_epoch >= 0

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad = state["best"], state["best_epoch"], state["bad"]


@dataclass
class Progress:
    """Where training is: the next epoch to run and the optimizer steps taken."""

    epoch: int = 0
    step: int = 0


class Checkpointer:
    """The checkpoints of one run directory: ``best/`` (the selected weights) and ``last/`` (weights,
    ``trainer.pt`` with the optimizer and scheduler, ``state.json`` with :class:`Progress` and the
    :class:`EarlyStopper`'s counters). Only rank 0 writes; every rank reads."""

    def __init__(self, path: Path):
        self.path = path

    def save_best(self, model: torch.nn.Module) -> None:
        self._save_weights(self.path / "best", model)

    def save_last(self, model: torch.nn.Module, opt, sched, progress: Progress, stopper: EarlyStopper) -> None:
        last = self.path / "last"
        self._save_weights(last, model)
        if is_rank_zero():
            torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, last / "trainer.pt")
            (last / "state.json").write_text(json.dumps(asdict(progress) | stopper.state_dict()))

    def load_best(self, model: torch.nn.Module) -> None:
        model.load_state_dict(load_file(self.path / "best" / WEIGHTS))

    def resume(self, run: Path, model: torch.nn.Module, opt, sched, stopper: EarlyStopper) -> Progress:
        """Load ``run/last`` (``finetune.resume``) into ``model``, ``opt``, ``sched`` and ``stopper``,
        and take over its ``best/`` weights; returns where training stands."""
        last = run / "last"
        if not (last / "state.json").exists():
            raise ConfigError(f"finetune.resume={run}: no {last / 'state.json'} (not a finetune run, or it saved no epoch)")
        model.load_state_dict(load_file(last / WEIGHTS))
        trainer = torch.load(last / "trainer.pt", weights_only=True)
        opt.load_state_dict(trainer["optimizer"])
        sched.load_state_dict(trainer["scheduler"])
        state = json.loads((last / "state.json").read_text())
        stopper.load_state_dict(state)
        progress = Progress(epoch=state["epoch"], step=state["step"])
        if is_rank_zero() and (run / "best").exists():
            shutil.copytree(run / "best", self.path / "best", dirs_exist_ok=True)
        log.info("resumed %s at epoch %d (best %.4f at epoch %d)", run, progress.epoch, stopper.best, stopper.best_epoch)
        return progress

    @staticmethod
    def _save_weights(dir_: Path, model: torch.nn.Module) -> None:
        if not is_rank_zero():
            return
        dir_.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, dir_ / WEIGHTS)
