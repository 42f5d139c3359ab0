"""Fine-tuning and embedding with two torchrun ranks on the CPU (gloo), through the real CLI, against
one process: what must hold exactly does, and the multi-process runs write one run directory.

(The launcher itself, and evaluation with 2 ranks, are in test_launch.py; the cross-rank InfoNCE in
test_losses.py; rank shards and per-epoch seeds of the training batches in test_loader.py.) Last, the
GPU check script's CPU dry run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, run_cli
from lsvcr.data.store import PreparedDataset

pytestmark = pytest.mark.slow
# two processes fighting over 2 shared cores: one OpenMP thread each avoids spin-wait stalls
ENV = {"OMP_NUM_THREADS": "1"}
# 140 users of the plain world (no mechanisms: these tests are about the engines) give an even
# number of rec training samples (checked below): 2 ranks then drop none
WORLD = ["data.num_users=140", "data.num_videos=200", "data.mechanisms=false", "embed.max_length=16"]
DDP = ["hardware=cpu_ddp"]  # torchrun, 2 processes
# Rec with a softmax over every video draws no random numbers in training once dropout and the
# (negative-sampling) ID-text term are off. Rank r takes every 2nd sample of the epoch's
# permutation, so two ranks with batch B see, step by step, exactly the samples of one process
# with batch 2B, and DDP's gradient mean equals the full batch's mean loss gradient.
EXACT = ["stage=finetune", "task=rec", "model/sr=lsvcr", *WORLD, "eval.protocols=[sampled,full]",
         "finetune.monitor=full/ndcg@10", "finetune.epochs=2", "finetune.patience=5", "model.sr.dropout=0.0",
         "model.sr.attn_dropout=0.0", "finetune.id_text_loss_weight=0.0"]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """One output directory for the module: the world and its text tables are prepared once."""
    return tmp_path_factory.mktemp("distributed")


def _run(args: list[str], out: Path) -> Path:
    """Run the CLI; the one run directory it created."""
    before = set(out.glob("runs/*/*"))
    r = run_cli(args, out, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr[-4000:]
    [run] = set(out.glob("runs/*/*")) - before  # one run directory, not one per rank
    return run


def _epochs(run: Path) -> dict[int, dict]:
    """``metrics.jsonl``'s per-epoch rows (epoch -1 = the untrained model)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["epoch"]: r for r in rows if "epoch" in r}


def _assert_results_equal(a: dict, b: dict, rel: float) -> None:
    """Two ``{protocol: {metric: value}}`` dicts over the same samples agree within ``rel``."""
    assert a.keys() == b.keys()
    for protocol in a:
        assert a[protocol]["count"] == b[protocol]["count"] > 0
        assert a[protocol] == pytest.approx(b[protocol], rel=rel, abs=1e-12), protocol


def _val(row: dict) -> dict:
    """``{protocol: {metric: value}}`` from a ``metrics.jsonl`` row's ``val/<protocol>/<metric>`` keys."""
    out: dict = {}
    for key, value in row.items():
        if key.startswith("val/"):
            protocol, _, metric = key.removeprefix("val/").rpartition("/")
            out.setdefault(protocol, {})[metric] = value
    assert out, "no val/ metrics in the row"
    return out


