"""The real command line: config composition, prepare, evaluate, and clear user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_object
from omegaconf import OmegaConf

from conftest import REPO, TINY, run_cli
from lsvcr.utils.resolvers import register as register_resolvers

CONF = REPO / "conf"
# values a group entry requires (`???`) so it can be composed in a test
REQUIRED = {"data=native": ["data.root=/x"], "data=kuaicomt": ["data.root=/x"], "data=official": ["data.root=/x"],
            "data=prepared": ["data.prepared_dir=/x"], "model/llm=hf": ["model.llm.name_or_path=/x"]}


# group -> the key of its entries' node that carries `_target_` ("" = the node itself)
BUILDERS = {"stage": "", "model/sr": "", "model/llm": "", "logger": "", "data": "reader"}


def group_entries():
    for group_dir in sorted(p for p in CONF.rglob("*") if p.is_dir()):
        group = group_dir.relative_to(CONF).as_posix()
        for f in sorted(group_dir.glob("*.yaml")):
            if not f.stem.startswith("_"):
                yield f"{group}={f.stem}"


@pytest.mark.parametrize("override", list(group_entries()))
def test_every_group_entry_composes(override):
    extra = REQUIRED.get(override, [])
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[override, *extra], return_hydra_config=True)
    # resolve everything but Hydra's own runtime-only interpolations (the run directory)
    register_resolvers()
    plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    plain.paths.run_dir = "/run"
    OmegaConf.resolve(plain)
    # entries of the groups that build objects name an importable callable
    group = override.split("=")[0]
    if group in BUILDERS:
        node = OmegaConf.select(cfg, group.replace("/", "."))
        if BUILDERS[group]:
            node = node[BUILDERS[group]]
        if node is None:  # data=prepared reads a prepared directory: no reader
            assert override == "data=prepared"
        else:
            assert callable(get_object(node._target_)), f"{override}: {node._target_}"


def test_cfg_job_prints_composed_config(tmp_path):
    r = run_cli(["--cfg", "job", "stage=evaluate", "task=comm_rank"], tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = OmegaConf.create(r.stdout)
    assert cfg.task.name == "comm_rank" and cfg.stage.name == "evaluate"


def _run_dir(out: Path, name: str) -> Path:
    [d] = [p for p in (out / "runs").glob(f"*/*{name}")]
    return d


def test_prepare_then_evaluate_popularity(tmp_path):
    r = run_cli(["stage=prepare", *TINY], tmp_path)
    assert r.returncode == 0, r.stderr
    [prepared] = list((tmp_path / "data").glob("synthetic-*"))
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["counts"]["users"] == 150 and manifest["schema_version"] == 1
    summary = json.loads((_run_dir(tmp_path, "prepare-rec-popularity") / "prepare.json").read_text())
    assert summary["counts"]["samples"]["rec.test"] > 0

    r = run_cli(["stage=evaluate", "task=rec", *TINY], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "popularity test/full" in r.stderr + r.stdout
    res = json.loads((_run_dir(tmp_path, "evaluate-rec-popularity") / "metrics.json").read_text())["results"]
    for split in ("val", "test"):
        for protocol in ("sampled", "full"):
            m = res[split][protocol]
            assert 0 <= m["ndcg@10"] <= 1 and m["count"] > 0
        # 100 candidates are easier than all videos
        assert res[split]["sampled"]["recall@10"] > res[split]["full"]["recall@10"]
    # the same data config reuses the prepared directory instead of making another
    assert len(list((tmp_path / "data").glob("synthetic-*"))) == 1


def test_bad_source_is_one_clear_error(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "videos.csv").write_text("video_id,title,category\n1,hello,a\n")
    r = run_cli(["stage=prepare", "data=native", f"data.root={raw}"], tmp_path)
    assert r.returncode == 2
    assert "error:" in r.stderr and "comments" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_prepared_dir_is_one_clear_error(tmp_path):
    r = run_cli(["stage=evaluate", "data=prepared", f"data.prepared_dir={tmp_path / 'nope'}"], tmp_path)
    assert r.returncode == 2 and "not a prepared dataset" in r.stderr and "Traceback" not in r.stderr
