"""stage=align: the LoRA LLM and the SR trained together (DESIGN section 4). The later stages read
its checkpoints through :mod:`lsvcr.pipelines.handover` (``init_from``).

    lsvcr stage=align                                         # task=joint, tiny LLM, CPU
    lsvcr stage=align task=rec prompts=en model/llm=qwen2_5_0_5b hardware=gpu
    lsvcr stage=align hardware=deepspeed_z2 hardware.nproc_per_node=8 model/llm=chatglm3_6b \\
        align.micro_batch_size=2 align.grad_accum=8 align.max_steps=null          # the paper's run
    lsvcr stage=align hardware=deepspeed_z2 hardware.accelerator=cpu hardware.backend=gloo \\
        hardware.nproc_per_node=2 hardware.precision=fp32          # the same ZeRO-2 code on 2 CPU ranks
    lsvcr stage=align align.resume=<run dir or checkpoint dir>

Run directory: ``align/`` (final checkpoint: ``lora/``, ``modules.safetensors``, ``tokenizer/``,
``alignment.json``, ``config.yaml``, ``trainer_state.json`` and ``trainer.pt`` or ``deepspeed/``),
``align_step<N>/`` (the same every ``align.save_every`` steps), ``losses.json`` (the loss curve, with
in-batch top-1 accuracy and representation collapse: ``DIAGNOSTIC_KEYS``),
``align.json`` (summary), ``metrics.jsonl``, ``align_eval.jsonl`` and ``align_eval.md`` (the held-out
evaluations on val samples, :mod:`lsvcr.pipelines.align_eval`), and ``deepspeed_config.json`` under
DeepSpeed.

:class:`AlignRecipe` runs it in the torchtune manner, as ``stage=finetune`` does: ``setup`` (checks,
data, LLM, engine, resume, standardisers, held-out set), ``train`` (the loop, with held-out
evaluations and periodic checkpoints: :mod:`lsvcr.pipelines.align_checkpoint`), ``save`` (the final
checkpoint and ``align.json``) and ``cleanup``; its data side is :mod:`lsvcr.pipelines.align_data`.

Why an explicit loop and not the HF ``Trainer``: one step is a multi-part loss over a typed
batch (prompts + a batch-local text table + histories) whose InfoNCE terms gather negatives from
every rank, and every part is logged; the ``Trainer`` wants dict batches and one loss, and resuming
it exactly would mean re-implementing its data skipping. The loop talks to a small engine
(:mod:`lsvcr.pipelines.align_engine`): Accelerate for one process and DDP, ``deepspeed.initialize``
for ``hardware.launcher=deepspeed`` (ZeRO-2/3 from ``hardware.deepspeed``, written to
``deepspeed_config.json``), the same DeepSpeed code on CUDA and on the CPU.

Resuming is exact: the data order is a seeded permutation per epoch, every sample draws its
augmentation, template and random positions from a seed of (seed, epoch, position in the epoch's
order) and every micro-batch its dropout from (seed, epoch, micro-batch, rank), so a resumed run
starts at its step without replaying the batches before it and computes the same losses. Without
dropout the process count does not change a step either: 2 processes x micro-batch m compute what
1 process x 2m does.
"""

from __future__ import annotations

import contextlib
import logging
import math
import resource
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lsvcr import distributed
from lsvcr.data.align_batch import AlignCollator, AlignSamples
from lsvcr.errors import ConfigError, checked_bool, checked_int
from lsvcr.losses.align import DIAGNOSTIC_KEYS, LOSS_KEYS
from lsvcr.losses.warmup import LossWarmup
from lsvcr.models.align import AlignmentModel, load_alignment
from lsvcr.models.llm.loader import LLMBundle
from lsvcr.models.sr.lsvcr import LSVCR
from lsvcr.pipelines import align_eval
from lsvcr.pipelines.align_checkpoint import TrainState, load_trainer, resume_checkpoint, save_checkpoint
from lsvcr.pipelines.align_data import AlignEpoch, collator, plan_steps, seed_step, unbatched
from lsvcr.pipelines.align_engine import Engine, Plan, build_engine, lora_lr_scale
from lsvcr.pipelines.common import (
    check_max_position,
    load_dataset,
    require_comments,
    run_dir,
    sr_class,
    start_logger,
    write_json,
)
from lsvcr.pipelines.handover import CKPT_DIR
from lsvcr.pipelines.tables import llm_workdir
from lsvcr.tasks import build_task
from lsvcr.utils.loggers import is_rank_zero

log = logging.getLogger("lsvcr")


