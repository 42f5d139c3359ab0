"""Time and peak memory of `stage=prepare` on the synthetic world at a given scale.

    python experiments/bench_prepare.py                       # default world (1,000 users)
    python experiments/bench_prepare.py --scale 100           # 100x: 100,000 users, 150,000 videos

Runs the real CLI in a subprocess per scale (so peak RSS is that run's own) and prints one line
per scale: seconds, peak RSS, counts. :func:`run_prepare` is the measuring part, shared with
``bench_kuaicomt.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_prepare(overrides: list[str], out: Path) -> dict:
    """Run ``lsvcr stage=prepare <overrides>`` in a fresh process with outputs under ``out``.

    Returns the process's wall seconds, its own peak RSS (``os.wait4`` reports the rusage of that
    one child, unlike ``RUSAGE_CHILDREN``, which is the maximum over every child so far), the
    stage's ``prepare.json`` and the prepared dataset's manifest.
    """
    args = [sys.executable, "-m", "lsvcr.main", "stage=prepare", *overrides, "hydra/job_logging=disabled"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, cwd=REPO, env={**os.environ, "LSVCR_OUTPUT_DIR": str(out)})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, args)
    [summary] = [json.loads(p.read_text()) for p in Path(out).glob("runs/*/*/prepare.json")]
    manifest = json.loads((Path(summary["prepared_dir"]) / "manifest.json").read_text())
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "summary": summary, "manifest": manifest}


def bench(scale: float, out: Path) -> dict:
    users, videos = int(1000 * scale), int(1500 * scale)
    r = run_prepare([f"data.num_users={users}", f"data.num_videos={videos}"], out)
    summary = r["summary"]
    return {"scale": scale, "wall_s": round(r["wall_s"], 1), "prepare_s": summary["seconds"],
            "peak_rss_mb": round(r["peak_rss_mb"]), "counts": summary["counts"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, nargs="+", default=[1.0])
    args = ap.parse_args()
    for scale in args.scale:
        with tempfile.TemporaryDirectory() as tmp:
            r = bench(scale, Path(tmp))
        c = r["counts"]
        print(f"scale {r['scale']:g}: prepare {r['prepare_s']:.1f}s (process {r['wall_s']:.1f}s), "
              f"peak RSS {r['peak_rss_mb']} MB; {c['users']} users, {c['videos']} videos, {c['comments']} comments, "
              f"{c['video_interactions']} video / {c['comment_interactions']} comment interactions, "
              f"samples {c['samples']}", flush=True)


if __name__ == "__main__":
    main()
