"""stage=finetune: train an SR for one task with Accelerate, select on validation, test the best.

    lsvcr stage=finetune task=rec model/sr=lsvcr
    lsvcr stage=finetune task=comm_rank model/sr=lsvcr
    lsvcr stage=finetune task=rec model/sr=sasrec
    lsvcr stage=finetune task=rec finetune.init_from=<align run>      # the aligned SR
    lsvcr stage=finetune hardware=cpu_ddp hardware.nproc_per_node=2   # several processes

Run directory: ``best/model.safetensors`` (the selected weights), ``last/`` (weights, optimizer and
scheduler state and counters after the latest epoch, for ``finetune.resume``), ``metrics.json``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_scheduler

from lsvcr import distributed
from lsvcr.data.history import HistoryGatherer
from lsvcr.errors import ConfigError
from lsvcr.losses.recommend import FinetuneLoss
from lsvcr.metrics.evaluator import Evaluator, format_table
from lsvcr.models.recommender import Recommender
from lsvcr.models.sr.layers import SequentialRecommender
from lsvcr.pipelines.common import build, eval_config, load_dataset, require_comments, run_dir, start_logger, write_json
from lsvcr.tasks import Task, TrainSpec, build_task
from lsvcr.utils.loggers import is_rank_zero

log = logging.getLogger("lsvcr")
# seed offset between ranks' random streams (dropout, ID-text negatives): a prime, far above any epoch count
_RANK_STRIDE = 1_000_003


# <run>/checkpoint.json: what `stage=evaluate evaluate.checkpoint=<run>` needs to rebuild the model
CHECKPOINT_META = "checkpoint.json"
# the config nodes that shape a fine-tuned model and its text tables (saved in CHECKPOINT_META)
_MODEL_KEYS = ("seed", "model", "embed", "finetune")


def is_trainable(sr_cfg: DictConfig) -> bool:
    """Whether a ``model/sr`` node builds an SR that ``stage=finetune`` trains (a
    :class:`~lsvcr.models.sr.layers.SequentialRecommender`), not a fitted
    :class:`~lsvcr.models.baseline.Baseline`."""
    if "_target_" not in sr_cfg:
        return False
    try:
        cls = get_class(sr_cfg._target_)
    except Exception as e:  # an unknown class: one clear error here, not Hydra's chain later
        raise ConfigError(f"model.sr._target_={sr_cfg._target_}: {str(e).splitlines()[0]}") from None
    return isinstance(cls, type) and issubclass(cls, SequentialRecommender)


def build_recommender(cfg: DictConfig, ds, task: Task) -> Recommender:
    """The SR of ``model/sr`` for ``task``, with its text tables (and the aligned weights of
    ``finetune.init_from``)."""
    if not is_trainable(cfg.model.sr):
        raise ConfigError(f"model/sr={cfg.model.sr.name} has nothing to fine-tune; use stage=evaluate")
    longest = max(cfg.data.max_phis_len, cfg.data.max_chis_len)
    if cfg.model.sr.get("max_position", longest) < longest:
        raise ConfigError(f"model.sr.max_position={cfg.model.sr.max_position} is shorter than the histories "
                          f"(data.max_phis_len={cfg.data.max_phis_len}, data.max_chis_len={cfg.data.max_chis_len})")
    task.check_stage("finetune", "fine-tuning trains one task, rec or comm_rank")
    require_comments(cfg, ds, task)
    sr = build(cfg.model.sr, num_videos=ds.num_videos)
    task.check_sr(sr, cfg.model.sr.name)
    video = comment = projection = None
    if sr.uses_text:
        from lsvcr.pipelines.embed import ensure_tables

        v, c, _ = ensure_tables(cfg, ds)
        video, comment = torch.from_numpy(np.array(v, np.float32)), torch.from_numpy(np.array(c, np.float32))
    if cfg.finetune.get("init_from"):
        from lsvcr.pipelines.handover import load_aligned_sr

        projection = load_aligned_sr(cfg, sr, cfg.finetune.init_from, table_width=None if video is None else video.shape[1])
    elif video is not None and video.shape[1] != sr.adapter.in_features:
        raise ConfigError(f"text tables are {video.shape[1]} wide but model.sr.llm_emb_size={sr.adapter.in_features}; "
                          "a wider table needs the llm_emb_mlp of an alignment run (finetune.init_from)")
    return Recommender(sr, video, comment, projection)


def _train_spec(cfg: DictConfig, accelerator: Accelerator) -> TrainSpec:
    f = cfg.finetune
    return TrainSpec(batch_size=f.batch_size, seed=cfg.seed, train_on=f.get("train_on", "samples"),
                     rank=accelerator.process_index, world=accelerator.num_processes, max_len=cfg.data.max_phis_len,
                     sequence_stride=f.get("sequence_stride"))


def _write_checkpoint_meta(path: Path, cfg: DictConfig, ds) -> None:
    """``<run>/checkpoint.json``: the task, model, dataset sizes and resolved model config of this run."""
    # resolved against the whole config first: model nodes may interpolate other nodes (data.comments)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    nodes = {k: resolved[k] for k in _MODEL_KEYS if k in resolved}
    write_json(path / CHECKPOINT_META, {"stage": "finetune", "task": cfg.task.name, "model": cfg.model.sr.name,
                                         "num_videos": ds.num_videos, "num_comments": ds.num_comments,
                                         "dataset": str(ds.root), "config": nodes})


def checkpoint_meta(cfg: DictConfig, run) -> tuple[Path, dict]:
    """``(run dir, its checkpoint.json)`` for ``evaluate.checkpoint=run``, checked against the
    config's task and model/sr (before any data is loaded)."""
    run = Path(str(run)).expanduser().resolve()
    where = f"evaluate.checkpoint={run}"
    meta_file, weights = run / CHECKPOINT_META, run / "best" / "model.safetensors"
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


