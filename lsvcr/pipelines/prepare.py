"""stage=prepare: read a data source, validate it, write the prepared dataset.

    lsvcr stage=prepare                                   # the embedded synthetic world
    lsvcr stage=prepare data=synthetic data.num_users=5000
    lsvcr stage=prepare data=native data.root=/data/my_app
"""

from __future__ import annotations

import json
import logging
import resource
import time

from omegaconf import DictConfig

from lsvcr.pipelines.common import prepare, run_dir, write_json

log = logging.getLogger("lsvcr")


def run(cfg: DictConfig) -> dict:
    t0 = time.perf_counter()
    out = prepare(cfg, overwrite=True)
    manifest = json.loads((out / "manifest.json").read_text())
    summary = {
        "prepared_dir": str(out),
        "seconds": round(time.perf_counter() - t0, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "counts": manifest["counts"],
        "skipped": manifest["skipped"],
    }
    write_json(run_dir(cfg) / "prepare.json", summary)
    c = manifest["counts"]
    log.info(
        "prepared %s in %.1fs (peak RSS %.0f MB): %d users, %d videos, %d comments, "
        "%d video / %d comment interactions; samples %s",
        out, summary["seconds"], summary["peak_rss_mb"], c["users"], c["videos"], c["comments"],
        c["video_interactions"], c["comment_interactions"], c["samples"],
    )
    return summary
