"""Time and peak memory of `stage=prepare data=kuaicomt` on generated files in KuaiComt's schema.

    python experiments/bench_kuaicomt.py                                # 1 M, 5 M and 20 M video rows
    python experiments/bench_kuaicomt.py --video-rows 2e7 --work-dir /tmp/kc --keep-files

Per size it writes the four files ``data=kuaicomt`` reads (``user_video_inter.csv``,
``user_comment_inter.csv``, ``video_features.csv``, ``comment_features.csv``, every column of the
release), runs the real CLI on them in a fresh process (``experiments/bench_prepare.py``'s
:func:`run_prepare`: the child's own peak RSS) and prints one line: rows, seconds, rows/s, peak
RSS, the stage's phases (read, validate, index, samples, write) from its manifest, and the counts.
Then a linear least-squares fit of peak RSS and seconds against video rows, evaluated at the
release's 119.7 M rows: an extrapolation, not a measurement.

Proportions (the release's published statistics: 34,701 users, 82,452 videos, 16,352,904
comments, 119,696,682 video impressions, 1,002,672 comment interactions), per video row:
users 2.90e-4, videos 6.89e-4, comments 0.1366, comment interactions 8.38e-3. So every size keeps
the release's ~3,450 impressions per user and ~198 comments per video (tiny sizes are floored at
3 users, 5 videos, 5 comments and 5 comment interactions).

What the release does not publish is assumed: signal rates per impression (long_view 0.40,
is_click 0.45, is_like 0.03, the other flags under 1%, comment section opened 13.4% =
16.03 M / 119.7 M), so ``data.video_signals=[long_view, is_like]`` keeps about 42% of the rows;
every comment interaction is a like or a reply (the release only lists those). Rows are in log
order (time ascending over the whole file, users interleaved), which ``data.timestamps=sort``
(the kuaicomt preset) sorts per user. ``time_ms`` is written like pandas writes a float64
column (``1696141175214.0``), ``time_stamp`` in seconds. Captions: 5% empty; comment texts: 2%
empty; ids are distinct 10-12 digit integers; video and comment popularity are skewed (Zipf-like
views, Pareto likes). Every row is generated and written in numpy/Arrow chunks of 1 M rows,
never a Python object per row.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prepare import run_prepare  # noqa: E402

RELEASE = {"video_rows": 119_696_682, "users": 34_701, "videos": 82_452, "comments": 16_352_904,
           "comment_rows": 1_002_672}
FLOOR = {"users": 3, "videos": 5, "comments": 5, "comment_rows": 5}
CHUNK = 1_000_000
T0_MS = 1_696_003_200_000  # 2023-09-30, the release's first day
SPAN_MS = 35 * 86_400_000  # to 2023-11-03
SIGNALS = {"is_click": 0.45, "is_like": 0.03, "is_follow": 0.003, "is_comment": 0.005, "is_forward": 0.002,
           "is_collect": 0.002, "is_hate": 0.001}
LONG_VIEW, OPEN_COMMENTS = 0.40, 0.134
VIDEO_COLUMNS = ["user_id", "video_id", "p_hourmin", "time_ms", *SIGNALS, "long_view", "play_time_ms",
                 "duration_ms", "profile_stay_time", "comment_stay_time"]
CATEGORIES = ["music", "dance", "food", "games", "pets", "travel", "news", "sports", "comedy", "beauty",
              "film", "cars", "education", "tech", "family", "fashion", "health", "art", "drama", "life"]
# 2,000 common CJK code points: 3 UTF-8 bytes each, like the release's Chinese text
_VOCAB = np.frombuffer("".join(chr(0x4E00 + i) for i in range(2000)).encode(), np.uint8).reshape(-1, 3)


@dataclass(frozen=True)
class Sizes:
    video_rows: int
    users: int
    videos: int
    comments: int
    comment_rows: int

    @classmethod
    def scaled(cls, video_rows: int) -> "Sizes":
        """The release's proportions at ``video_rows`` rows (module docstring)."""
        f = video_rows / RELEASE["video_rows"]
        return cls(video_rows, **{k: max(FLOOR[k], round(RELEASE[k] * f)) for k in FLOOR})


def _ids(n: int, base: int, mult: int, modulus: int) -> np.ndarray:
    """``n`` distinct ids ``base + (k * mult) % modulus`` (``mult`` coprime with ``modulus > n``)."""
    return base + (np.arange(n, dtype=np.int64) * mult) % modulus


