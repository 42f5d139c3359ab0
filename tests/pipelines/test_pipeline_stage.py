"""stage=pipeline end to end on a tiny world: every step runs in its own directory and the summary
compares all four models on both tasks under both protocols."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import REPO, TINY, run_cli
from lsvcr.pipelines.pipeline import STEPS, derive, step_dir

pytestmark = pytest.mark.slow
# one epoch per fine-tuning, four alignment steps: the recipe's every step, in seconds
ARGS = ["stage=pipeline", *TINY, "embed.max_length=16", "model.llm.hidden_size=128", "model.llm.intermediate_size=256",
        "finetune.epochs=1", "align.max_steps=4", "align.grad_accum=2", "align.eval_samples=8"]


def test_steps_get_their_own_stage_task_model_and_directory(tmp_path):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=ARGS)
    base = OmegaConf.create(OmegaConf.to_container(cfg))
    subs = [derive(base, tmp_path, i) for i in range(len(STEPS))]
    assert [(s.stage.name, s.task.name, s.model.sr.name) for s in subs][:7] == [
        ("evaluate", "rec", "popularity"), ("evaluate", "comm_rank", "most_liked"), ("embed", "rec", "lsvcr"),
        ("finetune", "rec", "sasrec"), ("finetune", "rec", "lsvcr"), ("finetune", "comm_rank", "lsvcr"),
        ("align", "joint", "lsvcr")]
    assert [s.init_from for s in subs].count(str(tmp_path / "07_align")) == 3
    assert subs[4].finetune.epochs == 1 and subs[6].align.max_steps == 4  # the command line reaches sub-runs
    assert len({s.paths.run_dir for s in subs}) == len(STEPS)
    assert base.stage.name == "pipeline"  # deriving leaves the pipeline's own config alone


def test_pipeline_end_to_end(tmp_path):
    run = tmp_path / "pipeline_run"
    r = run_cli([*ARGS, f"hydra.run.dir={run}"], tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    models = summary["models"]
    assert set(models) == {"baseline", "sasrec", "lsvcr", "lsvcr_aligned"}
    assert models["baseline"]["rec"]["model"] == "popularity"
    assert models["baseline"]["comm_rank"]["model"] == "most_liked"
    assert models["sasrec"]["comm_rank"] is None  # ID-only video recommender
    for row in models.values():
        for task in ("rec", "comm_rank"):
            if row[task] is None:
                continue
            for protocol in ("sampled", "full"):
                values = [row[task][protocol][m] for m in ("ndcg@10", "recall@10", "mrr@10")]
                assert all(0.0 <= v <= 1.0 for v in values), (row, task, protocol)
    assert set(summary["seconds"]) == {s.name for s in STEPS}
    md = (run / "summary.md").read_text()
    assert "## task=rec" in md and "## task=comm_rank" in md and "LSVCR (aligned)" in md
    # the cold / warm slices, with their counts adding up to the whole split
    assert "## task=rec: ndcg@10 on cold / warm targets" in md
    rec = models["lsvcr"]["rec"]
    assert rec["full/cold"]["count"] + rec["full/warm"]["count"] == rec["full"]["count"]
    for i in range(len(STEPS)):
        assert (step_dir(run, i) / "config.yaml").exists()
    # the aligned runs read the aligned tables, which differ from the un-aligned ones
    base, tuned = (json.loads((run / d / "embed.json").read_text())["tables_dir"]
                   for d in ("03_embed", "08_embed_aligned"))
    assert base != tuned
    assert not np.allclose(np.load(f"{base}/videos.npy"), np.load(f"{tuned}/videos.npy"))
    assert (run / "07_align" / "align" / "modules.safetensors").exists()