# ---------------------------------------------------------------- config -> parts


def _sr_config(cfg: DictConfig, num_videos: int) -> dict:
    """``model/sr`` as LSVCR keyword arguments (the alignment model forces no IDs, random positions)."""
    cls = sr_class(cfg.model.sr)
    if not (cls is not None and issubclass(cls, LSVCR)):
        raise ConfigError(f"model/sr={cfg.model.sr.name}: the alignment stage trains LSVCR's SR; use model/sr=lsvcr")
    check_max_position(cfg)
    sr = OmegaConf.to_container(cfg.model.sr, resolve=True)
    return {k: v for k, v in sr.items() if k not in ("name", "_target_")} | {"num_videos": num_videos}


def _check_causal(cfg: DictConfig) -> None:
    """Refuse an encoder-only ``model/llm`` before any data or weights are loaded (the builders load nothing)."""
    spec = instantiate(cfg.model.llm)
    if not getattr(spec, "causal", True):
        raise ConfigError(f"model/llm={cfg.model.llm.name} ({cfg.model.llm._target_}) is an encoder-only model: "
                          "stage=align trains a causal LM (prompts, next-token loss, LoRA); encoder-only models "
                          "serve stage=embed only (un-aligned text tables). Use a causal model/llm, e.g. tiny, "
                          "smollm2_135m or gemma3_270m")


def build_llm(cfg: DictConfig, ds) -> LLMBundle:
    """``model/llm`` on ``ds`` with the embed stage's tokenizer directory (one tokenizer for both)."""
    spec = instantiate(cfg.model.llm)
    with distributed.rank_zero_first():  # rank 0 trains and saves the tiny tokenizer; the others reload it
        return spec.build(ds.texts, llm_workdir(cfg, ds))


def _speed_settings(cfg: DictConfig) -> dict:
    """``align.text_bucket_tokens`` and ``align.text_table_refresh`` as :class:`AlignmentModel` keywords."""
    a = cfg.align
    return {"text_bucket_tokens": checked_int(a.get("text_bucket_tokens"), "align.text_bucket_tokens", 1,
                                              "a positive token budget or null"),
            "text_table_refresh": checked_int(a.get("text_table_refresh"), "align.text_table_refresh", 1,
                                              "a number of optimizer steps >= 1 or null")}


def _llm_stop_gradient(cfg: DictConfig) -> bool:
    return checked_bool(cfg.align.get("llm_stop_gradient", False), "align.llm_stop_gradient")


def _loss_warmup(cfg: DictConfig) -> LossWarmup | None:
    """``align.loss_warmup_steps``, ``align.temperature_start`` and ``align.contrast_warmup``, checked."""
    a = cfg.align
    steps = checked_int(a.get("loss_warmup_steps"), "align.loss_warmup_steps", 1,
                        "a number of optimizer steps >= 1 or null (no warm-up, the paper's)")
    start, ramp = a.get("temperature_start"), checked_bool(a.get("contrast_warmup", False), "align.contrast_warmup")
    if start is not None and (isinstance(start, bool) or not isinstance(start, (int, float))
                              or not math.isfinite(start) or start <= 0):
        raise ConfigError(f"align.temperature_start={start}: expected a temperature > 0 or null")
    if steps is None:
        if start is not None or ramp:
            raise ConfigError("align.temperature_start and align.contrast_warmup need align.loss_warmup_steps=N "
                              "(the optimizer steps they take to reach align.temperature and align.contrast_weight)")
        return None
    if start is None and not ramp:
        raise ConfigError(f"align.loss_warmup_steps={steps}: nothing to warm up; set align.temperature_start "
                          "(e.g. 1.0) and/or align.contrast_warmup=true")
    return LossWarmup(steps, float(a.temperature), float(a.contrast_weight),
                      None if start is None else float(start), ramp)


def _standardize_samples(cfg: DictConfig) -> int | None:
    return checked_int(cfg.align.get("standardize"), "align.standardize", 2,
                       "a number of training samples >= 2 or null (no standardisation, the paper's)")


def _model(cfg: DictConfig, bundle: LLMBundle, ds, ckpt: Path | None) -> AlignmentModel:
    a = cfg.align
    kwargs = dict(rec_weight=float(a.rec_weight), contrast_weight=float(a.contrast_weight),
                  temperature=float(a.temperature), llm_stop_gradient=_llm_stop_gradient(cfg), **_speed_settings(cfg))
    if ckpt is not None:  # a checkpoint keeps its standardisers (alignment.json "standardize")
        return load_alignment(ckpt, bundle, trainable=True, gradient_checkpointing=bundle.gradient_checkpointing,
                              **kwargs)
    torch.manual_seed(int(cfg.seed))  # the SR's, MLP's and adapter's initial weights
    return AlignmentModel.from_bundle(bundle, _sr_config(cfg, ds.num_videos),
                                      standardize=_standardize_samples(cfg) is not None, **kwargs)