def _texts(rng: np.random.Generator, n: int, lo: int, hi: int, empty: float) -> pa.StringArray:
    """``n`` random CJK strings of ``lo..hi`` characters, a share ``empty`` of them empty."""
    chars = rng.integers(lo, hi + 1, n)
    chars[rng.random(n) < empty] = 0
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(chars * 3, out=offsets[1:])
    data = _VOCAB[rng.integers(0, len(_VOCAB), int(chars.sum()))].ravel()
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def _float_text(values: np.ndarray) -> pa.Array:
    """Integral floats as pandas writes a float64 column: ``1696141175214.0``."""
    return pc.binary_join_element_wise(pc.cast(pa.array(values, pa.int64()), pa.string()), ".0", "")


def _write(path: Path, chunks) -> int:
    """Write the tables yielded by ``chunks`` as one CSV file (an unquoted header, as pandas does)."""
    with open(path, "wb") as f:
        writer = None
        for table in chunks:
            if writer is None:
                f.write((",".join(table.column_names) + "\n").encode())
                writer = pacsv.CSVWriter(f, table.schema, write_options=pacsv.WriteOptions(
                    include_header=False, quoting_style="none"))
            writer.write_table(table)
        writer.close()
    return path.stat().st_size


def _zipf(n: int, s: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** s
    return p / p.sum()


def _video_chunks(rng, sz: Sizes, user_ids, video_ids, video_p, user_p, duration_ms):
    step = SPAN_MS // sz.video_rows  # >= 1 ms: times strictly ascending, so no duplicate rows
    for start in range(0, sz.video_rows, CHUNK):
        n = min(CHUNK, sz.video_rows - start)
        t = T0_MS + (start + np.arange(n)) * step + rng.integers(0, step, n)
        v = rng.choice(sz.videos, n, p=video_p)
        cols = {"user_id": user_ids[rng.choice(sz.users, n, p=user_p)], "video_id": video_ids[v],
                "p_hourmin": (t // 3_600_000 % 24) * 100 + t // 60_000 % 60, "time_ms": _float_text(t)}
        cols.update({name: (rng.random(n) < rate).astype(np.int8) for name, rate in SIGNALS.items()})
        long_view = rng.random(n) < LONG_VIEW
        threshold = np.minimum(duration_ms[v], 18_000)
        play = np.where(long_view, threshold * (1 + rng.exponential(0.5, n)), threshold * rng.random(n))
        opened = rng.random(n) < OPEN_COMMENTS
        cols.update(long_view=long_view.astype(np.int8), play_time_ms=_float_text(play.astype(np.int64)),
                    duration_ms=_float_text(duration_ms[v]),
                    profile_stay_time=np.where(rng.random(n) < 0.01, rng.integers(1, 60_000, n), 0),
                    comment_stay_time=np.where(opened, rng.integers(1_000, 120_000, n), 0))
        yield pa.table({name: cols[name] for name in VIDEO_COLUMNS})


def generate(root: Path, sz: Sizes, seed: int = 0) -> dict[str, int]:
    """Write the four KuaiComt files for ``sz`` under ``root``; returns their sizes in bytes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    user_ids = _ids(sz.users, 100_000_000, 7_919, 3_000_000_000)
    video_ids = _ids(sz.videos, 10_000_000_000, 104_729, 100_000_000_000)
    comment_ids = _ids(sz.comments, 400_000_000_000, 1_299_709, 100_000_000_000)
    video_p, user_p = _zipf(sz.videos, 0.8), rng.lognormal(0, 1, sz.users)
    user_p /= user_p.sum()
    duration_ms = np.round(rng.lognormal(np.log(30_000), 0.8, sz.videos)).astype(np.int64)
    sizes = {}
    category = pa.array(np.array(CATEGORIES)[rng.integers(0, len(CATEGORIES), sz.videos)])
    category = pc.if_else(pa.array(rng.random(sz.videos) < 0.03), pa.scalar(None, pa.string()), category)
    sizes["video_features.csv"] = _write(root / "video_features.csv", [pa.table({
        "video_id": video_ids, "author_id": rng.integers(1, 10**9, sz.videos), "video_type": pa.array(
            np.where(rng.random(sz.videos) < 0.05, "AD", "NORMAL")),
        "upload_dt": pa.array(np.datetime_as_string(np.datetime64("2023-09-01") + rng.integers(0, 60, sz.videos))),
        "caption": _texts(rng, sz.videos, 4, 30, 0.05), "duration": np.round(duration_ms / 1000, 1),
        "category": category})])
    comment_video = rng.choice(sz.videos, sz.comments, p=_zipf(sz.videos, 0.5))
    likes = np.minimum(rng.pareto(1.2, sz.comments) * 3, 10**6).astype(np.int64)
    sizes["comment_features.csv"] = _write(root / "comment_features.csv", (pa.table({
        "comment_id": comment_ids[s], "comment_content": _texts(rng, len(comment_ids[s]), 1, 40, 0.02),
        "video_id": video_ids[comment_video[s]], "comment_like_cnt": likes[s],
        "comment_reply_out": rng.poisson(0.5, len(comment_ids[s])),
        "show_comment_cnt_td": likes[s] * 5 + rng.integers(0, 100, len(comment_ids[s])),
    }) for s in (slice(a, a + CHUNK) for a in range(0, sz.comments, CHUNK))))
    sizes["user_video_inter.csv"] = _write(root / "user_video_inter.csv",
                                           _video_chunks(rng, sz, user_ids, video_ids, video_p, user_p, duration_ms))
    n = sz.comment_rows
    step = SPAN_MS // 1000 // n
    comment = rng.choice(sz.comments, n, p=(likes + 1) / (likes + 1).sum())
    reply = rng.random(n) < 0.1
    sizes["user_comment_inter.csv"] = _write(root / "user_comment_inter.csv", [pa.table({
        "user_id": user_ids[rng.choice(sz.users, n, p=user_p)], "comment_id": comment_ids[comment],
        "time_stamp": T0_MS // 1000 + np.arange(n) * step + rng.integers(0, max(step, 1), n),
        "photo_id": video_ids[comment_video[comment]],
        "is_like": (~reply | (rng.random(n) < 0.3)).astype(np.int8), "is_reply": reply.astype(np.int8)})])
    return sizes


def bench(sz: Sizes, root: Path, out: Path) -> dict:
    """Generate ``sz`` under ``root`` and prepare it with outputs under ``out``."""
    t0 = time.perf_counter()
    files = generate(root, sz)
    gen_s = time.perf_counter() - t0
    r = run_prepare(["data=kuaicomt", f"data.root={root}"], out)
    m = r["manifest"]
    phases = {"read": m["read_seconds"], "validate": m["validate_seconds"], **m["seconds"]}
    phases["write"] = max(0.0, r["summary"]["seconds"] - sum(phases.values()))
    return {"sizes": sz, "generate_s": gen_s, "file_mb": sum(files.values()) / 2**20, "wall_s": r["wall_s"],
            "stage_s": r["summary"]["seconds"], "peak_rss_mb": r["peak_rss_mb"], "phases": phases,
            "counts": m["counts"], "skipped": {k: v for k, v in m["skipped"].items() if v},
            "signal_filtered": m["source"]["signal_filtered"]}


def line(r: dict) -> str:
    sz, c = r["sizes"], r["counts"]
    phases = " / ".join(f"{k} {v:.1f}" for k, v in r["phases"].items())
    return (f"video rows {sz.video_rows:,}: {r['wall_s']:.1f} s (stage {r['stage_s']:.1f} s), "
            f"{sz.video_rows / r['wall_s']:,.0f} rows/s, peak RSS {r['peak_rss_mb']:,.0f} MB; phases s: {phases}; "
            f"files {r['file_mb']:,.0f} MB (generated in {r['generate_s']:.1f} s); prepared {c['users']:,} users, "
            f"{c['videos']:,} videos, {c['comments']:,} comments, {c['video_interactions']:,} video / "
            f"{c['comment_interactions']:,} comment interactions (signal-filtered {r['signal_filtered']}, "
            f"skipped {r['skipped']})")


def extrapolate(results: list[dict], rows: int = RELEASE["video_rows"]) -> str:
    """Least-squares line through (video rows, peak RSS) and (video rows, seconds), at ``rows``."""
    x = np.array([r["sizes"].video_rows for r in results], float)
    rss, sec = np.polyfit(x, [r["peak_rss_mb"] for r in results], 1), np.polyfit(x, [r["wall_s"] for r in results], 1)
    return (f"EXTRAPOLATED, not measured (linear fit over {len(x)} sizes, {x.min():,.0f}-{x.max():,.0f} rows): "
            f"{rows:,} video rows -> peak RSS {np.polyval(rss, rows) / 1024:.1f} GB "
            f"({rss[0] * 1e6:.0f} MB per million rows + {rss[1]:.0f} MB), {np.polyval(sec, rows) / 60:.1f} min "
            f"({sec[0] * 1e6:.1f} s per million rows)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video-rows", type=float, nargs="+", default=[1e6, 5e6, 2e7])
    ap.add_argument("--work-dir", type=Path, default=None, help="where files and outputs go (default: a temp dir)")
    ap.add_argument("--keep-files", action="store_true", help="keep the generated files and prepared datasets")
    args = ap.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_kuaicomt."))
    results = []
    try:
        for rows in args.video_rows:
            sz = Sizes.scaled(int(rows))
            run = work / f"rows{sz.video_rows}"
            results.append(bench(sz, run / "kuaicomt", run / "out"))
            print(line(results[-1]), flush=True)
            if not args.keep_files:
                shutil.rmtree(run)
    finally:
        if not args.keep_files and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    if len(results) > 1:
        print(extrapolate(results), flush=True)


if __name__ == "__main__":
    main()
