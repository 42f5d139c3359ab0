"""Multi-process runs: the hardware group, the launchers' command lines, and real 2-process runs on the CPU
(torchrun and Accelerate over gloo) that must give the single-process metrics."""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import REPO, TINY, run_cli
from lsvcr.errors import ConfigError
from lsvcr.launch import ENV_RESOLVED, build_command, executable, free_port, maybe_launch, resolve_hardware
from lsvcr.rank import parse_args
from lsvcr.utils.deepspeed_config import TrainingNumbers, fill_auto

HARDWARE = sorted(p.stem for p in (REPO / "conf" / "hardware").glob("*.yaml") if not p.stem.startswith("_"))
EVAL = ["stage=evaluate", "task=rec", *TINY]


@functools.cache
def _composed(name: str) -> dict:
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=[f"hardware={name}"]).hardware, resolve=True)


def _hardware(name: str, **overrides) -> dict:
    """``hardware=<name>`` as Hydra composes it, with ``overrides`` applied."""
    return {**copy.deepcopy(_composed(name)), **overrides}


# ---------------------------------------------------------------- the hardware group and command lines
@pytest.mark.parametrize("name", HARDWARE)
def test_every_hardware_entry_resolves_with_cfg_job(name, tmp_path):
    r = run_cli(["--cfg", "job", "--resolve", f"hardware={name}"], tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    hw = OmegaConf.to_container(OmegaConf.create(r.stdout).hardware)
    assert hw == _composed(name)
    assert hw["name"] == name
    assert hw["launcher"] in ("none", "torchrun", "deepspeed", "accelerate")
    assert (hw["accelerator"], hw["backend"]) in (("cpu", "gloo"), ("cuda", "nccl"))
    assert hw["precision"] in ("fp32", "bf16", "fp16") and hw["nnodes"] == 1 and hw["node_rank"] == 0
    if hw["launcher"] == "deepspeed":
        assert hw["precision"] == "bf16" and hw["deepspeed"]["zero_optimization"]["stage"] == int(name[-1])


def test_torchrun_command_and_this_interpreter(tmp_path):
    hw = resolve_hardware(_hardware("cpu_ddp", nproc_per_node=3))
    cmd = build_command(hw, tmp_path / "r.yaml")
    port = str(hw["master_port"])
    assert cmd == ["torchrun", "--nproc_per_node", "3", "--nnodes", "1", "--node_rank", "0", "--master_addr",
                   "127.0.0.1", "--master_port", port, "-m", "lsvcr.rank", str(tmp_path / "r.yaml")]
    assert executable(cmd)[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert executable(cmd)[3:] == cmd[1:]
    # null (or 0) asks for a free port each time, so two runs on one machine do not collide
    assert 0 < int(port) < 65536 and resolve_hardware(_hardware("cpu_ddp", master_port=0))["master_port"] > 0


def test_deepspeed_command_one_node_and_several(tmp_path, monkeypatch):
    monkeypatch.setattr("lsvcr.launch._visible_gpus", lambda hw: 8)  # as on an 8-GPU node
    hw = resolve_hardware(_hardware("deepspeed_z2"))
    assert hw["nproc_per_node"] == 8  # "auto": every visible GPU
    cmd = build_command(hw, Path("run/r.yaml"))
    assert cmd == ["deepspeed", "--num_gpus", "8", "--master_port", str(hw["master_port"]),
                   "--module", "lsvcr.rank", "run/r.yaml"]
    assert executable(cmd)[:3] == [sys.executable, "-m", "deepspeed.launcher.runner"]

    multi = dict(nnodes=2, node_rank=1, master_addr="node0.cluster.internal", master_port=29500,
                 nproc_per_node=4)
    with pytest.raises(ConfigError, match="hostfile"):
        build_command(resolve_hardware(_hardware("deepspeed_z3", **multi)), Path("r.yaml"))
    hw = resolve_hardware(_hardware("deepspeed_z3", hostfile="/etc/hosts.ds", **multi))
    assert build_command(hw, Path("r.yaml")) == [
        "deepspeed", "--num_gpus", "4", "--hostfile", "/etc/hosts.ds", "--num_nodes", "2", "--master_addr",
        "node0.cluster.internal", "--no_ssh", "--node_rank", "1", "--master_port", "29500",
        "--module", "lsvcr.rank", "r.yaml"]


def test_accelerate_command_counts_all_processes(monkeypatch):
    monkeypatch.setattr("lsvcr.launch._visible_gpus", lambda hw: 8)
    hw = resolve_hardware(_hardware("accelerate_ddp", nnodes=2, node_rank=0, master_addr="10.0.0.1",
                                    master_port=29501))
    cmd = build_command(hw, Path("r.yaml"))
    assert cmd[:3] == ["accelerate", "launch", "--multi_gpu"]
    flags = dict(zip(cmd[3:-3:2], cmd[4:-3:2]))
    assert flags == {"--num_processes": "16", "--num_machines": "2", "--machine_rank": "0",
                     "--main_process_ip": "10.0.0.1", "--main_process_port": "29501",
                     "--mixed_precision": "bf16", "--dynamo_backend": "no"}
    assert cmd[-3:] == ["-m", "lsvcr.rank", "r.yaml"]


@pytest.mark.parametrize("overrides, message", [
    (dict(nnodes=2, node_rank=2, master_addr="n0", master_port=1), "node_rank=2 must be below"),
    (dict(nnodes=2, node_rank=1), "master_addr to node 0's address"),
    (dict(backend="nccl"), "nccl needs hardware.accelerator=cuda"),
    (dict(nproc_per_node="auto"), "auto counts GPUs"),
    (dict(nproc_per_node=0), "positive integer"),
])
def test_bad_hardware_is_a_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_hardware(_hardware("cpu_ddp", **overrides))


def test_one_process_launchers_and_ranks_never_launch(monkeypatch):
    cfg = OmegaConf.create({"hardware": _hardware("cpu")})
    assert maybe_launch(cfg) is False
    cfg.hardware.nproc_per_node = 2
    with pytest.raises(ConfigError, match="launcher none"):
        maybe_launch(cfg)
    monkeypatch.setenv(ENV_RESOLVED, "/some/run/resolved_config.yaml")  # inside a launched rank
    assert maybe_launch(OmegaConf.create({"hardware": _hardware("cpu_ddp")})) is False


def test_rank_accepts_and_ignores_deepspeeds_local_rank():
    args = parse_args(["--local_rank=3", "run/resolved_config.yaml"])
    assert args.config == Path("run/resolved_config.yaml")
    assert parse_args(["run/resolved_config.yaml", "--local_rank", "1"]).config == args.config


# ---------------------------------------------------------------- the DeepSpeed JSON
def test_deepspeed_auto_values_are_filled_from_the_training_numbers():
    ds = _hardware("deepspeed_z2")["deepspeed"]
    numbers = TrainingNumbers(micro_batch_size=4, grad_accum=8, world_size=2, precision="bf16", lr=1e-4,
                              weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8, grad_clip=1.0)
    out = fill_auto(ds, numbers)
    assert "auto" not in json.dumps(out) and "auto" in json.dumps(ds)  # the input is left alone
    assert (out["train_micro_batch_size_per_gpu"], out["gradient_accumulation_steps"], out["train_batch_size"]) \
        == (4, 8, 64)
    assert out["bf16"] == {"enabled": True} and out["fp16"] == {"enabled": False}
    assert out["zero_optimization"]["stage"] == 2 and out["gradient_clipping"] == 1.0
    assert out["optimizer"]["params"] == {"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}
    assert "reduce_bucket_size" not in out["zero_optimization"]  # no hidden size: DeepSpeed's default

    z3 = fill_auto(_hardware("deepspeed_z3")["deepspeed"], TrainingNumbers(
        micro_batch_size=1, precision="bf16", lr=1e-4, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8,
        grad_clip=1.0, hidden_size=1024))["zero_optimization"]
    assert z3["stage"] == 3 and z3["reduce_bucket_size"] == 1024 ** 2
    assert z3["stage3_param_persistence_threshold"] == 10240

    deepspeed_config = pytest.importorskip("deepspeed.runtime.config")
    ds_cfg = deepspeed_config.DeepSpeedConfig(fill_auto(ds, TrainingNumbers(
        micro_batch_size=4, grad_accum=8, precision="bf16", lr=1e-4, weight_decay=0.01, betas=(0.9, 0.999),
        eps=1e-8, grad_clip=1.0)))  # DeepSpeed's own parser accepts it
    assert ds_cfg.zero_optimization_stage == 2 and ds_cfg.bfloat16_config.enabled and ds_cfg.train_batch_size == 32


def test_deepspeed_unfillable_or_contradicting_values_are_errors():
    ds = _hardware("deepspeed_z2")["deepspeed"]
    with pytest.raises(ConfigError, match=r"hardware\.deepspeed\.gradient_clipping is \"auto\""):
        fill_auto(ds, TrainingNumbers(micro_batch_size=4, lr=1e-4, weight_decay=0.0, betas=(0.9, 0.99), eps=1e-8))
    ds["bf16"]["enabled"] = True
    with pytest.raises(ConfigError, match=r"bf16\.enabled is True but the training config gives False"):
        fill_auto(ds, TrainingNumbers(micro_batch_size=4, precision="fp32", lr=1e-4, weight_decay=0.0,
                                      betas=(0.9, 0.99), eps=1e-8, grad_clip=1.0))


# ---------------------------------------------------------------- real multi-process runs on the CPU
def _runs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob("runs/*/*/.hydra"))


def _assert_same_metrics(a: dict, b: dict) -> None:
    for split in ("val", "test"):
        for protocol in ("sampled", "full"):
            ma, mb = a["results"][split][protocol], b["results"][split][protocol]
            assert ma["count"] == mb["count"] > 0 and set(ma) == set(mb)
            # each rank sums its own rows in float64, so only the order of the additions differs
            assert ma == pytest.approx(mb, rel=1e-12, abs=1e-15)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """A one-process evaluation (which also prepares the tiny world the multi-process runs reuse)."""
    out = tmp_path_factory.mktemp("launch")
    r = run_cli(EVAL, out, timeout=120)
    assert r.returncode == 0, r.stderr
    [run] = _runs(out)
    return out, json.loads((run / "metrics.json").read_text())


@pytest.mark.slow
def test_torchrun_two_cpu_processes_match_one_process(single_run):
    out, expected = single_run
    before = set(_runs(out))
    r = run_cli([*EVAL, "hardware=cpu_ddp"], out, timeout=180)
    assert r.returncode == 0, r.stderr
    [run] = set(_runs(out)) - before  # one run directory, not one per rank
    assert [p.name for p in run.glob("resolved_config*")] == ["resolved_config.yaml"]
    _assert_same_metrics(json.loads((run / "metrics.json").read_text()), expected)
    resolved = OmegaConf.load(run / "resolved_config.yaml")
    assert resolved.paths.run_dir == str(run) and resolved.hardware.nproc_per_node == 2
    assert isinstance(resolved.hardware.master_port, int)
    assert "rank 0 of 2 joined (gloo on cpu)" in (run / "evaluate.log").read_text()
    # only rank 0 logged metrics: as many lines as the one-process run wrote
    [single] = before
    assert len((run / "metrics.jsonl").read_text().splitlines()) == \
        len((single / "metrics.jsonl").read_text().splitlines())

    # a rank started by hand, with DeepSpeed's extra --local_rank, reads the same file and agrees
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "LSVCR_OUTPUT_DIR": str(out)}
    (run / "metrics.json").unlink()
    r = subprocess.run([sys.executable, "-m", "lsvcr.rank", "--local_rank=0", str(run / "resolved_config.yaml")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "rank 0 of 1 joined" in r.stderr
    _assert_same_metrics(json.loads((run / "metrics.json").read_text()), expected)


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_match_one_process(single_run):
    out, expected = single_run
    before = set(_runs(out))
    r = run_cli([*EVAL, "hardware=accelerate_ddp", "hardware.accelerator=cpu", "hardware.backend=gloo",
                 "hardware.nproc_per_node=2", "hardware.precision=fp32"], out, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "accelerate launch --multi_gpu --num_processes 2" in r.stdout + r.stderr
    [run] = set(_runs(out)) - before
    assert "rank 0 of 2 joined (gloo on cpu)" in (run / "evaluate.log").read_text()
    _assert_same_metrics(json.loads((run / "metrics.json").read_text()), expected)


@pytest.mark.slow
def test_multirun_runs_each_jobs_ranks_in_turn(single_run):
    out, _ = single_run
    sweep = out / "sweep"
    r = run_cli(["-m", "stage=evaluate", *TINY, "hardware=cpu_ddp", "task=rec,comm_rank", f"hydra.sweep.dir={sweep}"],
                out, timeout=240)
    assert r.returncode == 0, r.stderr
    jobs = sorted(sweep.glob("[0-9]_*"), key=lambda p: p.name)
    assert [OmegaConf.load(j / "resolved_config.yaml").task.name for j in jobs] == ["rec", "comm_rank"]
    for job in jobs:
        assert json.loads((job / "metrics.json").read_text())["results"]["test"]["full"]["count"] > 0
    # job 1 was resolved (and its ranks started) only after job 0's ranks had written their results
    assert (jobs[0] / "metrics.json").stat().st_mtime <= (jobs[1] / "resolved_config.yaml").stat().st_mtime


@pytest.mark.slow
def test_a_failing_rank_fails_the_run(tmp_path):
    r = run_cli(["stage=evaluate", "hardware=cpu_ddp", "data=prepared", f"data.prepared_dir={tmp_path / 'nope'}"],
                tmp_path, timeout=120)
    assert r.returncode != 0
    assert "not a prepared dataset" in r.stderr and "torchrun exited with status" in r.stdout + r.stderr
