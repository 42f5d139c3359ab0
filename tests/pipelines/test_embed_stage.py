"""stage=embed: text tables for every title and comment, reused when complete, keyed by settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY, finish_cli, run_cli, start_cli
from hydra import compose, initialize_config_dir

from lsvcr.data.store import PreparedDataset
from lsvcr.data.table_files import TABLES_MANIFEST
from lsvcr.errors import ConfigError
from lsvcr.pipelines.tables import ensure_tables, tables_dir

pytestmark = pytest.mark.slow
# a small world and short texts keep the tiny LM's encoding to a second or two
ARGS = ["stage=embed", "model/llm=tiny", *TINY, "data.num_videos=60", "data.num_topics=8", "embed.max_length=16"]
# two processes fighting over 2 shared cores: one OpenMP thread each avoids spin-wait stalls
ENV = {"OMP_NUM_THREADS": "1"}


def compose_cfg(*overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[*ARGS, *overrides])


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """One real `lsvcr stage=embed model/llm=tiny` run: (output dir, prepared dataset, tables dir)."""
    out = tmp_path_factory.mktemp("embed")
    r = run_cli(ARGS, out, env=ENV)
    assert r.returncode == 0, r.stderr
    [root] = list((out / "data").glob("synthetic-*"))
    [tables] = list((root / "embeddings").iterdir())
    return out, PreparedDataset(root), tables


def test_tables_cover_every_title_and_comment(embedded):
    out, ds, tables = embedded
    manifest = json.loads((tables / TABLES_MANIFEST).read_text())
    assert manifest["model"] == "tiny" and manifest["checkpoint"] is None and manifest["max_length"] == 16
    assert manifest["dataset"]["fingerprint"] == ds.manifest["fingerprint"]
    video, comment = np.load(tables / "videos.npy"), np.load(tables / "comments.npy")
    assert video.shape == (ds.num_videos + 1, 256) and comment.shape == (ds.num_comments + 1, 256)
    for table in (video, comment):
        assert np.isfinite(table).all()
        assert not table[0].any()  # padding row
        assert np.abs(table[1:]).sum(axis=1).min() > 0  # every item was written
        assert len(np.unique(table[1:].round(5), axis=0)) > len(table) // 2  # texts differ, rows differ
    [summary] = [json.loads(p.read_text()) for p in (out / "runs").glob("*/*embed-rec-popularity/embed.json")]
    assert summary["built"] and summary["rows"] == {"video": ds.num_videos + 1, "comment": ds.num_comments + 1}
    # the tiny LM's tokenizer lives beside the dataset, for every later stage to reuse
    assert list((ds.root / "llm").glob("tiny-*/tokenizer/lsvcr_tokenizer.json"))


def test_second_run_reuses_tables_whatever_the_batch_size(embedded):
    out, ds, tables = embedded
    mtimes = {p.name: p.stat().st_mtime_ns for p in tables.iterdir()}
    r = run_cli([*ARGS, "embed.batch_size=7"], out, env=ENV)
    assert r.returncode == 0, r.stderr
    assert "text tables: reusing" in r.stderr + r.stdout
    assert list((ds.root / "embeddings").iterdir()) == [tables]
    assert {p.name: p.stat().st_mtime_ns for p in tables.iterdir()} == mtimes

    reused = ensure_tables(compose_cfg("embed.batch_size=7"), ds)
    video, comment, manifest = reused.video, reused.comment, reused.manifest
    assert isinstance(video, np.memmap) and Path(video.filename) == tables / "videos.npy"
    np.testing.assert_array_equal(video, np.load(tables / "videos.npy"))
    np.testing.assert_array_equal(comment, np.load(tables / "comments.npy"))
    assert manifest["model"] == "tiny"
    assert {p.name: p.stat().st_mtime_ns for p in tables.iterdir()} == mtimes


def test_runs_started_together_build_the_tables_once(embedded):
    # a sweep's jobs on one machine all need the same new tables: one builds, the others wait and reuse
    # them (they used to race on one temporary file and fail)
    out, ds, _ = embedded
    args = [*ARGS, "embed.max_length=12"]  # tables no run has built yet
    runs = [finish_cli(p) for p in [start_cli(args, out, env=ENV) for _ in range(3)]]
    for r in runs:
        assert r.returncode == 0, r.stderr
    logs = [r.stderr + r.stdout for r in runs]
    assert sum("text tables: building them" in text for text in logs) == 1, logs
    assert sum("text tables: reusing" in text for text in logs) == 2
    tables = tables_dir(compose_cfg("embed.max_length=12"), ds)
    assert sorted(p.name for p in tables.iterdir()) == [".build.lock", "comments.npy", TABLES_MANIFEST, "videos.npy"]
    video = ensure_tables(compose_cfg("embed.max_length=12"), ds).video
    assert np.isfinite(video).all() and not video[0].any() and np.abs(video[1:]).sum(axis=1).min() > 0


def test_settings_that_change_values_change_the_directory(embedded):
    _, ds, tables = embedded
    assert tables_dir(compose_cfg(), ds) == tables
    assert tables_dir(compose_cfg("embed.batch_size=3"), ds) == tables
    others = {tables_dir(compose_cfg(o), ds) for o in
              ("embed.max_length=32", "model.llm.hidden_size=32", "seed=1", "embed.out_dim=64")}
    assert len(others) == 4 and tables not in others
    assert tables_dir(compose_cfg("embed.out_dir=/somewhere"), ds) == Path("/somewhere")


def test_mlp_seed_lets_a_seed_sweep_share_one_set_of_tables(embedded):
    # an un-aligned run's llm_emb_mlp is random: drawn from embed.mlp_seed when set, else from seed
    _, ds, tables = embedded
    assert tables_dir(compose_cfg("seed=5", "embed.mlp_seed=2024"), ds) == tables  # the default run: seed 2024
    drawn = ensure_tables(compose_cfg("seed=1"), ds).video
    fixed = ensure_tables(compose_cfg("seed=7", "embed.mlp_seed=1"), ds).video
    assert Path(fixed.filename) == Path(drawn.filename)  # reused, not built again
    assert not np.allclose(drawn, np.load(tables / "videos.npy"))  # another seed draws another projection
    with pytest.raises(ConfigError, match=r"embed.mlp_seed=-1: expected an int >= 0 or null"):
        tables_dir(compose_cfg("embed.mlp_seed=-1"), ds)


def test_out_dir_made_with_other_settings_is_refused(embedded):
    _, ds, tables = embedded
    with pytest.raises(ConfigError, match="embed.out_dir"):
        ensure_tables(compose_cfg(f"embed.out_dir={tables}", "embed.max_length=32"), ds)


def test_init_from_without_alignment_run_is_a_config_error(embedded, tmp_path):
    _, ds, _ = embedded
    with pytest.raises(ConfigError, match=r"no alignment checkpoint in .*give a run directory written by stage=align"):
        ensure_tables(compose_cfg(f"init_from={tmp_path}"), ds)


def test_tokenizer_texts_interleave_titles_and_comments(embedded):
    _, ds, _ = embedded
    titles, comments = ds.video_titles().to_pylist(), ds.comment_texts().to_pylist()
    texts = list(ds.texts())
    assert texts[:6] == [titles[0], comments[0], titles[1], comments[1], titles[2], comments[2]]
    assert sorted(texts) == sorted(titles + comments)
