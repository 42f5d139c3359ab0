"""stage=evaluate: score val/test with a baseline scorer, or a fine-tuned checkpoint, under both protocols.

    lsvcr stage=evaluate task=rec model/sr=popularity
    lsvcr stage=evaluate task=comm_rank model/sr=most_liked
    lsvcr stage=evaluate task=rec model/sr=lsvcr evaluate.checkpoint=<finetune run dir>
    lsvcr stage=evaluate task=rec model/sr=lsvcr evaluate.checkpoint=<run> eval.splits=[test] eval.protocols=[full]
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from lsvcr.data.history import HistoryGatherer
from lsvcr.errors import ConfigError
from lsvcr.metrics.evaluator import Evaluator, format_table
from lsvcr.pipelines.common import build, eval_config, load_dataset, run_dir, start_logger, write_json
from lsvcr.pipelines.checkpoint import checkpoint_meta, is_trainable, load_finetuned
from lsvcr.tasks import Task, build_task

log = logging.getLogger("lsvcr")


def run(cfg: DictConfig) -> float:
    path = run_dir(cfg)
    task = build_task(cfg.task)
    task.check_stage("evaluate", "stage=evaluate scores one task, rec or comm_rank")
    _check(cfg)  # a wrong checkpoint or model fails before any data is prepared
    ds = load_dataset(cfg)
    task.check_data(ds, cfg.data.name)
    scorer = _scorer(cfg, ds, task)
    gatherer = HistoryGatherer(ds, cfg.data.max_phis_len, cfg.data.max_chis_len)
    evaluator = Evaluator(ds, gatherer, task, eval_config(cfg))
    logger = start_logger(cfg, path)
    results, rows = {}, {}
    for split in cfg.eval.splits:
        results[split] = evaluator.evaluate(scorer, split)
        for protocol, m in results[split].items():
            rows[f"{cfg.model.sr.name} {split}/{protocol}"] = m
            logger.log({f"{split}/{protocol}/{k}": v for k, v in m.items()})
    logger.finish()
    write_json(path / "metrics.json", {"task": cfg.task.name, "model": cfg.model.sr.name, "results": results,
                                       "checkpoint": _checkpoint(cfg)})
    log.info("%s metrics (%s):\n%s", cfg.task.name, ds.root, format_table(rows))
    return _selection_metric(results)


def _checkpoint(cfg: DictConfig) -> str | None:
    # a node of this stage's config; the pipeline stage runs evaluate on its own config without it
    return OmegaConf.select(cfg, "evaluate.checkpoint", default=None)


def _check(cfg: DictConfig) -> None:
    if _checkpoint(cfg):
        checkpoint_meta(cfg, _checkpoint(cfg))
    elif is_trainable(cfg.model.sr):
        raise ConfigError(f"model/sr={cfg.model.sr.name} is trained by stage=finetune: evaluate its run with "
                          f"evaluate.checkpoint=<finetune run dir>")


def _scorer(cfg: DictConfig, ds, task: Task):
    """The fine-tuned model of ``evaluate.checkpoint``, or the baseline of ``model/sr`` fitted on train."""
    checkpoint = _checkpoint(cfg)
    return load_finetuned(cfg, ds, checkpoint, task) if checkpoint else build(cfg.model.sr).fit(ds)


def _selection_metric(results: dict) -> float:
    """The number a Hydra sweeper would optimise: the last split's full-ranking NDCG@10."""
    last = results[list(results)[-1]]
    return float(last.get("full", next(iter(last.values()))).get("ndcg@10", float("nan")))
