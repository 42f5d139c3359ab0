"""Start a multi-process run's ranks with the real engine: torchrun, DeepSpeed or Accelerate.

When `hardware.launcher` is not ``none``, `lsvcr` resolves the config once (run directory,
timestamps and environment variables become concrete), writes ``<run_dir>/resolved_config.yaml``,
and runs the engine's launcher on :mod:`lsvcr.rank`, which every rank starts from::

    lsvcr stage=evaluate hardware=cpu_ddp
      -> torchrun --nproc_per_node 2 --nnodes 1 --node_rank 0 --master_addr 127.0.0.1 \\
           --master_port <free> -m lsvcr.rank <run_dir>/resolved_config.yaml
    lsvcr stage=align hardware=deepspeed_z2 hardware.nproc_per_node=8
      -> deepspeed --num_gpus 8 --master_port <free> --module lsvcr.rank <run_dir>/resolved_config.yaml
    lsvcr stage=finetune hardware=accelerate_ddp
      -> accelerate launch --multi_gpu --num_processes <gpus> ... -m lsvcr.rank <run_dir>/resolved_config.yaml

`lsvcr` waits for the launcher and exits with its status when it fails. A Hydra sweep therefore
runs each job's ranks to the end before the next job starts.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lsvcr.errors import ConfigError
from lsvcr.utils.precision import ACCELERATE_PRECISION, PRECISIONS

log = logging.getLogger("lsvcr")

# set for the launched ranks (and by lsvcr.rank itself): a rank never launches ranks of its own
ENV_RESOLVED = "LSVCR_RESOLVED_CONFIG"
RANK_MODULE = "lsvcr.rank"
# launcher -> (the command a user would type, the module that is that command)
LAUNCHERS = {
    "torchrun": (("torchrun",), "torch.distributed.run"),
    "deepspeed": (("deepspeed",), "deepspeed.launcher.runner"),
    "accelerate": (("accelerate", "launch"), "accelerate.commands.launch"),
}
_LOCAL_ADDRS = ("127.0.0.1", "localhost", "::1")


def maybe_launch(cfg: DictConfig) -> bool:
    """Run ``cfg``'s stage in the ranks ``cfg.hardware`` asks for; False when this process should run it."""
    if os.environ.get(ENV_RESOLVED):
        return False
    hw = cfg.hardware
    if hw.launcher == "none":
        if _int(hw, "nproc_per_node") * _int(hw, "nnodes") > 1:
            raise ConfigError(f"hardware={hw.name} has launcher none, which runs one process; for several "
                              "set hardware.launcher=torchrun|deepspeed|accelerate or pick hardware=cpu_ddp/ddp")
        return False
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["hardware"] = resolve_hardware(resolved["hardware"])
    run_dir = Path(resolved["paths"]["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    # on a shared run directory each node writes its own file (they differ in node_rank)
    node = resolved["hardware"]["node_rank"]
    config_path = run_dir / ("resolved_config.yaml" if node == 0 else f"resolved_config.node{node}.yaml")
    OmegaConf.save(OmegaConf.create(resolved), config_path)
    command = build_command(resolved["hardware"], config_path)
    log.info("starting %d process(es) on this node: %s", resolved["hardware"]["nproc_per_node"],
             shlex.join(command))
    env = {**os.environ, **launch_env(resolved["hardware"]), ENV_RESOLVED: str(config_path)}
    code = _run_and_wait(executable(command), env)
    if code != 0:
        log.error("%s exited with status %d", command[0], code)
        sys.exit(code)
    return True


def _int(hw: dict | DictConfig, key: str) -> int:
    value = hw[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "node_rank" else 1):
        raise ConfigError(f"hardware.{key} must be a {'non-negative' if key == 'node_rank' else 'positive'} "
                          f"integer, got {value!r}")
    return value


def resolve_hardware(hw: dict) -> dict:
    """A copy of the ``hardware`` node with ``nproc_per_node: auto`` and a free ``master_port`` made
    concrete, after checking the values that would otherwise fail inside every rank."""
    hw = dict(hw)
    if hw["launcher"] not in LAUNCHERS:
        raise ConfigError(f"hardware.launcher must be none, {', '.join(LAUNCHERS)}; got {hw['launcher']!r}")
    if hw["accelerator"] not in ("cpu", "cuda") or hw["backend"] not in ("gloo", "nccl"):
        raise ConfigError(f"hardware.accelerator must be cpu|cuda and hardware.backend gloo|nccl; "
                          f"got {hw['accelerator']!r} / {hw['backend']!r}")
    if hw["backend"] == "nccl" and hw["accelerator"] != "cuda":
        raise ConfigError("hardware.backend=nccl needs hardware.accelerator=cuda (use gloo on the CPU)")
    if hw["precision"] not in PRECISIONS:
        raise ConfigError(f"hardware.precision must be fp32|bf16|fp16, got {hw['precision']!r}")
    gpus = _visible_gpus(hw) if hw["accelerator"] == "cuda" else 0
    if hw["nproc_per_node"] == "auto":
        if not gpus:
            raise ConfigError("hardware.nproc_per_node=auto counts GPUs; on the CPU give a number")
        hw["nproc_per_node"] = gpus
    nproc, nnodes, node_rank = _int(hw, "nproc_per_node"), _int(hw, "nnodes"), _int(hw, "node_rank")
    if node_rank >= nnodes:
        raise ConfigError(f"hardware.node_rank={node_rank} must be below hardware.nnodes={nnodes}")
    if gpus and nproc > gpus:
        raise ConfigError(f"hardware.nproc_per_node={nproc} but this node has {gpus} visible GPU(s)")
    if nnodes > 1 and (not hw["master_port"] or hw["master_addr"] in _LOCAL_ADDRS):
        raise ConfigError("with hardware.nnodes > 1 set hardware.master_addr to node 0's address and "
                          "hardware.master_port to one port, the same on every node")
    if not hw["master_port"]:
        hw["master_port"] = free_port()
    return hw


def _visible_gpus(hw: dict) -> int:
    import torch  # only here: CPU launches and `lsvcr --cfg job` never need torch in the dispatcher

    n = torch.cuda.device_count()
    if n == 0:
        raise ConfigError(f"hardware={hw['name']} runs on CUDA GPUs but none is visible; set "
                          "hardware.accelerator=cpu hardware.backend=gloo hardware.nproc_per_node=N, "
                          "or use hardware=cpu_ddp")
    return n


def free_port() -> int:
    """A TCP port free on this machine now, so parallel runs on one node do not collide on 29500."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def build_command(hw: dict, config_path: Path) -> list[str]:
    """The launcher command line, as a user would type it, for a resolved ``hardware`` node."""
    target = [str(config_path)]
    if hw["launcher"] == "torchrun":
        return ["torchrun", *_torchrun_flags(hw), "-m", RANK_MODULE, *target]
    if hw["launcher"] == "deepspeed":
        return ["deepspeed", *_deepspeed_flags(hw), "--module", RANK_MODULE, *target]
    return ["accelerate", "launch", *_accelerate_flags(hw), "-m", RANK_MODULE, *target]


def _torchrun_flags(hw: dict) -> list[str]:
    return ["--nproc_per_node", str(hw["nproc_per_node"]), "--nnodes", str(hw["nnodes"]),
            "--node_rank", str(hw["node_rank"]), "--master_addr", str(hw["master_addr"]),
            "--master_port", str(hw["master_port"])]


def _deepspeed_flags(hw: dict) -> list[str]:
    # without a hostfile DeepSpeed runs on this node only (and forces master_addr to 127.0.0.1); on the
    # CPU (DS_ACCELERATOR=cpu) --num_gpus is the number of ranks, where DeepSpeed would count NUMA nodes
    flags = ["--num_gpus", str(hw["nproc_per_node"])]
    if hw.get("hostfile"):
        flags += ["--hostfile", str(hw["hostfile"]), "--num_nodes", str(hw["nnodes"]),
                  "--master_addr", str(hw["master_addr"])]
        if not hw.get("ssh"):
            # every node runs this same command; DeepSpeed needs to be told which node it is on
            flags += ["--no_ssh", "--node_rank", str(hw["node_rank"])]
    elif hw["nnodes"] > 1:
        raise ConfigError("the deepspeed launcher needs hardware.hostfile (lines like 'node0 slots=8') "
                          "when hardware.nnodes > 1")
    return flags + ["--master_port", str(hw["master_port"])]


def _accelerate_flags(hw: dict) -> list[str]:
    # --multi_gpu selects Accelerate's torch.distributed launcher; --cpu would run a single process
    total = hw["nproc_per_node"] * hw["nnodes"]
    return ["--multi_gpu", "--num_processes", str(total), "--num_machines", str(hw["nnodes"]),
            "--machine_rank", str(hw["node_rank"]), "--main_process_ip", str(hw["master_addr"]),
            "--main_process_port", str(hw["master_port"]), "--mixed_precision", ACCELERATE_PRECISION[hw["precision"]],
            "--dynamo_backend", "no"]


def launch_env(hw: dict) -> dict[str, str]:
    """Environment the engines read to stay on the CPU when ``hardware.accelerator=cpu``."""
    if hw["accelerator"] != "cpu":
        return {}
    return {"ACCELERATE_USE_CPU": "true", "DS_ACCELERATOR": "cpu"}


def executable(command: list[str]) -> list[str]:
    """``command`` run by this interpreter (``python -m <module>``), whatever is first on PATH."""
    for words, module in LAUNCHERS.values():
        if tuple(command[: len(words)]) == words:
            return [sys.executable, "-m", module, *command[len(words):]]
    raise ValueError(f"not a launcher command: {command}")


def _run_and_wait(argv: list[str], env: dict[str, str]) -> int:
    """Run the launcher to the end; it dies with this process, so killing `lsvcr` stops every rank."""
    proc = subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    try:
        return proc.wait()
    except BaseException:
        # Ctrl-C reached the launcher too (same process group); give it time to stop its ranks
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise


def _die_with_parent() -> None:
    """In the launcher, before exec: get SIGTERM when `lsvcr` dies, even from SIGKILL (Linux prctl)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