def load_finetuned(cfg: DictConfig, ds, run, task: Task) -> Recommender:
    """The best checkpoint of the finetune run ``run`` (``evaluate.checkpoint``), rebuilt with the
    run's own model, LLM and text-table settings, on ``ds``; every mismatch is one clear error."""
    run, meta = checkpoint_meta(cfg, run)
    where, weights = f"evaluate.checkpoint={run}", run / "best" / "model.safetensors"
    if (meta["num_videos"], meta["num_comments"]) != (ds.num_videos, ds.num_comments):
        raise ConfigError(f"{where}: trained on {meta['num_videos']} videos and {meta['num_comments']} comments "
                          f"({meta['dataset']}); data={cfg.data.name} has {ds.num_videos} videos and "
                          f"{ds.num_comments} comments ({ds.root})")
    run_cfg = copy.deepcopy(cfg)
    OmegaConf.set_struct(run_cfg, False)  # the run's finetune: node has keys this stage's has not
    model = build_recommender(OmegaConf.merge(run_cfg, meta["config"]), ds, task)
    try:
        model.load_state_dict(load_file(weights))
    except RuntimeError as e:
        raise ConfigError(f"{where}: {weights.name} does not fit its own config ({str(e).splitlines()[0]})") from None
    log.info("evaluating the best checkpoint of %s (epoch %s)", run,
             json.loads((run / "metrics.json").read_text()).get("best_epoch") if (run / "metrics.json").exists() else "?")
    return model.eval()


def _accelerator(cfg: DictConfig) -> Accelerator:
    # The SR's modules of the other task (rec: comment stream and query attention; comm_rank: video
    # stream and pooling) never get a gradient, which DDP's reducer only tolerates when told to look
    # for unused parameters (an autograd-graph walk per step, small next to the SR's forward).
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return distributed.accelerator(cfg.hardware, kwargs_handlers=[ddp])


def _prepare(accelerator: Accelerator, model: Recommender, opt):
    """``accelerator.prepare`` (DDP with several processes) without syncing the frozen text tables.

    Every rank loaded the same tables from disk; DDP would otherwise broadcast them from rank 0 when
    wrapping and again before every forward (``broadcast_buffers``): gigabytes per step at 16 M comments.
    """
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, [name for name, _ in model.named_buffers() if name in ("video_table", "comment_table")])
    return accelerator.prepare(model, opt)