def test_two_ranks_train_exactly_as_one_process_with_twice_the_batch(out):
    one = _run([*EXACT, "finetune.batch_size=64"], out)
    [root] = out.glob("data/synthetic-*")
    n = len(PreparedDataset(root).samples("rec", "train"))
    assert n % 2 == 0, f"{n} rec training samples: with an odd count 2 ranks drop one; change WORLD's num_users"
    two = _run([*EXACT, *DDP, "finetune.batch_size=32"], out)

    assert [p.name for p in two.glob("resolved_config*")] == ["resolved_config.yaml"]
    assert "rank 0 of 2 joined (gloo on cpu)" in (two / "finetune.log").read_text()
    # only rank 0 logged: the same rows as the one-process run
    assert len((two / "metrics.jsonl").read_text().splitlines()) == len((one / "metrics.jsonl").read_text().splitlines())
    e1, e2 = _epochs(one), _epochs(two)
    assert set(e1) == set(e2) == {-1, 0, 1}
    for epoch in e1:
        # the same initial weights (epoch -1) and, after training, weights equal up to rounding:
        # the sharded, all-reduced validation gives the one-process numbers
        _assert_results_equal(_val(e1[epoch]), _val(e2[epoch]), rel=1e-6)
        if epoch >= 0:
            assert e2[epoch]["train/epoch_loss"] == pytest.approx(e1[epoch]["train/epoch_loss"], rel=1e-5)
    # and it learns: loss falls, validation improves on the untrained model
    assert e2[1]["train/epoch_loss"] < e2[0]["train/epoch_loss"]
    assert max(e2[e]["val/full/ndcg@10"] for e in (0, 1)) > e2[-1]["val/full/ndcg@10"] + 0.05

    m1, m2 = (json.loads((r / "metrics.json").read_text()) for r in (one, two))
    assert (m1["best_epoch"], m1["epochs_run"]) == (m2["best_epoch"], m2["epochs_run"])
    for split in ("val", "test"):  # every rank loaded rank 0's best checkpoint before testing
        _assert_results_equal(m1["results"][split], m2["results"][split], rel=1e-6)
    w1, w2 = load_file(one / "last" / "model.safetensors"), load_file(two / "last" / "model.safetensors")
    assert w1.keys() == w2.keys()
    # Weight matrices and embeddings agree up to rounding. Vectors are left out: one the loss is
    # invariant to (the bias of a score that a softmax normalises away) gets gradients of pure
    # rounding noise, which Adam turns into steps of up to lr (1e-3) in either run.
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1 if w1[k].dim() >= 2) < 1e-4


def test_two_ranks_comment_ranking_with_dropout_and_id_text_loss(out):
    """The other task's unused modules, rank-seeded dropout and ID-text negatives: training runs,
    and the untrained model's validation (epoch -1) is the one-process evaluation's."""
    args = ["stage=finetune", "task=comm_rank", "model/sr=lsvcr", *WORLD, "eval.protocols=[sampled,full]",
            "finetune.monitor=sampled/ndcg@10", "finetune.batch_size=32"]
    one = _run([*args, "finetune.epochs=0"], out)
    two = _run([*args, *DDP, "finetune.epochs=2"], out)
    e1, e2 = _epochs(one), _epochs(two)
    _assert_results_equal(_val(e1[-1]), _val(e2[-1]), rel=1e-9)
    assert set(e2) == {-1, 0, 1} and all(np.isfinite(e2[e]["train/epoch_loss"]) for e in (0, 1))
    summary = json.loads((two / "metrics.json").read_text())
    assert summary["epochs_run"] == 2 and (two / "best" / "model.safetensors").exists()
    assert summary["results"]["test"]["full"]["count"] == json.loads((one / "metrics.json").read_text())[
        "results"]["test"]["full"]["count"]


def test_sharded_embedding_merges_into_the_one_process_table(out, tmp_path):
    # a small batch: many length-sorted batches, an odd number dealt to the 2 ranks
    args = ["stage=embed", *WORLD, "embed.batch_size=24", "embed.hidden_table=true"]
    _run([*args, f"embed.out_dir={tmp_path / 'one'}"], out)
    _run([*args, *DDP, f"embed.out_dir={tmp_path / 'two'}"], out)
    manifest = json.loads((tmp_path / "two" / "embed_manifest.json").read_text())
    assert manifest["processes"] == 2
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    for name in ("videos", "comments", "videos_hidden", "comments_hidden"):
        a, b = np.load(tmp_path / "one" / f"{name}.npy"), np.load(tmp_path / "two" / f"{name}.npy")
        assert a.shape == b.shape and a.shape[0] > 1
        # every batch is the one-process batch, so every row is bit-identical
        assert np.array_equal(a, b), f"{name}: max abs difference {np.abs(a - b).max()}"


def test_gpu_check_runs_its_code_paths_tiny_on_the_cpu():
    """experiments/gpu_check.py is for CUDA machines; --dry-run runs the same steps tiny on the CPU."""
    script = [sys.executable, str(REPO / "experiments" / "gpu_check.py")]
    env = {**os.environ, **ENV}
    r = subprocess.run([*script, "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    a = results["alignment"]
    assert a["trainable_params"] > 0 and a["tokens_per_s"] > 0 and 0 < a["mfu"] < 1
    assert a["loss_first_last"][1] < a["loss_first_last"][0]  # the LoRA + SR step trains
    assert [f["precision"] for f in results["finetune"]] == ["fp32", "bf16"]
    assert results["ranking"]["evaluator_chunks"]["users_per_s"] > 0
    if not torch.cuda.is_available():
        r = subprocess.run(script, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and "no CUDA GPU is visible" in r.stderr
