"""stage=finetune through the real CLI: it learns, selects, saves, reloads and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, run_cli

FAST = [*TINY, "finetune.batch_size=128", "embed.max_length=16", "eval.protocols=[full]", "finetune.monitor=full/ndcg@10"]
ENV = {"OMP_NUM_THREADS": "1"}


def _runs(out: Path, pattern: str) -> list[Path]:
    return sorted(out.glob(f"runs/*/*{pattern}"))


def _val_curve(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["epoch"]: r["val/full/ndcg@10"] for r in rows if "epoch" in r and "val/full/ndcg@10" in r}


# comment ranking learns from few samples per user: a world where every user opens comments
COMMENTS = ["data.never_comment_user_frac=0", "data.comment_open_prob=0.8", "finetune.batch_size=32",
            "optim.lr=3e-3"]


@pytest.mark.parametrize("task,epochs,extra", [("rec", 6, []), ("comm_rank", 5, COMMENTS)])
def test_finetune_lsvcr_improves_over_untrained(tmp_path, task, epochs, extra):
    r = run_cli(["stage=finetune", f"task={task}", "model/sr=lsvcr", f"finetune.epochs={epochs}", *FAST, *extra],
                tmp_path, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    [run] = _runs(tmp_path, f"finetune-{task}-lsvcr")
    curve = _val_curve(run)
    assert set(curve) == {-1, *range(epochs)}
    assert max(curve[e] for e in range(epochs)) > curve[-1] + 0.02, curve
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["best_val"] == pytest.approx(max(curve[e] for e in range(epochs)))
    assert set(summary["results"]) == {"val", "test"} and summary["results"]["test"]["full"]["count"] > 0
    weights = load_file(run / "best" / "model.safetensors")
    assert "sr.id_embedding.weight" in weights and not any("table" in k for k in weights)
    assert len(list(tmp_path.rglob("embeddings/*/videos.npy"))) == 1  # the text tables were built on demand

    # stage=evaluate on the run's best checkpoint reproduces the run's own test figures
    r = run_cli(["stage=evaluate", f"task={task}", "model/sr=lsvcr", f"evaluate.checkpoint={run}", *_eval_args(extra)],
                tmp_path, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    [evaluated] = _runs(tmp_path, f"evaluate-{task}-lsvcr")
    again = json.loads((evaluated / "metrics.json").read_text())
    assert again["checkpoint"] == str(run) and again["results"].keys() == summary["results"].keys()
    for split, by_protocol in summary["results"].items():
        for protocol, metrics in by_protocol.items():
            assert again["results"][split][protocol] == pytest.approx(metrics, rel=1e-6), (split, protocol)
    if task == "rec":
        _checkpoint_errors(tmp_path, run, evaluated, extra)


def _eval_args(extra: list[str]) -> list[str]:
    """The data and evaluation settings of a fine-tuning command line (stage=evaluate has no finetune/optim)."""
    return [a for a in [*FAST, *extra] if not a.startswith(("finetune.", "optim."))]


def _checkpoint_errors(tmp_path: Path, run: Path, not_finetune: Path, extra: list[str]) -> None:
    """One clear error each: another task, another model, a non-finetune run, other video counts."""
    cases = [(["task=comm_rank", "model/sr=lsvcr", f"evaluate.checkpoint={run}"], "the checkpoint is task=rec"),
             (["task=rec", "model/sr=sasrec", f"evaluate.checkpoint={run}"], "the checkpoint is model/sr=lsvcr"),
             (["task=rec", "model/sr=lsvcr", f"evaluate.checkpoint={not_finetune}"], "not a finetune run directory"),
             (["task=rec", "model/sr=lsvcr", f"evaluate.checkpoint={run}", "data.num_videos=150"],
              "trained on 200 videos"),
             (["task=rec", "model/sr=lsvcr"], "evaluate.checkpoint=<finetune run dir>")]
    for i, (args, message) in enumerate(cases):
        r = run_cli(["stage=evaluate", *_eval_args(extra), *args], tmp_path / "errors", env=ENV)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr[-2000:])
        if i < 3:  # a wrong checkpoint fails before any data is prepared
            assert not (tmp_path / "errors" / "data").exists()


def test_checkpoint_round_trip_and_resume(tmp_path):
    """Best weights reload into a fresh model with identical scores; 2 epochs then 1 resumed
    epoch end with the same weights as 3 uninterrupted epochs."""
    from hydra import compose, initialize_config_dir

    from conftest import REPO
    from lsvcr.pipelines.common import load_dataset
    from lsvcr.pipelines.checkpoint import build_recommender
    from lsvcr.tasks import build_task

    common = ["stage=finetune", "task=rec", "model/sr=sasrec", *FAST, "finetune.eval_initial=false",
              "model.sr.dropout=0.0", "model.sr.attn_dropout=0.0"]
    assert run_cli([*common, "finetune.epochs=3", "finetune.patience=10"], tmp_path / "a", env=ENV).returncode == 0
    assert run_cli([*common, "finetune.epochs=2", "finetune.patience=10"], tmp_path / "b", env=ENV).returncode == 0
    [first] = _runs(tmp_path / "b", "finetune-rec-sasrec")
    r = run_cli([*common, "finetune.epochs=3", "finetune.patience=10", f"finetune.resume={first}"], tmp_path / "b",
                env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    [full] = _runs(tmp_path / "a", "finetune-rec-sasrec")
    resumed = [p for p in _runs(tmp_path / "b", "finetune-rec-sasrec") if p != first][0]
    a, b = load_file(full / "last" / "model.safetensors"), load_file(resumed / "last" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert json.loads((resumed / "metrics.json").read_text())["results"] == json.loads(
        (full / "metrics.json").read_text())["results"]

    # reload the best checkpoint into a freshly built model: identical scores
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*common, f"paths.output_dir={tmp_path / 'a'}", "paths.run_dir=/unused"])
    ds = load_dataset(cfg)
    model = build_recommender(cfg, ds, build_task(cfg.task)).eval()
    model.load_state_dict(load_file(full / "best" / "model.safetensors"))
    from lsvcr.data.history import HistoryGatherer

    h = HistoryGatherer(ds, 50, 50)(ds.samples("rec", "test"), np.arange(8))
    s1 = model.score_videos(h, None)
    model2 = build_recommender(cfg, ds, build_task(cfg.task)).eval()
    assert not torch.allclose(model2.score_videos(h, None), s1)
    model2.load_state_dict(load_file(full / "best" / "model.safetensors"))
    assert torch.equal(model2.score_videos(h, None), s1)


def test_sasrec_cannot_rank_comments(tmp_path):
    r = run_cli(["stage=finetune", "task=comm_rank", "model/sr=sasrec", *FAST, "finetune.epochs=1"], tmp_path, env=ENV)
    assert r.returncode == 2 and "use task=rec" in r.stderr and "Traceback" not in r.stderr


def test_baseline_has_nothing_to_finetune(tmp_path):
    r = run_cli(["stage=finetune", "model/sr=popularity", *TINY], tmp_path, env=ENV)
    assert r.returncode == 2 and "use stage=evaluate" in r.stderr and "Traceback" not in r.stderr


def test_no_text_ablation_trains_on_ids_alone(tmp_path):
    """experiment=lsvcr_no_text: LSVCR's streams over ID embeddings only; no text tables are read."""
    r = run_cli(["stage=finetune", "task=rec", "experiment=lsvcr_no_text", *FAST, "finetune.epochs=1"], tmp_path,
                env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    [run] = _runs(tmp_path, "finetune-rec-lsvcr_no_text")
    weights = load_file(run / "best" / "model.safetensors")
    assert "sr.id_embedding.weight" in weights and not any("adapter" in k or "merge" in k for k in weights)
    assert not list(tmp_path.rglob("embeddings/*/videos.npy"))  # no text tables were built
    r = run_cli(["stage=finetune", "task=comm_rank", "experiment=lsvcr_no_text", *FAST], tmp_path, env=ENV)
    assert r.returncode == 2 and "use task=rec" in r.stderr and "Traceback" not in r.stderr


def test_a_bad_tables_on_is_one_clear_error(tmp_path):
    r = run_cli(["stage=finetune", "task=rec", "model/sr=lsvcr", *FAST, "finetune.tables_on=gpu"], tmp_path, env=ENV)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "finetune.tables_on=gpu: expected one of host, device" in r.stderr