def _optimizer(cfg: DictConfig, model: torch.nn.Module, total_steps: int):
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))
    sched = get_scheduler(o.scheduler, opt, num_warmup_steps=int(o.warmup_ratio * total_steps),
                          num_training_steps=total_steps)
    return opt, sched


class _State:
    """Counters that make a run resumable: next epoch, best score and where, evaluations without gain."""

    def __init__(self, epoch=0, step=0, best=-math.inf, best_epoch=-1, bad=0):
        self.epoch, self.step, self.best, self.best_epoch, self.bad = epoch, step, best, best_epoch, bad

    def as_dict(self) -> dict:
        return dict(vars(self))


def _save(dir_: Path, model: Recommender, opt=None, sched=None, state: _State | None = None) -> None:
    if not is_rank_zero():
        return
    dir_.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, dir_ / "model.safetensors")
    if opt is not None:
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, dir_ / "trainer.pt")
        (dir_ / "state.json").write_text(json.dumps(state.as_dict()))


def _resume(path: Path, model: Recommender, opt, sched) -> _State:
    last = path / "last"
    if not (last / "state.json").exists():
        raise ConfigError(f"finetune.resume={path}: no {last / 'state.json'} (not a finetune run, or it saved no epoch)")
    model.load_state_dict(load_file(last / "model.safetensors"))
    trainer = torch.load(last / "trainer.pt", weights_only=True)
    opt.load_state_dict(trainer["optimizer"])
    sched.load_state_dict(trainer["scheduler"])
    state = _State(**json.loads((last / "state.json").read_text()))
    log.info("resumed %s at epoch %d (best %.4f at epoch %d)", path, state.epoch, state.best, state.best_epoch)
    return state


def _monitor(cfg: DictConfig, val: dict) -> float:
    protocol, _, metric = cfg.finetune.monitor.rpartition("/")
    if protocol not in val or metric not in val[protocol]:
        raise ConfigError(f"finetune.monitor={cfg.finetune.monitor}: expected <protocol>/<metric> with protocol "
                          f"in {list(val)} and metric in {list(next(iter(val.values())))}")
    return float(val[protocol][metric])


def _loss(cfg: DictConfig, task: Task, sr, train_on: str) -> FinetuneLoss:
    """The objective of ``finetune``: the task's loss, plus the ID-text contrast where ``sr`` has
    both ID and text embeddings (``finetune.id_text_loss_weight`` is not applied otherwise)."""
    f = cfg.finetune
    if f.id_text_loss_weight and not sr.has_id_text:
        log.info("finetune.id_text_loss_weight=%s not applied: model/sr=%s has no ID and text embeddings of a "
                 "video to contrast", f.id_text_loss_weight, cfg.model.sr.name)
    return FinetuneLoss(task.task_loss(train_on), f.id_text_loss_weight, f.id_text_negatives)


def _train_epoch(model, loss_fn: FinetuneLoss, batches, opt, sched, accelerator, cfg, state: _State, logger) -> float:
    model.train()
    # the ID-text negatives: per epoch and per rank (rank 0 draws what a one-process run draws)
    seed = cfg.seed * 1000 + state.epoch + _RANK_STRIDE * accelerator.process_index
    generator = torch.Generator(device=accelerator.device).manual_seed(seed)
    total, n = 0.0, 0
    for batch in tqdm(batches, desc=f"epoch {state.epoch}", disable=not is_rank_zero(), leave=False):
        out = model(batch.to(accelerator.device), loss_fn, generator=generator)
        accelerator.backward(out["loss"])
        if cfg.finetune.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), cfg.finetune.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        state.step += 1
        total, n = total + out["loss"].item(), n + 1
        if state.step % 50 == 0:
            logger.log({f"train/{k}": v.item() for k, v in out.items()} | {"lr": sched.get_last_lr()[0]}, step=state.step)
    # every rank ran the same number of equal-sized steps, so the mean of the ranks' means is the
    # epoch's mean loss over all samples
    return accelerator.reduce(torch.tensor(total / max(n, 1), device=accelerator.device), "mean").item()


def _agreed(accelerator: Accelerator, score: float) -> float:
    """Rank 0's monitored value on every rank, so early stopping and checkpoint selection cannot
    diverge even where an all-reduce is not bitwise identical on every rank."""
    if accelerator.num_processes == 1:
        return score
    return broadcast_object_list([score], from_process=0)[0]


