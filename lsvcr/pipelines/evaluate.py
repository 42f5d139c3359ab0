"""stage=evaluate: score val/test with a baseline scorer under both protocols.

    lsvcr stage=evaluate task=rec model/sr=popularity
    lsvcr stage=evaluate task=comm_rank model/sr=most_liked
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from lsvcr.data.history import HistoryGatherer
from lsvcr.metrics.evaluator import Evaluator, format_table
from lsvcr.pipelines.common import build, eval_config, load_dataset, run_dir, start_logger, write_json

log = logging.getLogger("lsvcr")


def run(cfg: DictConfig) -> float:
    path = run_dir(cfg)
    ds = load_dataset(cfg)
    scorer = build(cfg.model.sr).fit(ds)
    gatherer = HistoryGatherer(ds, cfg.data.max_phis_len, cfg.data.max_chis_len)
    evaluator = Evaluator(ds, gatherer, cfg.task.name, eval_config(cfg))
    logger = start_logger(cfg, path)
    results, rows = {}, {}
    for split in cfg.eval.splits:
        results[split] = evaluator.evaluate(scorer, split)
        for protocol, m in results[split].items():
            rows[f"{cfg.model.sr.name} {split}/{protocol}"] = m
            logger.log({f"{split}/{protocol}/{k}": v for k, v in m.items()})
    logger.finish()
    write_json(path / "metrics.json", {"task": cfg.task.name, "model": cfg.model.sr.name, "results": results})
    log.info("%s metrics (%s):\n%s", cfg.task.name, ds.root, format_table(rows))
    return _selection_metric(results)


def _selection_metric(results: dict) -> float:
    """The number a Hydra sweeper would optimise: the last split's full-ranking NDCG@10."""
    last = results[list(results)[-1]]
    return float(last.get("full", next(iter(last.values()))).get("ndcg@10", float("nan")))
