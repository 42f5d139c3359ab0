"""experiments/bench_*.py helpers that need no model: log parsing, skipping a missing model directory."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from conftest import REPO


def load_experiment(name: str):
    """``experiments/<name>.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_experiment("bench_align")


def test_bench_times_steps_from_the_stage_log(bench):
    log = ("[2026-11-30 05:21:31,629][lsvcr][INFO] - aligning smollm2_135m + lsvcr on rec+comm_rank\n"
           "[2026-11-30 05:23:08,946][lsvcr][INFO] - step 1/3: loss 6.5146, lm_loss 5.4868\n"
           "[2026-11-30 05:23:10,446][lsvcr][INFO] - step 2/3: loss 6.7243, lm_loss 5.1\n"
           "[2026-11-30 05:23:11,946][lsvcr][INFO] - step 3/3: loss 6.1, lm_loss 5.0\n")
    times = bench.step_times(log)
    assert sorted(times) == [1, 2, 3]
    assert times[3] - times[1] == pytest.approx(3.0)


def test_bench_skips_a_missing_smollm2_dir(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "bench_align.py"), "--models", "smollm2_135m",
                           "--smollm2-dir", str(tmp_path / "absent")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "smollm2_135m: skipped, no model directory" in done.stdout


def test_bench_embed_reads_ml1m_titles_with_genre(tmp_path):
    bench_embed = load_experiment("bench_embed")
    item = tmp_path / "ml-1m.item"
    item.write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq\n"
                    "1\tToy Story\t1995\tAnimation Children's Comedy\n2\tJumanji\t1995\tAdventure\n")
    assert bench_embed.ml1m_texts(item) == ["Toy Story Animation Children's Comedy", "Jumanji Adventure"]


def test_bench_embed_skips_a_missing_model_dir(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "bench_embed.py"), "--models", "minilm",
                           "--sources", "ml1m", "--assets-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "minilm: skipped, no model directory" in done.stdout and "lsvcr-assets fetch minilm-l6-v2" in done.stdout