def run(cfg: DictConfig) -> float:
    path = run_dir(cfg)
    torch.manual_seed(cfg.seed)
    ds = load_dataset(cfg)
    f, task = cfg.finetune, build_task(cfg.task)
    model = build_recommender(cfg, ds, task)
    accelerator = _accelerator(cfg)
    spec = _train_spec(cfg, accelerator)
    loss_fn = _loss(cfg, task, model.sr, spec.train_on)
    gatherer = HistoryGatherer(ds, cfg.data.max_phis_len, cfg.data.max_chis_len)
    batches = task.train_batches(ds, gatherer, model.sr, spec, cfg.model.sr.name)
    opt, sched = _optimizer(cfg, model, f.epochs * len(batches))
    state = _State()
    if f.get("resume"):
        state = _resume(Path(f.resume), model, opt, sched)
        if is_rank_zero() and (Path(f.resume) / "best").exists():
            shutil.copytree(Path(f.resume) / "best", path / "best", dirs_exist_ok=True)
    model, opt = _prepare(accelerator, model, opt)
    core: Recommender = accelerator.unwrap_model(model)
    evaluator = Evaluator(ds, gatherer, task, eval_config(cfg), accelerator.device)
    logger = start_logger(cfg, path)
    _write_checkpoint_meta(path, cfg, ds)
    log.info("fine-tuning %s on %s: %d train samples, %d steps/epoch, %d parameters", cfg.model.sr.name, task.name,
             len(ds.samples(task.name, "train")), len(batches), sum(p.numel() for p in core.parameters() if p.requires_grad))
    if f.eval_initial and state.epoch == 0:
        core.eval()
        logger.log({"epoch": -1, **_flat("val", evaluator.evaluate(core, "val"))}, step=0)
    t0 = time.perf_counter()
    while state.epoch < f.epochs and state.bad < f.patience:
        batches.set_epoch(state.epoch)
        # dropout: the same per epoch, resumed or not; independent masks on each rank
        torch.manual_seed(cfg.seed + state.epoch + _RANK_STRIDE * accelerator.process_index)
        loss = _train_epoch(model, loss_fn, batches, opt, sched, accelerator, cfg, state, logger)
        core.eval()
        val = evaluator.evaluate(core, "val")  # sharded; metric sums all-reduced over the ranks
        score = _agreed(accelerator, _monitor(cfg, val))
        improved = score > state.best
        if improved:
            state.best, state.best_epoch, state.bad = score, state.epoch, 0
            _save(path / "best", core)
        else:
            state.bad += 1
        log.info("epoch %d: train loss %.4f, val %s %.4f%s", state.epoch, loss, f.monitor, score, " (best)" if improved else "")
        logger.log({"epoch": state.epoch, "train/epoch_loss": loss, **_flat("val", val)}, step=state.step)
        state.epoch += 1
        _save(path / "last", core, opt, sched, state)
    if state.best_epoch < 0:  # validation never produced a number (e.g. no val samples)
        _save(path / "best", core)
    accelerator.wait_for_everyone()  # rank 0 has written best/ before any rank reads it
    core.load_state_dict(load_file(path / "best" / "model.safetensors"))
    core.eval()
    results = {split: evaluator.evaluate(core, split) for split in cfg.eval.splits}
    summary = {"task": task.name, "model": cfg.model.sr.name, "best_epoch": state.best_epoch, "monitor": f.monitor,
               "best_val": state.best, "epochs_run": state.epoch, "train_seconds": round(time.perf_counter() - t0, 1),
               "results": results}
    write_json(path / "metrics.json", summary)
    logger.log(_flat("best", {f"{s}/{p}": m for s, r in results.items() for p, m in r.items()}), step=state.step)
    logger.finish()
    rows = {f"{cfg.model.sr.name} {s}/{p}": m for s, r in results.items() for p, m in r.items()}
    log.info("%s metrics, best epoch %d (%s):\n%s", task.name, state.best_epoch, path, format_table(rows))
    return state.best


def _flat(prefix: str, nested: dict) -> dict:
    return {f"{prefix}/{k}/{m}": v for k, d in nested.items() for m, v in d.items()}
