"""stage=align's checkpoints: ``align/`` at the end and ``align_step<N>/`` every ``align.save_every``
steps, each resumable (``align.resume``): the alignment weights and tokenizer (what
:mod:`lsvcr.pipelines.handover` reads), ``config.yaml``, ``trainer_state.json`` (:class:`TrainState`
and the step plan) and the engine's optimizer state (``trainer.pt`` or ``deepspeed/``)."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lsvcr import distributed
from lsvcr.errors import ConfigError
from lsvcr.models.align import TOKENIZER_DIR, save_alignment
from lsvcr.models.llm.tokenizer import FINGERPRINT_FILE
from lsvcr.pipelines.align_engine import DS_DIR, AccelerateEngine, DeepSpeedEngine, Engine, Plan
from lsvcr.pipelines.handover import CKPT_DIR
from lsvcr.utils.loggers import is_rank_zero

log = logging.getLogger("lsvcr")

STATE_FILE = "trainer_state.json"


@dataclass
class TrainState:
    """Where an alignment run is, saved with each checkpoint."""

    step: int = 0
    losses: list | None = None  # one entry per logged step
    evals: list | None = None  # one entry per held-out evaluation


def save_checkpoint(path: Path, engine: Engine, cfg: DictConfig, state: TrainState, plan: Plan, workdir: Path) -> None:
    """A resumable checkpoint in ``path`` (every rank calls: DeepSpeed saves its shards collectively):
    the alignment weights, the tokenizer (with ``workdir``'s trained-tokenizer stamp), the resolved
    config, the :class:`TrainState` and plan, the text table when the run keeps one, and the engine's
    optimizer state."""
    core = engine.module()
    with engine.gathered():
        if is_rank_zero():
            save_alignment(core, path)
            stamp = workdir / "tokenizer" / FINGERPRINT_FILE  # marks a trained tiny tokenizer as loadable
            if stamp.exists():
                shutil.copy2(stamp, path / TOKENIZER_DIR / FINGERPRINT_FILE)
            (path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
            (path / STATE_FILE).write_text(json.dumps({**asdict(state), "plan": asdict(plan)}, indent=1))
            if core.text_table is not None:  # the same on every process (they exchange their rows)
                core.text_table.save(path)
    engine.save_trainer(path)
    distributed.barrier()


def _step_of(path: Path) -> int:
    return json.loads((path / STATE_FILE).read_text())["step"]


def resume_checkpoint(resume: str) -> Path:
    """``align.resume``: a checkpoint directory, or a run directory (its latest checkpoint)."""
    path = Path(str(resume)).expanduser().resolve()
    if (path / STATE_FILE).exists():
        return path
    found = [p for p in [path / CKPT_DIR, *path.glob(f"{CKPT_DIR}_step*")] if (p / STATE_FILE).exists()]
    if not found:
        raise ConfigError(f"align.resume={path}: no checkpoint ({STATE_FILE}) in it, in {CKPT_DIR}/ or in "
                          f"{CKPT_DIR}_step*/")
    return max(found, key=_step_of)


def load_trainer(ckpt: Path, engine: Engine, plan: Plan) -> TrainState:
    """The optimizer state and :class:`TrainState` of ``ckpt`` into ``engine``, checked against this run's ``plan``."""
    saved = json.loads((ckpt / STATE_FILE).read_text())
    old = Plan(**saved["plan"])
    if old.samples_per_step != plan.samples_per_step or old.samples != plan.samples:
        raise ConfigError(f"align.resume={ckpt}: it took {old.samples_per_step} of {old.samples} samples per step, "
                          f"this run {plan.samples_per_step} of {plan.samples}; resume with the same batch sizes, "
                          "processes and data")
    if old.total_steps != plan.total_steps:
        log.warning("align.resume=%s: it planned %d optimizer steps, this run %d (align.max_steps or align.epochs "
                    "changed): the learning-rate schedule is re-planned, so this run will not equal an "
                    "uninterrupted run of either length", ckpt, old.total_steps, plan.total_steps)
    saved_by = DeepSpeedEngine.name if (ckpt / DS_DIR).is_dir() else AccelerateEngine.name
    if saved_by != engine.name:
        raise ConfigError(f"align.resume={ckpt}: it was written under {saved_by}, this run uses {engine.name}; "
                          "resume with the hardware that wrote it")
    engine.load_trainer(ckpt)
    log.info("resumed %s at step %d of %d", ckpt, saved["step"], plan.total_steps)
    return TrainState(step=int(saved["step"]), losses=list(saved.get("losses") or []),
                      evals=list(saved.get("evals") or []))
