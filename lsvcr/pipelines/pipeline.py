"""stage=pipeline: the whole two-stage recipe in one command, in this process (DESIGN section 1).

    lsvcr stage=pipeline                                   # embedded world, tiny LLM, CPU: minutes
    lsvcr stage=pipeline data.num_users=5000 finetune.epochs=20
    lsvcr stage=pipeline model/llm=qwen2_5_0_5b hardware=gpu finetune.epochs=50 align.max_steps=null

Steps (each in ``<run dir>/<NN>_<step>/``, with the config it ran with in ``config.yaml``):
prepare the dataset (reused when prepared) -> popularity (rec) and most_liked (comm_rank) ->
text tables from the un-aligned LLM -> SASRec (rec) -> LSVCR without alignment (rec, comm_rank)
-> alignment (task=joint) -> text tables from the aligned LLM -> LSVCR aligned (rec, comm_rank).
It ends with ``summary.json`` and ``summary.md``: every model on both tasks under both protocols.

Each step is its stage's own ``run`` called with a copy of this config whose ``stage``, ``task``
and ``model.sr`` nodes are swapped for the step's (``pipeline.models.*`` / ``pipeline.tasks.*``,
composed by Hydra from the ``model/sr`` and ``task`` groups). The ``finetune`` / ``optim`` /
``align`` / ``embed`` nodes are the stages' own; ``conf/stage/pipeline.yaml`` gives them small
values for a CPU. Under a multi-process ``hardware`` every rank runs the same steps; only rank 0
writes the summary.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from lsvcr import distributed
from lsvcr.data.store import TASKS
from lsvcr.pipelines.common import load_dataset, run_dir, write_json
from lsvcr.tasks import TASK_CLASSES, RecTask
from lsvcr.utils.loggers import is_rank_zero

log = logging.getLogger("lsvcr")

STAGES = {name: f"lsvcr.pipelines.{name}.run" for name in ("evaluate", "embed", "finetune", "align")}
ROWS = {"baseline": "popularity / most_liked", "sasrec": "SASRec", "lsvcr": "LSVCR (un-aligned)",
        "lsvcr_aligned": "LSVCR (aligned)"}


@dataclass(frozen=True)
class Step:
    """One sub-run: ``stage`` on ``task`` with ``pipeline.models[model]``; ``row`` = its summary row."""

    name: str
    stage: str
    task: str = "rec"
    model: str = "lsvcr"
    aligned: bool = False  # starts from the alignment step's checkpoint (init_from)
    row: str | None = None


STEPS = (
    Step("evaluate_popularity", "evaluate", "rec", "popularity", row="baseline"),
    Step("evaluate_most_liked", "evaluate", "comm_rank", "most_liked", row="baseline"),
    Step("embed", "embed"),
    Step("finetune_sasrec_rec", "finetune", "rec", "sasrec", row="sasrec"),
    Step("finetune_lsvcr_rec", "finetune", "rec", row="lsvcr"),
    Step("finetune_lsvcr_comm_rank", "finetune", "comm_rank", row="lsvcr"),
    Step("align", "align", "joint"),
    Step("embed_aligned", "embed", aligned=True),
    Step("finetune_lsvcr_aligned_rec", "finetune", "rec", aligned=True, row="lsvcr_aligned"),
    Step("finetune_lsvcr_aligned_comm_rank", "finetune", "comm_rank", aligned=True, row="lsvcr_aligned"),
)
ALIGN_STEP = next(i for i, s in enumerate(STEPS) if s.stage == "align")


def step_dir(path: Path, index: int) -> Path:
    return path / f"{index + 1:02d}_{STEPS[index].name}"


def _base(cfg: DictConfig) -> DictConfig:
    """A plain copy of this config (no Hydra struct flag) with nothing to resume or start from."""
    base = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    base.init_from, base.finetune.resume, base.align.resume = None, None, None
    return base


def plan_steps(has_comments: bool) -> dict[int, str]:
    """Step index -> the task it runs on. A dataset without comment interactions (RecBole,
    MovieLens) runs the video side only: no step whose task ranks comments, alignment on task=rec."""
    steps = {}
    for i, s in enumerate(STEPS):
        if has_comments or not TASK_CLASSES[s.task].ranks_comments:
            steps[i] = s.task
        elif s.stage == "align":
            steps[i] = RecTask.name
    return steps


def derive(base: DictConfig, path: Path, index: int, task: str | None = None) -> DictConfig:
    """The config step ``index`` runs with (a copy; ``base`` is left as it is), on ``task``
    (default: the step's own)."""
    step, sub = STEPS[index], copy.deepcopy(base)
    sub.stage = {"name": step.stage, "_target_": STAGES[step.stage]}
    sub.task = base.pipeline.tasks[task or step.task]
    sub.model.sr = base.pipeline.models[step.model]
    sub.paths.run_dir = str(step_dir(path, index))
    sub.init_from = str(step_dir(path, ALIGN_STEP)) if step.aligned else None
    return sub


def run(cfg: DictConfig) -> dict:
    path = run_dir(cfg)
    t0 = time.perf_counter()
    ds = load_dataset(cfg)  # the recipe's "prepare" step: reused when this data config was prepared before
    steps = plan_steps(ds.manifest["counts"]["comment_interactions"] > 0)
    if len(steps) < len(STEPS):
        log.info("%s has no comment interactions: the comm_rank steps are skipped and alignment runs on task=rec",
                 ds.root)
    log.info("pipeline on %s: %d steps, outputs in %s", ds.root, len(steps), path)
    base, seconds = _base(cfg), {}
    for i, task in steps.items():
        step, sub = STEPS[i], derive(base, path, i, task)
        log.info("==== pipeline step %d/%d: %s (stage=%s task=%s model/sr=%s%s)", i + 1, len(STEPS), step.name,
                 step.stage, task, sub.model.sr.name, ", aligned" if step.aligned else "")
        if is_rank_zero():
            step_dir(path, i).mkdir(parents=True, exist_ok=True)
            OmegaConf.save(sub, step_dir(path, i) / "config.yaml", resolve=True)
        t = time.perf_counter()
        get_method(STAGES[step.stage])(sub)
        seconds[step.name] = round(time.perf_counter() - t, 1)
    distributed.barrier()
    return summarise(cfg, path, ds.root, seconds, time.perf_counter() - t0) if is_rank_zero() else {}


def summarise(cfg: DictConfig, path: Path, dataset: Path, seconds: dict, total: float) -> dict:
    """``summary.json`` / ``summary.md`` from the steps' ``metrics.json``; logs the table."""
    split, metrics = cfg.pipeline.split, list(cfg.pipeline.metrics)
    models: dict = {row: {"label": ROWS[row], **{t: None for t in TASKS}} for row in ROWS}
    for i, step in enumerate(STEPS):
        if step.row is None or step.name not in seconds:  # not a model row, or skipped (no comments)
            continue
        result = json.loads((step_dir(path, i) / "metrics.json").read_text())
        models[step.row][step.task] = {
            "model": result["model"], "run": step_dir(path, i).name,
            **{protocol: {m: values.get(m) for m in [*metrics, "count"]}
               for protocol, values in result["results"][split].items()},
        }
    summary = {"split": split, "metrics": metrics, "models": models, "seconds": seconds,
               "total_seconds": round(total, 1), "llm": cfg.model.llm.name, "dataset": str(dataset)}
    table = markdown(summary)
    write_json(path / "summary.json", summary)
    (path / "summary.md").write_text(table)
    steps = ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items())
    log.info("pipeline finished in %.0fs (%s)\n%s", total, steps, table)
    return summary


