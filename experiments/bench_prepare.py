"""Time and peak memory of `stage=prepare` on the synthetic world at a given scale.

    python experiments/bench_prepare.py                       # default world (1,000 users)
    python experiments/bench_prepare.py --scale 100           # 100x: 100,000 users, 150,000 videos

Runs the real CLI in a subprocess per scale (so peak RSS is that run's own) and prints one line
per scale: seconds, peak RSS, counts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bench(scale: float, out: Path) -> dict:
    users, videos = int(1000 * scale), int(1500 * scale)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lsvcr.main", "stage=prepare", f"data.num_users={users}",
                    f"data.num_videos={videos}", "hydra/job_logging=disabled"],
                   cwd=REPO, env={**os.environ, "LSVCR_OUTPUT_DIR": str(out)}, check=True)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    [summary] = [json.loads(p.read_text()) for p in out.glob("runs/*/*/prepare.json")]
    return {"scale": scale, "wall_s": round(wall, 1), "prepare_s": summary["seconds"],
            "peak_rss_mb": round(peak_mb), "counts": summary["counts"]}


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
