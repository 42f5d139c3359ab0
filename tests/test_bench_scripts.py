"""experiments/bench_*.py helpers that need no model: log parsing, skipping a missing model directory."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO, load_experiment


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


def test_bench_kuaicomt_prepares_what_it_generated(tmp_path):
    """The script at a tiny size: files in the release's schema and proportions, and a printed
    line whose counts are those of the generated files (and of the prepared manifest)."""
    import json

    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    bench_kuaicomt = load_experiment("bench_kuaicomt")
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "bench_kuaicomt.py"), "--video-rows", "2000",
                           "3000", "--work-dir", str(tmp_path), "--keep-files"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [x for x in done.stdout.splitlines() if x.startswith("video rows 2,000: ")]
    assert "EXTRAPOLATED, not measured (linear fit over 2 sizes" in done.stdout and "119,696,682 video rows" in done.stdout

    root = tmp_path / "rows2000" / "kuaicomt"
    sz = bench_kuaicomt.Sizes.scaled(2000)
    vi = pacsv.read_csv(root / "user_video_inter.csv")
    ci = pacsv.read_csv(root / "user_comment_inter.csv")
    assert vi.column_names == bench_kuaicomt.VIDEO_COLUMNS and vi.num_rows == 2000
    assert ci.column_names == ["user_id", "comment_id", "time_stamp", "photo_id", "is_like", "is_reply"]
    assert pacsv.read_csv(root / "comment_features.csv").num_rows == sz.comments == round(16_352_904 * 2000 / 119_696_682)
    assert pacsv.read_csv(root / "video_features.csv").num_rows == sz.videos and ci.num_rows == sz.comment_rows
    kept = vi.filter(pc.or_(pc.greater(vi["long_view"], 0), pc.greater(vi["is_like"], 0)))
    users = len(set(kept["user_id"].to_pylist()) | set(ci["user_id"].to_pylist()))
    expected = (f"prepared {users:,} users, {sz.videos:,} videos, {sz.comments:,} comments, {kept.num_rows:,} video / "
                f"{ci.num_rows:,} comment interactions (signal-filtered {{'comment_interactions': 0, "
                f"'video_interactions': {2000 - kept.num_rows}}}, skipped {{}})")
    assert line.endswith(expected), line
    assert 0 < kept.num_rows < 2000  # the signal filter did something

    [summary] = [json.loads(p.read_text()) for p in (tmp_path / "rows2000" / "out").glob("runs/*/*/prepare.json")]
    rss = float(line.split("peak RSS ")[1].split(" MB")[0].replace(",", ""))
    assert summary["counts"]["video_interactions"] == kept.num_rows and 100 < rss < 4000