def _fit_standardizers(cfg: DictConfig, n: int, engine: Engine, plan: Plan, items: np.ndarray,
                       collator: AlignCollator) -> None:
    """``align.standardize=n``: the standardisers' statistics from n training samples (a fixed seeded
    subset, rounded down to whole batches of micro-batch x processes; no augmentation), read by the
    base LLM before the first step: each process sums the moments of its share of the batches, and
    one all-reduce gives every process the same totals (so N processes equal one)."""
    batch = plan.micro_batch_size * plan.world
    chosen = align_eval.heldout_items(items, n, batch, int(cfg.seed))
    if len(chosen) == 0:
        raise ConfigError(f"align.standardize={n}: fewer samples than one batch ({batch} = align.micro_batch_size x "
                          f"{plan.world} processes)")
    t0 = time.perf_counter()
    share = align_eval.HeldOut(chosen, collator, plan.micro_batch_size, plan.world, engine.rank)
    total = None
    with engine.evaluating():
        for b in tqdm(share.batches(), desc="standardize", disable=not is_rank_zero()):
            moments = engine.model(b.to(engine.device), moments=True)
            total = moments if total is None else total + moments
    if plan.world > 1:
        torch.distributed.all_reduce(total)
    engine.module().fit_standardizers(total.cpu())
    log.info("align.standardize=%d: statistics of %d samples' prompts and %d text reads in %.1fs", n, len(chosen),
             int(total[1, -1]), time.perf_counter() - t0)


# ---------------------------------------------------------------- the recipe


