"""stage=finetune: train an SR for one task with Accelerate, select on validation, test the best.

    lsvcr stage=finetune task=rec model/sr=lsvcr
    lsvcr stage=finetune task=comm_rank model/sr=lsvcr
    lsvcr stage=finetune task=rec model/sr=sasrec
    lsvcr stage=finetune task=rec init_from=<align run>      # the aligned SR
    lsvcr stage=finetune hardware=cpu_ddp hardware.nproc_per_node=2   # several processes

:class:`FinetuneRecipe` runs it in the torchtune manner: ``setup`` (data, task, model, optimizer,
resume), ``train`` (epochs, validation, early stopping), ``evaluate`` (the best weights on
``eval.splits``), ``save`` (``metrics.json``) and ``cleanup``. The run directory's checkpoints
(``checkpoint.json``, ``best/``, ``last/`` for ``finetune.resume``) are
:mod:`lsvcr.pipelines.checkpoint`'s.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list
from omegaconf import DictConfig
from tqdm.auto import tqdm
from transformers import get_scheduler

from lsvcr import distributed
from lsvcr.data.history import HistoryGatherer
from lsvcr.errors import ConfigError
from lsvcr.losses.recommend import FinetuneLoss
from lsvcr.metrics.evaluator import Evaluator, format_table
from lsvcr.models.recommender import Recommender
from lsvcr.pipelines.checkpoint import Checkpointer, EarlyStopper, Progress, build_recommender, write_checkpoint_meta
from lsvcr.pipelines.common import eval_config, load_dataset, run_dir, start_logger, write_json
from lsvcr.tasks import Task, TrainSpec, build_task
from lsvcr.utils.loggers import is_rank_zero

log = logging.getLogger("lsvcr")
# seed offset between ranks' random streams (dropout, ID-text negatives): a prime, far above any epoch count
_RANK_STRIDE = 1_000_003


def _train_spec(cfg: DictConfig, accelerator: Accelerator) -> TrainSpec:
    f = cfg.finetune
    return TrainSpec(batch_size=f.batch_size, seed=cfg.seed, train_on=f.get("train_on", "samples"),
                     rank=accelerator.process_index, world=accelerator.num_processes, max_len=cfg.data.max_phis_len,
                     sequence_stride=f.get("sequence_stride"))


def _accelerator(cfg: DictConfig) -> Accelerator:
    # The SR's modules of the other task (rec: comment stream and query attention; comm_rank: video
    # stream and pooling) never get a gradient, which DDP's reducer only tolerates when told to look
    # for unused parameters (an autograd-graph walk per step, small next to the SR's forward).
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return distributed.accelerator(cfg.hardware, kwargs_handlers=[ddp])


# finetune.tables_on: where the frozen text tables are read from
_TABLES_ON = ("host", "device")


def _tables_on(cfg: DictConfig) -> str:
    value = cfg.finetune.get("tables_on", "host")
    if value not in _TABLES_ON:
        raise ConfigError(f"finetune.tables_on={value}: expected one of {', '.join(_TABLES_ON)}")
    return value


def _optimizer(cfg: DictConfig, model: torch.nn.Module, total_steps: int):
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))
    sched = get_scheduler(o.scheduler, opt, num_warmup_steps=int(o.warmup_ratio * total_steps),
                          num_training_steps=total_steps)
    return opt, sched


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


def _agreed(accelerator: Accelerator, score: float) -> float:
    """Rank 0's monitored value on every rank, so early stopping and checkpoint selection cannot
    diverge even where an all-reduce is not bitwise identical on every rank."""
    if accelerator.num_processes == 1:
        return score
    return broadcast_object_list([score], from_process=0)[0]


class FinetuneRecipe:
    """One fine-tuning run of ``cfg``: :meth:`setup`, :meth:`train`, :meth:`evaluate`, :meth:`save`,
    :meth:`cleanup` (:func:`run` calls them in that order)."""

    def __init__(self, cfg: DictConfig):
        self.cfg, self.path = cfg, run_dir(cfg)
        self.checkpointer = Checkpointer(self.path)
        self.stopper = EarlyStopper(patience=cfg.finetune.patience)
        self.progress = Progress()
        self.logger = None

    def setup(self) -> None:
        """The dataset, task, model with its text tables, batches, loss, optimizer and schedule, the
        evaluator and logger; a resumed run's weights, optimizer state and counters."""
        cfg, f = self.cfg, self.cfg.finetune
        _tables_on(cfg)  # a bad value fails before any work
        torch.manual_seed(cfg.seed)
        ds = self.ds = load_dataset(cfg)
        task = self.task = build_task(cfg.task)
        model = build_recommender(cfg, ds, task)
        accelerator = self.accelerator = _accelerator(cfg)
        spec = _train_spec(cfg, accelerator)
        self.loss_fn = _loss(cfg, task, model.sr, spec.train_on)
        gatherer = HistoryGatherer(ds, cfg.data.max_phis_len, cfg.data.max_chis_len)
        self.batches = task.train_batches(ds, gatherer, model.sr, spec, cfg.model.sr.name)
        self.opt, self.sched = _optimizer(cfg, model, f.epochs * len(self.batches))
        if f.get("resume"):
            self.progress = self.checkpointer.resume(Path(f.resume), model, self.opt, self.sched, self.stopper)
        # the text tables are no buffers: DDP neither broadcasts nor syncs them, and they stay
        # memory-mapped in host memory unless finetune.tables_on=device copies them over
        self.model, self.opt = accelerator.prepare(model, self.opt)
        self.core: Recommender = accelerator.unwrap_model(self.model)
        if _tables_on(cfg) == "device":
            self.core.place_tables(accelerator.device)
        self.evaluator = Evaluator(ds, gatherer, task, eval_config(cfg), accelerator.device)
        self.logger = start_logger(cfg, self.path)
        write_checkpoint_meta(self.path, cfg, ds)
        log.info("fine-tuning %s on %s: %d train samples, %d steps/epoch, %d parameters", cfg.model.sr.name, task.name,
                 len(ds.samples(task.name, "train")), len(self.batches),
                 sum(p.numel() for p in self.core.parameters() if p.requires_grad))

    def train(self) -> None:
        """Epochs until ``finetune.epochs`` or ``finetune.patience`` evaluations without a gain; the
        best epoch's weights go to ``best/``, every epoch's state to ``last/``."""
        cfg, f, progress, stopper = self.cfg, self.cfg.finetune, self.progress, self.stopper
        if f.eval_initial and progress.epoch == 0:
            self.core.eval()
            self.logger.log({"epoch": -1, **_flat("val", self.evaluator.evaluate(self.core, "val"))}, step=0)
        t0 = time.perf_counter()
        while progress.epoch < f.epochs and not stopper.stopped:
            self.batches.set_epoch(progress.epoch)
            # dropout: the same per epoch, resumed or not; independent masks on each rank
            torch.manual_seed(cfg.seed + progress.epoch + _RANK_STRIDE * self.accelerator.process_index)
            loss = self._train_epoch()
            self.core.eval()
            val = self.evaluator.evaluate(self.core, "val")  # sharded; metric sums all-reduced over the ranks
            score = _agreed(self.accelerator, _monitor(cfg, val))
            improved = stopper.update(score, progress.epoch)
            if improved:
                self.checkpointer.save_best(self.core)
            log.info("epoch %d: train loss %.4f, val %s %.4f%s", progress.epoch, loss, f.monitor, score,
                     " (best)" if improved else "")
            self.logger.log({"epoch": progress.epoch, "train/epoch_loss": loss, **_flat("val", val)}, step=progress.step)
            progress.epoch += 1
            self.checkpointer.save_last(self.core, self.opt, self.sched, progress, stopper)
        if not stopper.selected:  # validation never produced a number (e.g. no val samples)
            self.checkpointer.save_best(self.core)
        self.train_seconds = time.perf_counter() - t0

    def _train_epoch(self) -> float:
        """One pass over the batches; the epoch's mean loss over all ranks."""
        model, accelerator, progress, f = self.model, self.accelerator, self.progress, self.cfg.finetune
        model.train()
        # the ID-text negatives: per epoch and per rank (rank 0 draws what a one-process run draws)
        seed = self.cfg.seed * 1000 + progress.epoch + _RANK_STRIDE * accelerator.process_index
        generator = torch.Generator(device=accelerator.device).manual_seed(seed)
        total, n = 0.0, 0
        for batch in tqdm(self.batches, desc=f"epoch {progress.epoch}", disable=not is_rank_zero(), leave=False):
            out = model(batch.to(accelerator.device), self.loss_fn, generator=generator)
            accelerator.backward(out["loss"])
            if f.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), f.max_grad_norm)
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            progress.step += 1
            total, n = total + out["loss"].item(), n + 1
            if progress.step % 50 == 0:
                self.logger.log({f"train/{k}": v.item() for k, v in out.items()} | {"lr": self.sched.get_last_lr()[0]},
                                step=progress.step)
        # every rank ran the same number of equal-sized steps, so the mean of the ranks' means is the
        # epoch's mean loss over all samples
        return accelerator.reduce(torch.tensor(total / max(n, 1), device=accelerator.device), "mean").item()

    def evaluate(self) -> dict:
        """The best weights on every split of ``eval.splits``: ``{split: {protocol: metrics}}``."""
        self.accelerator.wait_for_everyone()  # rank 0 has written best/ before any rank reads it
        self.checkpointer.load_best(self.core)
        self.core.eval()
        return {split: self.evaluator.evaluate(self.core, split) for split in self.cfg.eval.splits}

    def save(self, results: dict) -> None:
        """``metrics.json``, the logger's final metrics and the results table in the log."""
        cfg, stopper, name = self.cfg, self.stopper, self.cfg.model.sr.name
        summary = {"task": self.task.name, "model": name, "best_epoch": stopper.best_epoch,
                   "monitor": cfg.finetune.monitor, "best_val": stopper.best, "epochs_run": self.progress.epoch,
                   "train_seconds": round(self.train_seconds, 1), "results": results}
        write_json(self.path / "metrics.json", summary)
        self.logger.log(_flat("best", {f"{s}/{p}": m for s, r in results.items() for p, m in r.items()}),
                        step=self.progress.step)
        rows = {f"{name} {s}/{p}": m for s, r in results.items() for p, m in r.items()}
        log.info("%s metrics, best epoch %d (%s):\n%s", self.task.name, stopper.best_epoch, self.path, format_table(rows))

    def cleanup(self) -> None:
        if self.logger is not None:
            self.logger.finish()
            self.logger = None


def run(cfg: DictConfig) -> float:
    """``stage=finetune``; returns the best validation score (the value a Hydra sweeper optimises)."""
    recipe = FinetuneRecipe(cfg)
    try:
        recipe.setup()
        recipe.train()
        recipe.save(recipe.evaluate())
    finally:
        recipe.cleanup()
    return recipe.stopper.best

def _flat(prefix: str, nested: dict) -> dict:
    return {f"{prefix}/{k}/{m}": v for k, d in nested.items() for m, v in d.items()}
