"""stage=export: the deployable artifact of fine-tuned runs (:mod:`lsvcr.deploy.artifact`), no LLM.

    lsvcr stage=export export.rec=<finetune rec run> export.comm_rank=<finetune comm_rank run> \\
        export.dir=artifacts/lsvcr-v1

Each run is rebuilt from its own ``checkpoint.json`` on the dataset it was trained on (its best
weights, text tables and ``llm_emb_mlp``), exactly as ``stage=evaluate evaluate.checkpoint=<run>``
does; both runs must share one dataset. Writes ``export.json`` (where, which runs, the sizes) in
the run directory.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lsvcr.data.store import TASKS, PreparedDataset
from lsvcr.deploy.artifact import write_artifact
from lsvcr.errors import ConfigError
from lsvcr.pipelines.checkpoint import CHECKPOINT_META, load_finetuned
from lsvcr.pipelines.common import run_dir, write_json
from lsvcr.tasks import task_named

log = logging.getLogger("lsvcr")


def _meta(task: str, run: Path) -> dict:
    where = f"export.{task}={run}"
    if not (run / CHECKPOINT_META).is_file():
        raise ConfigError(f"{where}: not a finetune run directory (no {CHECKPOINT_META}); give a run directory "
                          "written by stage=finetune")
    meta = json.loads((run / CHECKPOINT_META).read_text())
    if meta.get("task") != task:
        raise ConfigError(f"{where}: it fine-tuned task={meta.get('task')}; give it as export.{meta.get('task')}")
    return meta


def run(cfg: DictConfig) -> dict:
    e = cfg.export
    runs = {task: Path(str(e[task])).expanduser().resolve() for task in TASKS if e.get(task)}
    if not runs:
        raise ConfigError("export.rec and export.comm_rank are null: give at least one finetune run directory")
    if not e.get("dir"):
        raise ConfigError("export.dir=null: give the artifact's directory")
    metas = {task: _meta(task, r) for task, r in runs.items()}
    roots = {m["dataset"] for m in metas.values()}
    if len(roots) > 1:
        raise ConfigError(f"export: the runs were trained on different datasets ({', '.join(sorted(roots))})")
    ds = PreparedDataset(roots.pop())
    models, sr_configs, history = {}, {}, None
    for task, r in runs.items():
        meta = metas[task]
        run_cfg = copy.deepcopy(cfg)
        OmegaConf.set_struct(run_cfg, False)
        run_cfg.task = {"name": task}
        run_cfg.model = meta["config"]["model"]
        lengths = meta.get("history") or {"max_phis_len": int(cfg.data.max_phis_len),
                                          "max_chis_len": int(cfg.data.max_chis_len)}
        if history is not None and lengths != history:
            raise ConfigError(f"export: the runs read histories of different lengths ({history} and {lengths})")
        history = lengths
        run_cfg.data.max_phis_len, run_cfg.data.max_chis_len = lengths["max_phis_len"], lengths["max_chis_len"]
        models[task] = load_finetuned(run_cfg, ds, r, task_named(task))
        sr_configs[task] = meta["config"]["model"]["sr"]
    out = write_artifact(e.dir, models, ds, sr_configs, history["max_phis_len"], history["max_chis_len"],
                         overwrite=bool(e.get("overwrite", False)))
    manifest = json.loads((out / "manifest.json").read_text())
    summary = {"dir": str(out.resolve()), "runs": {t: str(r) for t, r in runs.items()}, "tasks": manifest["tasks"],
               "files": len(manifest["files"]), "bytes": sum(f["bytes"] for f in manifest["files"].values())}
    write_json(run_dir(cfg) / "export.json", summary)
    log.info("exported %s (%s) to %s: %d files, %.1f MB", ", ".join(summary["tasks"]),
             ", ".join(f"{t}={r}" for t, r in runs.items()), summary["dir"], summary["files"], summary["bytes"] / 1e6)
    return summary