class AlignRecipe:
    """One alignment run of ``cfg``: :meth:`setup`, :meth:`train`, :meth:`save`, :meth:`cleanup`
    (:func:`run` calls them in that order; the held-out evaluation, :meth:`evaluate`, runs inside
    :meth:`train` every ``align.eval_every`` steps and on the final weights)."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.logger = None
        self.eval_seconds = 0.0

    def setup(self) -> None:
        """Every setting checked before any work; then the data, LLM, model and engine, a resumed
        checkpoint's state, the standardisers' statistics and the held-out set."""
        cfg = self.cfg
        task = build_task(cfg.task)
        task.check_stage("align", "stage=align trains on task=joint, rec or comm_rank")
        tasks = self.tasks = list(task.sample_sets)
        self.eval_cfg = align_eval.eval_settings(cfg.align)  # bad align.eval_* keys fail before any work
        _speed_settings(cfg)  # so do bad align.text_bucket_tokens and align.text_table_refresh
        standardize = _standardize_samples(cfg)  # and align.standardize
        lora_lr_scale(cfg)  # and align.lora_lr_scale
        _llm_stop_gradient(cfg)  # and align.llm_stop_gradient
        self.warmup = _loss_warmup(cfg)  # and the warm-up keys
        _sr_config(cfg, 0)  # a wrong model/sr fails before any work
        _check_causal(cfg)  # so does an encoder-only model/llm
        path = self.path = run_dir(cfg)
        ds = load_dataset(cfg)  # rank 0 prepares a missing dataset first; the other ranks then read it
        require_comments(cfg, ds, task)
        bundle = self.bundle = build_llm(cfg, ds)
        self.workdir = llm_workdir(cfg, ds)
        self.items = AlignSamples(ds, tasks).items
        plan = self.plan = plan_steps(cfg, len(self.items), distributed.rank_and_world()[1])
        ckpt = resume_checkpoint(cfg.align.resume) if cfg.align.get("resume") else None
        engine = self.engine = build_engine(cfg, plan, _model(cfg, bundle, ds, ckpt), bundle.hidden_size, path)
        self.state = load_trainer(ckpt, engine, plan) if ckpt else TrainState(0, [], [])
        if ckpt is not None and engine.module().standardize != (standardize is not None):
            raise ConfigError(f"align.resume={ckpt}: it was written {'with' if engine.module().standardize else 'without'} "
                              f"standardisers, this run has align.standardize={standardize}; resume with the setting "
                              "it was written with")
        if ckpt is None and standardize is not None:
            _fit_standardizers(cfg, standardize, engine, plan, self.items, collator(cfg, ds, bundle.tokenizer, train=False))
        table = engine.module().text_table
        if ckpt and table is not None:
            try:
                table.load(ckpt)
            except (FileNotFoundError, ValueError) as e:
                raise ConfigError(f"align.resume: {e}") from None
        self.heldout = align_eval.build_heldout(self.eval_cfg, AlignSamples(ds, tasks, "val").items,
                                                collator(cfg, ds, bundle.tokenizer, split="val", train=False),
                                                plan.micro_batch_size, plan.world, engine.rank, int(cfg.seed), tasks)
        if self.heldout:
            align_eval.restart_file(path, self.state.evals)
        self.collator: AlignCollator = collator(cfg, ds, bundle.tokenizer)
        self.logger = start_logger(cfg, path)
        self._log_start()

    def _log_start(self) -> None:
        cfg, plan, state, warmup = self.cfg, self.plan, self.state, self.warmup
        if warmup is not None:
            log.info("loss warm-up over %d optimizer steps: temperature %g -> %g, contrast weight %g -> %g",
                     warmup.steps, warmup.at(0)[0], warmup.temperature, warmup.at(0)[1], warmup.contrast_weight)
        # ds_numel: a parameter's size when ZeRO-3 has sharded it away
        trainable = sum(getattr(p, "ds_numel", p.numel()) for p in self.engine.module().parameters() if p.requires_grad)
        log.info("aligning %s + %s on %s (%d samples): %d of %d optimizer steps (%d per epoch; align.max_steps=%s), "
                 "%d samples per step (%d x %d accumulation x %d processes), %d trainable parameters",
                 self.bundle.name, cfg.model.sr.name, "+".join(self.tasks), plan.samples, plan.total_steps - state.step,
                 plan.total_steps, plan.steps_per_epoch, cfg.align.max_steps, plan.samples_per_step,
                 plan.micro_batch_size, plan.grad_accum, plan.world, trainable)

    def final_losses(self):
        """The loss settings' final values inside the block (evaluation, saving) while a warm-up runs."""
        return self.warmup.final(self.engine.module()) if self.warmup else contextlib.nullcontext()

    def train(self) -> None:
        """Optimizer steps up to the plan's total, resumed where the state stands."""
        a, eng, plan, state = self.cfg.align, self.engine, self.plan, self.state
        self.start_step, t0 = state.step, time.perf_counter()
        window, count = defaultdict(float), 0
        bar = tqdm(total=plan.total_steps, initial=state.step, desc="align", disable=not is_rank_zero())
        eng.model.train()
        table = eng.module().text_table  # align.text_table_refresh; None = the paper's step
        if self.heldout and self.eval_cfg.initial and state.step == 0:
            self.evaluate()
        while state.step < plan.total_steps:
            epoch, done = divmod(state.step, plan.steps_per_epoch)
            data = AlignEpoch(self.items, self.collator, plan, eng.rank, int(self.cfg.seed), epoch)
            first = done * plan.grad_accum  # a resumed run starts at its step's first micro-batch
            loader = DataLoader(data, batch_size=None, sampler=range(first, len(data)), collate_fn=unbatched,
                                num_workers=int(a.num_workers))
            for micro, batch in zip(range(first, len(data)), loader):
                seed_step(int(self.cfg.seed), epoch, micro, eng.rank)
                if table is not None:
                    table.at_step(state.step)
                if self.warmup is not None:
                    self.warmup.apply(eng.module(), state.step)
                out, stepped = eng.micro_step(batch)
                for k in (*LOSS_KEYS, *DIAGNOSTIC_KEYS):
                    window[k] += float(out[k].detach())
                count += 1
                if not stepped:
                    continue
                state.step += 1
                bar.update(1)
                if state.step % int(a.log_every) == 0 or state.step == plan.total_steps:
                    entry = self._log_window(window, count, epoch)
                    bar.set_postfix(loss=f"{entry['loss']:.4f}")
                    window, count = defaultdict(float), 0
                if self.heldout and self.eval_cfg.every and state.step % self.eval_cfg.every == 0:
                    self.evaluate()
                if a.save_every and state.step % int(a.save_every) == 0 and state.step < plan.total_steps:
                    self.save_checkpoint(self.path / f"{CKPT_DIR}_step{state.step}")
                if state.step >= plan.total_steps:
                    break
        bar.close()
        if self.heldout and not (state.evals and state.evals[-1]["step"] == state.step):
            self.evaluate()  # the final weights are always evaluated
        self.seconds = time.perf_counter() - t0

    def _log_window(self, window: dict, count: int, epoch: int) -> dict:
        """Average the window's losses over its micro-batches and all ranks; log and record them."""
        keys = (*LOSS_KEYS, *DIAGNOSTIC_KEYS)
        means = torch.tensor([window[k] / max(count, 1) for k in keys], device=self.engine.device)
        means = self.engine.mean(means)
        entry = {"step": self.state.step, "epoch": epoch, "lr": self.engine.lr()}
        entry |= {k: round(float(v), 6) for k, v in zip(keys, means.tolist())}
        if self.engine.grad_norm is not None:
            entry["grad_norm"] = round(float(self.engine.grad_norm), 6)
        if self.warmup is not None:  # the values the window's last step trained with
            core = self.engine.module()
            entry |= {"temperature": round(core.temperature, 6), "contrast_weight": round(core.contrast_weight, 6)}
        self.state.losses.append(entry)
        self.logger.log({f"train/{k}" if k in keys else k: v for k, v in entry.items() if k != "step"},
                        step=self.state.step)
        log.info("step %d/%d: %s", self.state.step, self.plan.total_steps,
                 ", ".join(f"{k} {entry[k]:.4f}" for k in keys))
        return entry

    def evaluate(self) -> None:
        """A held-out evaluation at the current step (every rank; :mod:`lsvcr.pipelines.align_eval`)."""
        t0 = time.perf_counter()
        with self.final_losses():
            values = align_eval.evaluate(self.engine, self.heldout)
        entry = align_eval.record(values, self.state.step, self.plan.total_steps, self.heldout, self.eval_cfg,
                                  self.path, self.logger)
        self.state.evals.append(entry)
        self.eval_seconds += time.perf_counter() - t0

    def save_checkpoint(self, path: Path) -> None:
        with self.final_losses():
            save_checkpoint(path, self.engine, self.cfg, self.state, self.plan, self.workdir)

    def save(self) -> float:
        """The final checkpoint ``align/``, then ``align.json``, ``losses.json`` and the held-out table;
        returns the last logged loss (what a Hydra sweeper would minimise)."""
        self.save_checkpoint(self.path / CKPT_DIR)
        return _summarise(self, self.state.step - self.start_step, self.seconds)

    def cleanup(self) -> None:
        if self.logger is not None:
            self.logger.finish()
            self.logger = None


