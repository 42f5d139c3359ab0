"""Process-group set-up and tear-down for a rank started by a launcher (torchrun, DeepSpeed, Accelerate).

All three launchers export the same environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``), so ``init_process_group``'s ``env://`` rendezvous works for each.
Nothing here knows about Hydra: it takes the ``hardware`` settings as plain values.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os

import torch
import torch.distributed as dist

log = logging.getLogger("lsvcr")


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def env_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(backend: str, accelerator: str, timeout_min: float) -> None:
    """Join the process group the launcher set up; on CUDA, bind this rank to its local GPU first."""
    if accelerator == "cuda":
        # before init_process_group, so NCCL's communicator is built on this rank's GPU, not GPU 0
        torch.cuda.set_device(env_local_rank())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_min))
    log.info("rank %d of %d joined (%s on %s)", dist.get_rank(), dist.get_world_size(), backend, accelerator)


def teardown() -> None:
    """Leave the process group; safe to call when it was never (or is no longer) initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the process group; ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def accelerator(hw, **kwargs):
    """An ``accelerate.Accelerator`` for the ``hardware`` settings ``hw`` (accelerator, precision);
    ``kwargs`` go to the constructor. Inside a launched rank it joins the process group above."""
    from accelerate import Accelerator

    from lsvcr.utils.precision import ACCELERATE_PRECISION

    return Accelerator(cpu=hw.get("accelerator", "cpu") == "cpu",
                       mixed_precision=ACCELERATE_PRECISION[hw.get("precision", "fp32")], **kwargs)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def rank_zero_first():
    """Run the block on rank 0, then on the other ranks (which find rank 0's files and reuse them).

    For one-off work every rank needs but only one should do, such as preparing a dataset:
    ``with rank_zero_first(): ds = load_dataset(cfg)``. A plain block without a process group.
    """
    if env_rank() != 0:
        barrier()
    try:
        yield
    finally:
        if env_rank() == 0:
            barrier()