def markdown(summary: dict) -> str:
    """One table per task: a row per model, a column per protocol and metric; then the first
    metric on the cold and warm targets (``eval.cold_max_train_interactions``) with their counts."""
    protocols, metrics = ("sampled", "full"), summary["metrics"]
    slices = [f"{p}/{s}" for p in protocols for s in ("cold", "warm")]
    tables = [("", [(p, m) for p in protocols for m in metrics]),
              (f"{metrics[0]} on cold / warm targets", [(s, metrics[0]) for s in slices] + [(s, "count") for s in
                                                                                              slices[2:]])]
    out = [f"# LSVCR pipeline: {summary['split']} split, LLM {summary['llm']}", ""]
    for task in TASKS:
        for title, cols in tables:
            rows = [(key, row[task]) for key, row in summary["models"].items()]
            if title and not any(r and any(s in r for s, _ in cols) for _, r in rows):
                continue  # no slices were evaluated
            head = [f"{p} {m}" for p, m in cols]
            out += [f"## task={task}" + (f": {title}" if title else ""), "",
                    "| model | " + " | ".join(head) + " |", "|---" * (len(cols) + 1) + "|"]
            for key, r in rows:
                cells = [_cell(None if r is None else r.get(p, {}).get(m), m) for p, m in cols]
                name = r["model"] if key == "baseline" and r is not None else summary["models"][key]["label"]
                out.append(f"| {name} | " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out)


def _cell(value, metric: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{int(value)}" if metric == "count" else f"{value:.4f}"
