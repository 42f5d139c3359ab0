"""Metric loggers built from `conf/logger/*.yaml`. Only rank 0 writes; other ranks get no-ops."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class NullLogger:
    """Logs nothing (beyond the console log of each pipeline)."""

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        pass

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def finish(self) -> None:
        pass


class JsonlLogger(NullLogger):
    """Appends one JSON object per `log` call to `<run_dir>/metrics.jsonl`."""

    def __init__(self, filename: str = "metrics.jsonl"):
        self.filename = filename
        self.path: Path | None = None

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        if is_rank_zero():
            self.path = Path(run_dir) / self.filename
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")


class WandbLogger(NullLogger):
    """Weights & Biases run (offline by default, so no account is needed)."""

    def __init__(self, project: str = "lsvcr", entity: str | None = None, mode: str = "offline", tags=()):
        self.kwargs = dict(project=project, entity=entity, mode=mode, tags=list(tags))
        self.run = None

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        if not is_rank_zero():
            return
        import wandb

        self.run = wandb.init(dir=str(run_dir), config=config, name=Path(run_dir).name, **self.kwargs)

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
