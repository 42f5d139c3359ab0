"""The training engines of ``stage=align``: what the loop asks of the code that runs a step.

:class:`Engine` is one micro-step (forward, backward and, at the end of an accumulation window, the
optimizer and scheduler steps), the learning rate, the gradient norm, the device and rank, an
average over ranks for logging, the bare module (gathered under ZeRO-3) and checkpoint state.
Two implementations:

- :class:`AccelerateEngine`: one process or DDP (torchrun, ``accelerate launch``);
- :class:`DeepSpeedEngine`: ``deepspeed.initialize`` with the ``hardware.deepspeed`` JSON (ZeRO-2/3),
  called directly rather than through Accelerate, which drops DeepSpeed on the CPU; so one DeepSpeed
  path serves CUDA and the CPU (``DS_ACCELERATOR=cpu``, gloo), and the CPU tests cover what GPU runs
  execute: only the device, the precision and the Adam kernel differ.

Both step the scheduler once per optimizer step and compute the same losses (tests/pipelines/test_deepspeed.py);
:meth:`Engine.evaluating` and :meth:`Engine.eval_step` run the held-out evaluation (forward only).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from transformers import get_scheduler

from lsvcr import distributed
from lsvcr.errors import ConfigError
from lsvcr.losses.align import AlignmentLoss
from lsvcr.models.align import AlignmentModel
from lsvcr.pipelines.common import write_json
from lsvcr.utils.deepspeed_config import TrainingNumbers, fill_auto
from lsvcr.utils.loggers import is_rank_zero

log = logging.getLogger("lsvcr")


@dataclass
class Plan:
    """Batch arithmetic of a run; a resumed run must have the same ``samples_per_step``."""

    micro_batch_size: int
    grad_accum: int
    world: int
    samples: int
    steps_per_epoch: int
    total_steps: int

    @property
    def samples_per_step(self) -> int:
        return self.micro_batch_size * self.grad_accum * self.world

TRAINER_FILE, DS_DIR = "trainer.pt", "deepspeed"  # a checkpoint's optimizer state: Accelerate's file, DeepSpeed's dir


def _numbers(cfg: DictConfig, plan: Plan, hidden_size: int) -> TrainingNumbers:
    a = cfg.align
    return TrainingNumbers(micro_batch_size=plan.micro_batch_size, grad_accum=plan.grad_accum, world_size=plan.world,
                           precision=cfg.hardware.precision, lr=float(a.lr), weight_decay=float(a.weight_decay),
                           betas=tuple(a.betas), eps=float(a.eps), grad_clip=float(a.max_grad_norm or 0.0),
                           warmup_steps=_warmup(cfg, plan), total_steps=plan.total_steps, hidden_size=hidden_size,
                           accelerator=cfg.hardware.accelerator)


def _warmup(cfg: DictConfig, plan: Plan) -> int:
    return math.ceil(float(cfg.align.warmup_ratio) * plan.total_steps)


def _schedule(cfg: DictConfig, plan: Plan, opt: torch.optim.Optimizer):
    """``align.scheduler`` with warm-up, stepped once per optimizer step by the engine."""
    return get_scheduler(cfg.align.scheduler, opt, num_warmup_steps=_warmup(cfg, plan),
                         num_training_steps=plan.total_steps)


def _adamw(cfg: DictConfig, params: list) -> torch.optim.AdamW:
    a = cfg.align
    return torch.optim.AdamW(params, lr=float(a.lr), weight_decay=float(a.weight_decay), betas=tuple(a.betas),
                             eps=float(a.eps))


def lora_lr_scale(cfg: DictConfig) -> float:
    """``align.lora_lr_scale``, checked: a finite number >= 0."""
    value = cfg.align.get("lora_lr_scale", 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ConfigError(f"align.lora_lr_scale={value}: expected a number >= 0 (the LoRA weights' learning rate "
                          "is align.lr times it; 1 = the paper's single learning rate)")
    return float(value)


def param_groups(cfg: DictConfig, model: AlignmentModel) -> list[dict]:
    """The trainable parameters as optimizer groups. ``align.lora_lr_scale=1`` (the paper): one group,
    in the model's parameter order. Otherwise two: the SR, ``llm_emb_mlp`` and ``contrast_adapter`` at
    ``align.lr`` (group 0, whose rate is logged) and the LoRA weights at ``align.lr x align.lora_lr_scale``
    (group 1). The scheduler scales both alike, so their ratio holds through warm-up and decay. A
    checkpoint resumes only with the grouping it was written with (the optimizer state says so)."""
    scale = lora_lr_scale(cfg)
    lr = float(cfg.align.lr)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if scale == 1.0:
        return [{"params": trainable, "lr": lr}]
    lora_ids = {id(p) for p in model.llm.parameters() if p.requires_grad}
    return [{"params": [p for p in trainable if id(p) not in lora_ids], "lr": lr, "name": "modules"},
            {"params": [p for p in trainable if id(p) in lora_ids], "lr": lr * scale, "name": "lora"}]


class Engine:
    """What the training loop asks of the engine that runs it: :class:`AccelerateEngine` (one process, DDP)
    or :class:`DeepSpeedEngine` (ZeRO). ``model`` is the wrapped model, :meth:`module` the bare one."""

    name: str
    model: torch.nn.Module
    device: torch.device
    rank: int
    params: list[torch.nn.Parameter]  # the trainable ones
    grad_norm = None  # 2-norm of the gradients before clipping, at the last optimizer step (None: not known)
    objective = AlignmentLoss()  # the losses of a micro-batch, computed inside the wrapped model's forward

    def _anchor(self) -> torch.Tensor:
        """A zero built from every trainable parameter *before* the forward, added to the loss.

        The model's graph depends on the data: a micro-batch without comment histories never
        reaches the SR comment encoder's attention weights. Data-parallel engines need every rank to
        hand over the same gradients in the same order: DDP's bucket never fills on the rank that
        lacks some (the ranks' collectives then mismatch: gloo aborts, NCCL hangs), and ZeRO-1/2
        reduce buckets in the order gradients arrive, interleaved with the all-reduces of the
        InfoNCE gathers in backward. With this term every parameter gets a gradient in every
        backward (exact zeros where the batch does not reach it, as ZeRO's flat partitions always
        had), and none before the term's own backward, which autograd runs last (its nodes are the
        oldest): all gradients arrive at the end of backward, in the term's fixed order on every
        rank. The cost: gradient reduction no longer overlaps backward.
        """
        return torch.stack([p.sum(dtype=torch.float32) for p in self.params]).sum() * 0.0  # fp32: no fp16 inf

    def micro_step(self, batch) -> tuple[dict, bool]:
        """Forward and backward of one micro-batch and, when it ends an accumulation window, the
        optimizer and scheduler steps; returns the model's outputs and whether a step was taken."""
        raise NotImplementedError

    @contextlib.contextmanager
    def evaluating(self):
        """A context for :meth:`eval_step`: eval mode (no dropout), no autograd graph, and afterwards
        the random number generators as they were and train mode again, so an evaluation between
        two optimizer steps leaves the training trajectory as it was. All ranks enter it together."""
        cuda = [self.device] if torch.device(self.device).type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            self.model.train(False)
            try:
                yield
            finally:
                self.model.train(True)

    def eval_step(self, batch) -> dict:
        """The model's outputs on one micro-batch, no backward (call inside :meth:`evaluating`). It
        runs the wrapped model, so mixed precision is that of training, and every rank must call it
        as often as the others: the losses gather their in-batch negatives from all ranks."""
        return self.model(batch.to(self.device), self.objective)

    def lr(self) -> float:
        return float(self.sched.get_last_lr()[0])

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` averaged over the ranks (for logging)."""
        world = distributed.rank_and_world()[1]
        if world > 1:
            dist.all_reduce(values)
            values /= world
        return values

    def module(self) -> AlignmentModel:
        raise NotImplementedError

    def gathered(self):
        """A context in which :meth:`module` holds whole weights (all ranks enter it)."""
        return contextlib.nullcontext()

    def save_trainer(self, path: Path) -> None:
        """Optimizer and scheduler state into checkpoint ``path`` (every rank calls)."""
        raise NotImplementedError

    def load_trainer(self, path: Path) -> None:
        raise NotImplementedError


class AccelerateEngine(Engine):
    """One process or DDP (torchrun, ``accelerate launch``): AdamW and the scheduler built here; the
    scheduler is stepped by hand, once per optimizer step (a prepared one steps ``world`` times)."""

    name = "Accelerate"

    def __init__(self, cfg: DictConfig, plan: Plan, model: AlignmentModel):
        self.acc = distributed.accelerator(cfg.hardware, gradient_accumulation_steps=plan.grad_accum)
        groups = param_groups(cfg, model)
        self.params = [p for g in groups for p in g["params"]]
        self.clip = float(cfg.align.max_grad_norm or 0.0)
        opt = _adamw(cfg, groups)
        self.sched = _schedule(cfg, plan, opt)
        self.model, self.opt = self.acc.prepare(model, opt)
        self.device, self.rank = self.acc.device, self.acc.process_index

    def micro_step(self, batch) -> tuple[dict, bool]:
        acc = self.acc
        anchor = self._anchor()
        with acc.accumulate(self.model):
            out = self.model(batch.to(self.device), self.objective)
            acc.backward(out["loss"] + anchor)
            if acc.sync_gradients and self.clip:
                self.grad_norm = acc.clip_grad_norm_(self.params, self.clip)
            self.opt.step()
            if acc.sync_gradients and not acc.optimizer_step_was_skipped:
                self.sched.step()
            self.opt.zero_grad(set_to_none=True)
        return out, acc.sync_gradients

    def module(self) -> AlignmentModel:
        return self.acc.unwrap_model(self.model)

    def save_trainer(self, path: Path) -> None:
        if is_rank_zero():
            torch.save({"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict()}, path / TRAINER_FILE)

    def load_trainer(self, path: Path) -> None:
        trainer = torch.load(path / TRAINER_FILE, weights_only=True, map_location="cpu")
        try:
            self.opt.load_state_dict(trainer["optimizer"])
        except ValueError as e:  # torch: "loaded state dict has a different number of parameter groups", ...
            raise ConfigError(f"align.resume={path}: its optimizer state does not fit this run ({e}); resume with "
                              "the align.lora_lr_scale it was written with (1 = one group, otherwise two)") from None
        self.sched.load_state_dict(trainer["scheduler"])


class DeepSpeedEngine(Engine):
    """``deepspeed.initialize`` with the filled ``hardware.deepspeed`` JSON: the same code on CUDA and on
    the CPU (``DS_ACCELERATOR=cpu``, gloo); only the device, the precision and the Adam kernel differ.

    The JSON's ``optimizer`` block has DeepSpeed build the optimizer (``torch_adam`` picks torch's AdamW
    on the CPU and DeepSpeed's fused Adam on CUDA, see ``conf/hardware/deepspeed_z2.yaml``); without
    one, torch's AdamW is built here. DeepSpeed clips (``gradient_clipping``), steps the optimizer at
    accumulation boundaries and the scheduler (built by :func:`_schedule` on its optimizer) with it.
    """

    name = "DeepSpeed"

    def __init__(self, cfg: DictConfig, plan: Plan, model: AlignmentModel, config: dict):
        import deepspeed

        if cfg.hardware.accelerator == "cpu":
            _skip_shm_comm()
        groups = param_groups(cfg, model)
        self.params = [p for g in groups for p in g["params"]]
        if "scheduler" in config and lora_lr_scale(cfg) != 1.0:
            raise ConfigError(f"align.lora_lr_scale={lora_lr_scale(cfg)}: hardware.deepspeed has a scheduler block, "
                              "whose rates would replace both groups' rates; remove it (align.scheduler schedules "
                              "the run) or keep align.lora_lr_scale=1")
        client_opt = None if "optimizer" in config else _adamw(cfg, groups)
        self.model, _, _, self.sched = deepspeed.initialize(
            model=model, model_parameters=groups, optimizer=client_opt, config=config,
            lr_scheduler=lambda opt: _schedule(cfg, plan, opt))
        self.device, self.rank = self.model.device, self.model.global_rank

    def micro_step(self, batch) -> tuple[dict, bool]:
        engine = self.model
        boundary = engine.is_gradient_accumulation_boundary()  # before step(), which counts the micro-batch
        anchor = self._anchor()
        out = engine(batch.to(self.device), self.objective)
        engine.backward(out["loss"] + anchor)  # scaled by 1 / grad_accum, like Accelerate's
        engine.step()
        if boundary:
            self.grad_norm = engine.get_global_grad_norm()
        return out, boundary

    def eval_step(self, batch) -> dict:
        """DeepSpeed's forward counts no micro-step (``step()`` does) and, without autograd, hooks no
        backward: the accumulation window of the next training micro-batch is untouched. Checked,
        because a wrong count would silently shift every later optimizer step."""
        engine = self.model
        before = engine.micro_steps, engine.global_steps
        out = super().eval_step(batch)
        if (engine.micro_steps, engine.global_steps) != before:
            raise RuntimeError(f"DeepSpeed counted an evaluation forward as training: micro/global steps {before} -> "
                               f"{(engine.micro_steps, engine.global_steps)}")
        return out

    def _anchor(self) -> torch.Tensor:
        if self.model.zero_optimization_stage() == 3:  # sharded parameters; ZeRO-3 reduces from hooks of its own
            return torch.zeros((), device=self.device)
        return super()._anchor()

    def module(self) -> AlignmentModel:
        return self.model.module

    def gathered(self):
        """Under ZeRO-3 the weights are sharded: gather the trained ones while rank 0 saves them."""
        if self.model.zero_optimization_stage() != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters([p for p in self.module().parameters() if p.requires_grad])

    def save_trainer(self, path: Path) -> None:
        # the frozen base LLM is not saved: the checkpoint's own files and model/llm rebuild it
        self.model.save_checkpoint(str(path / DS_DIR), exclude_frozen_parameters=True)

    def load_trainer(self, path: Path) -> None:
        self.model.load_checkpoint(str(path / DS_DIR), load_module_strict=False)


def _skip_shm_comm() -> None:
    """Keep DeepSpeed's CPU communication backend from building its shared-memory all-reduce op.

    DeepSpeed's ``TorchBackend`` JIT-compiles ``deepspeed_shm_comm`` (C++, minutes) wherever a
    compiler is found, and under the ``deepspeed`` launcher (which exports ``LOCAL_SIZE``) each rank
    maps a 66 MB ``/dev/shm/deepspeed_allreduce_buffer_*`` file that is never unlinked. Only
    ``inference_all_reduce`` uses it; ZeRO training all-reduces through torch.distributed (gloo).
    Marking the op incompatible (``deepspeed.ops.__compatible_ops__`` is DeepSpeed's own cache,
    consulted by ``build_shm_op``) skips both.
    """
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def build_engine(cfg: DictConfig, plan: Plan, model: AlignmentModel, hidden_size: int, path: Path) -> Engine:
    hw = cfg.hardware
    if hw.launcher != "deepspeed":
        return AccelerateEngine(cfg, plan, model)
    config = fill_auto(OmegaConf.to_container(hw.deepspeed, resolve=True), _numbers(cfg, plan, hidden_size))
    write_json(path / "deepspeed_config.json", config)
    return DeepSpeedEngine(cfg, plan, model, config)
