"""One rank of a multi-process run: ``python -m lsvcr.rank <run_dir>/resolved_config.yaml``.

`lsvcr.launch` writes the resolved config and starts this module through the engine's launcher::

    torchrun --nproc_per_node 2 --nnodes 1 --node_rank 0 --master_addr 127.0.0.1 --master_port 29500 \\
        -m lsvcr.rank outputs/runs/<date>/<time>_<name>/resolved_config.yaml
    deepspeed --num_gpus 8 --master_port 29500 --module lsvcr.rank .../resolved_config.yaml  # adds --local_rank=N
    accelerate launch --multi_gpu --num_processes 8 ... -m lsvcr.rank .../resolved_config.yaml

A rank never composes Hydra again: it reads that one file, so every rank sees the same values
(the same run directory and timestamps included). Only rank 0 logs at INFO and writes files.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lsvcr import distributed
from lsvcr.launch import ENV_RESOLVED
from lsvcr.main import run  # the same pipeline dispatch and user-error handling as `lsvcr`

log = logging.getLogger("lsvcr")
_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lsvcr.rank", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="resolved_config.yaml written by the dispatcher")
    # the DeepSpeed launcher appends --local_rank=N; LOCAL_RANK in the environment says the same
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def setup_logging(cfg: DictConfig, rank: int) -> None:
    """Rank 0: INFO to the console and ``<run_dir>/<stage>.log``; other ranks: warnings only."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter(_FORMAT if rank == 0 else f"[rank {rank}]{_FORMAT}")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if rank == 0:
        run_dir = Path(cfg.paths.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / f"{cfg.stage.name}.log"))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def main(argv: list[str] | None = None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # a rank must never launch ranks of its own, even when started by a launcher we did not run
    os.environ.setdefault(ENV_RESOLVED, str(args.config))
    cfg = OmegaConf.load(args.config)
    setup_logging(cfg, distributed.env_rank())
    hw = cfg.hardware
    distributed.init(hw.backend, hw.accelerator, hw.timeout_min)
    try:
        run(cfg)
    finally:
        distributed.teardown()
    _exit_now()


def _exit_now() -> None:
    """End a rank whose work is done and written without finalising the interpreter.

    ``destroy_process_group`` does not stop gloo's worker threads once DDP has used the group (the
    reducer keeps it alive: measured with torch 2.13), and a worker thread that touches Python while
    the interpreter finalises aborts the process ("terminate called without an active exception",
    seen once in CI after a 2-rank fine-tune had finished). Finalisation also walks every object torch,
    transformers and DeepSpeed created (5-15 s per rank on 2 busy cores). Everything a rank writes is
    closed by then (loggers are finished by the stages), so flush the streams and leave with status 0.
    A failing rank does not come here: its exception propagates as usual.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
