"""`stage=align` under DeepSpeed ZeRO-2 and ZeRO-3 on the CPU: two real ranks started by the `deepspeed`
launcher over gloo, the same engine code GPU runs use. They must exit (bounded), write the DeepSpeed
checkpoint, compute the losses (and the held-out evaluation's values) of the same run under torchrun +
Accelerate DDP, and resume exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import run_cli
from lsvcr.utils.deepspeed_config import TrainingNumbers, fill_auto

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow

# 3 optimizer steps of 2 ranks x 2 micro-batches x 2 samples; AdamW and clipping (max_grad_norm 1.0)
# are the same on both engines: DeepSpeed builds torch's AdamW from hardware.deepspeed.optimizer
WORLD = ["stage=align", "data.num_users=140", "data.num_videos=200", "embed.max_length=16",
         "align.max_steps=3", "align.micro_batch_size=2", "align.grad_accum=2", "align.log_every=1",
         "align.save_every=2", "hardware.precision=fp32",
         # held-out evaluation after step 2 and at the end (3), 4 val batches of 2 ranks x 2: the
         # evaluation forwards run between accumulation windows and must not shift them
         "align.eval_samples=16", "align.eval_every=2"]
DEEPSPEED = ["hardware=deepspeed_z2", "hardware.accelerator=cpu", "hardware.backend=gloo", "hardware.nproc_per_node=2"]
DDP = ["hardware=cpu_ddp"]
ENV = {"OMP_NUM_THREADS": "1"}
TIMEOUT = 240  # one run takes about a minute on 2 busy cores; a hang fails the test instead of stalling it
LOSSES = ("loss", "lm_loss", "rec_loss", "contrast_loss", "behaviour_loss", "llm_sr_loss")
VAL = (*LOSSES, "rec_top1", "llm_sr_top1", "sr_cosine", "llm_cosine")


def align(args: list[str], out: Path, run: Path) -> str:
    r = run_cli([*WORLD, *args, f"hydra.run.dir={run}"], out, timeout=TIMEOUT, env=ENV)
    assert r.returncode == 0, r.stderr[-4000:]
    return r.stdout + r.stderr


def losses(run: Path) -> list[dict]:
    return json.loads((run / "losses.json").read_text())


def evals(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "align_eval.jsonl").read_text().splitlines()]


def max_val_diff(a: Path, b: Path) -> float:
    x, y = evals(a), evals(b)
    assert [e["step"] for e in x] == [e["step"] for e in y] == [2, 3]
    return max(abs(g[k] - w[k]) for g, w in zip(x, y) for k in VAL)


def max_weight_diff(a: Path, b: Path) -> float:
    x, y = load_file(a / "align" / "modules.safetensors"), load_file(b / "align" / "modules.safetensors")
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 2-rank alignment under DeepSpeed ZeRO-2 and under DDP (one prepared dataset)."""
    out = tmp_path_factory.mktemp("deepspeed")
    shm_before = set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"))
    log = align(DEEPSPEED, out, out / "ds")
    shm_left = set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")) - shm_before
    align(DDP, out, out / "ddp")
    return out, out / "ds", out / "ddp", log, shm_left


def test_zero2_run_writes_the_deepspeed_checkpoint(runs):
    _, ds, _, log, shm_left = runs
    assert "deepspeed --num_gpus 2" in log and "Process" in log and "exits successfully" in log
    config = json.loads((ds / "deepspeed_config.json").read_text())
    assert config["zero_optimization"]["stage"] == 2 and config["train_batch_size"] == 8
    assert config["optimizer"]["params"]["torch_adam"] is True  # torch's AdamW: no C++ op is built on the CPU
    assert config["gradient_clipping"] == 1.0 and not config["bf16"]["enabled"]
    for ckpt, step in ((ds / "align", 3), (ds / "align_step2", 2)):
        assert (ckpt / "deepspeed" / "latest").read_text().strip() == f"global_step{step}"
        shards = {p.name for p in (ckpt / "deepspeed" / f"global_step{step}").iterdir()}
        assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= shards
        assert not (ckpt / "trainer.pt").exists() and (ckpt / "modules.safetensors").exists()
    assert json.loads((ds / "align.json").read_text())["steps"] == 3
    assert not shm_left  # DeepSpeed's shared-memory all-reduce op is neither built nor mapped


def test_zero2_losses_equal_ddp(runs):
    _, ds, ddp, _, _ = runs
    got, want = losses(ds), losses(ddp)
    assert [e["step"] for e in got] == [e["step"] for e in want] == [1, 2, 3]
    diff = max(abs(g[k] - w[k]) for g, w in zip(got, want) for k in (*LOSSES, "lr"))
    assert diff <= 2e-6, (got, want)  # losses.json keeps 6 decimals; measured: 0.0 in all 3 steps
    for g, w in zip(got, want):  # gradient norms before clipping (DeepSpeed clips; Accelerate clips)
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-5)
    # the final weights after 3 AdamW steps: only the order of the fp32 gradient sums differs (DeepSpeed
    # averages each micro-batch, DDP the accumulated sum); measured 3.3e-6 (SR, MLPs), 1.8e-7 (LoRA)
    assert max_weight_diff(ds, ddp) < 5e-5