def run(cfg: DictConfig) -> float:
    """``stage=align``; returns the last logged loss."""
    recipe = AlignRecipe(cfg)
    try:
        recipe.setup()
        recipe.train()
        return recipe.save()
    finally:
        recipe.cleanup()


def _summarise(r: AlignRecipe, steps: int, seconds: float) -> float:
    """align.json, losses.json and the held-out table; ``seconds`` is the loop's wall time, evaluations
    included (``eval_seconds``), the rates are of training alone."""
    cuda = torch.cuda.is_available() and torch.device(r.engine.device).type == "cuda"
    train_seconds = max(seconds - r.eval_seconds, 1e-9)
    evals = r.state.evals
    summary = {
        "checkpoint": str(r.path / CKPT_DIR), "steps": steps, "total_steps": r.plan.total_steps,
        "seconds": round(seconds, 2), "eval_seconds": round(r.eval_seconds, 2),
        "steps_per_second": round(steps / train_seconds, 3),
        "samples_per_second": round(steps * r.plan.samples_per_step / train_seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
        "plan": asdict(r.plan), "final": r.state.losses[-1] if r.state.losses else None,
        # held-out evaluation: the last one, how many, and every val cosine above align.collapse_cosine
        "val": evals[-1] if evals else None, "evaluations": len(evals),
        "collapse_cosine": r.eval_cfg.collapse_cosine,
        "collapse": [c for e in evals for c in align_eval.collapses(e, r.eval_cfg.collapse_cosine)],
    }
    write_json(r.path / "losses.json", r.state.losses)
    write_json(r.path / "align.json", summary)
    if evals:
        align_eval.write_table(r.path, evals)
    log.info("aligned in %.1fs (%.1fs of it held-out evaluation): %d steps (%.2f steps/s, %.1f samples/s), "
             "peak RSS %.0f MB%s; checkpoint %s", seconds, r.eval_seconds, steps, summary["steps_per_second"],
             summary["samples_per_second"], summary["peak_rss_mb"],
             f", peak CUDA {summary['peak_cuda_mb']:.0f} MB" if cuda else "", summary["checkpoint"])
    return float(summary["final"]["loss"]) if summary["final"] else float("nan")