def test_zero2_heldout_evaluation_equals_ddp(runs):
    _, ds, ddp, _, _ = runs
    assert max_val_diff(ds, ddp) <= 2e-6  # 6 decimals kept, and the weights agree to ~3e-6
    assert all(e["samples"] == 16 and e["rec_top1_chance"] == 0.25 for e in evals(ds))


def test_zero2_resume_equals_uninterrupted(runs):
    out, ds, _, _, _ = runs
    resumed = out / "ds_resumed"
    log = align([*DEEPSPEED, f"align.resume={ds / 'align_step2'}"], out, resumed)
    assert f"resumed {ds / 'align_step2'} at step 2 of 3" in log
    assert losses(resumed) == losses(ds)  # step 3 recomputed from the DeepSpeed optimizer and scheduler state
    assert evals(resumed) == evals(ds)
    assert max_weight_diff(resumed, ds) == 0.0


def test_zero3_with_two_optimizer_groups_equals_ddp(runs):
    """ZeRO-3 shards the weights too: every rank must fetch them module by module in one recorded order
    (a micro-batch without comment histories still runs the comment stream's modules), and rank 0 saves
    the gathered whole weights. It runs with align.lora_lr_scale=0: two optimizer groups, the LoRA one at
    rate 0, so under ZeRO-3 as under DDP the LoRA weights keep their initial values exactly (B stays
    zero) while the SR trains at align.lr."""
    out, _, ddp, _, _ = runs
    z3, frozen = out / "z3", ["align.lora_lr_scale=0"]
    zero3 = ["hardware=deepspeed_z3" if a == "hardware=deepspeed_z2" else a for a in DEEPSPEED]
    align([*zero3, *frozen, "align.save_every=null"], out, z3)
    align([*DDP, *frozen], out, out / "ddp_frozen")
    assert json.loads((z3 / "deepspeed_config.json").read_text())["zero_optimization"]["stage"] == 3
    got, want = losses(z3), losses(out / "ddp_frozen")
    assert [e["step"] for e in got] == [1, 2, 3]
    assert max(abs(g[k] - w[k]) for g, w in zip(got, want) for k in (*LOSSES, "lr")) <= 2e-6, (got, want)
    assert max_weight_diff(z3, out / "ddp_frozen") < 5e-5  # the saved modules are whole weights, not rank 0's shards
    assert max_val_diff(z3, out / "ddp_frozen") <= 2e-6  # the evaluation forwards gather the sharded weights too
    assert [e["lr"] for e in want] == [e["lr"] for e in losses(ddp)]  # the logged rate is the SR's
    assert want[0]["loss"] == pytest.approx(losses(ddp)[0]["loss"], abs=1e-6)  # step 1: nothing updated yet
    assert abs(want[-1]["loss"] - losses(ddp)[-1]["loss"]) > 1e-4
    for run in (z3, out / "ddp_frozen"):
        lora = load_file(run / "align" / "lora" / "adapter_model.safetensors")
        assert all(not v.any() for k, v in lora.items() if "lora_B" in k)
    # a checkpoint resumes only with the optimizer grouping it was written with
    r = run_cli([*WORLD, *DDP, f"align.resume={out / 'ddp_frozen' / 'align_step2'}",
                 f"hydra.run.dir={out / 'ddp_regrouped'}"], out, timeout=TIMEOUT, env=ENV)
    assert r.returncode != 0 and "align.lora_lr_scale" in r.stderr and "optimizer state does not fit" in r.stderr


def test_torch_adam_auto_is_a_device_choice():
    ds = {"optimizer": {"type": "AdamW", "params": {"lr": "auto", "torch_adam": "auto"}}}
    numbers = {"micro_batch_size": 1, "lr": 1e-3}

    def filled(**kw):
        return fill_auto(ds, TrainingNumbers(**numbers, **kw))["optimizer"]["params"]

    assert filled(accelerator="cpu")["torch_adam"] is True
    assert filled(accelerator="cuda")["torch_adam"] is False  # DeepSpeed's FusedAdam on GPUs
    assert "torch_adam" not in filled()  # unknown device: DeepSpeed's default
    ds["optimizer"]["params"]["torch_adam"] = True  # an explicit choice is kept, not a contradiction
    assert fill_auto(ds, TrainingNumbers(**numbers, accelerator="cuda"))["optimizer"]["params"]["torch_adam"] is True
