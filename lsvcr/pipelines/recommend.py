"""stage=recommend: top-k from an exported artifact (:mod:`lsvcr.deploy.artifact`), no LLM and no training config.

    lsvcr stage=recommend recommend.artifact=artifacts/lsvcr-v1 recommend.users=users.txt recommend.k=20
    lsvcr stage=recommend recommend.artifact=artifacts/lsvcr-v1 recommend.requests=requests.jsonl recommend.k=10
    lsvcr stage=recommend ... recommend.format=csv recommend.out=recs.csv

``recommend.users``: a text file, one raw user id per line -> the top-k videos of each user.
``recommend.requests``: JSON lines ``{"user": <id>, "video": <id>}`` -> the top-k comments under
that video for that user. One output row per input line, in order: an unknown id or a malformed
line gives a row with ``error`` and the batch continues; a user without a video history gets the
most-watched videos with ``fallback: popularity``. Output: JSON lines (default) or CSV, at
``recommend.out`` (default ``<run dir>/recommendations.<format>``).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

from omegaconf import DictConfig
from tqdm.auto import tqdm

from lsvcr.deploy.artifact import load_artifact
from lsvcr.errors import ConfigError, checked_bool, checked_int
from lsvcr.pipelines.common import run_dir, write_json

log = logging.getLogger("lsvcr")

FORMATS = ("jsonl", "csv")


def _settings(cfg: DictConfig) -> dict:
    r = cfg.recommend
    if not r.get("artifact"):
        raise ConfigError("recommend.artifact=null: give an artifact directory written by stage=export")
    if bool(r.get("users")) == bool(r.get("requests")):
        raise ConfigError("give exactly one of recommend.users (a file of user ids: top-k videos) and "
                          "recommend.requests (JSON lines of user and video: top-k comments)")
    if r.get("format", "jsonl") not in FORMATS:
        raise ConfigError(f"recommend.format={r.format}: expected one of {', '.join(FORMATS)}")
    source = Path(str(r.users or r.requests)).expanduser()
    if not source.is_file():
        raise ConfigError(f"recommend.{'users' if r.get('users') else 'requests'}={source}: no such file")
    return {"k": checked_int(r.k, "recommend.k", 1, "an int >= 1"),
            "batch_size": checked_int(r.batch_size, "recommend.batch_size", 1, "an int >= 1"),
            "exclude_seen": checked_bool(r.exclude_seen, "recommend.exclude_seen"),
            "verify": checked_bool(r.verify, "recommend.verify"), "format": r.get("format", "jsonl"),
            "source": source, "videos": bool(r.get("users"))}


def _requests(path: Path) -> list[dict]:
    """One dict per non-empty line: ``{"user", "video"}``, or ``{"line", "error"}`` for a bad line."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            req = json.loads(line)
        except json.JSONDecodeError as e:
            out.append({"line": n, "error": f"{path}:{n}: invalid JSON ({e.msg})"})
            continue
        if not isinstance(req, dict) or "user" not in req or "video" not in req:
            out.append({"line": n, "error": f"{path}:{n}: expected an object with user and video"})
            continue
        out.append({"user": req["user"], "video": req["video"]})
    return out


def run(cfg: DictConfig) -> dict:
    s = _settings(cfg)  # every bad key fails before the artifact is read
    t0 = time.perf_counter()
    art = load_artifact(cfg.recommend.artifact, verify=s["verify"])
    rows: list[dict] = []
    if s["videos"]:
        users = [line.strip() for line in s["source"].read_text().splitlines() if line.strip()]
        for lo in tqdm(range(0, len(users), s["batch_size"]), desc="recommend videos", unit="batch"):
            rows += art.recommend_videos(users[lo:lo + s["batch_size"]], k=s["k"], exclude_seen=s["exclude_seen"],
                                         batch_size=s["batch_size"])
    else:
        for req in tqdm(_requests(s["source"]), desc="rank comments", unit="request"):
            rows.append(req if "error" in req else art.rank_comments(req["user"], req["video"], k=s["k"]))
    path = run_dir(cfg)
    out = Path(cfg.recommend.out) if cfg.recommend.get("out") else path / f"recommendations.{s['format']}"
    _write(out, rows, s["format"], s["videos"])
    summary = {"out": str(out), "rows": len(rows), "errors": sum("error" in r for r in rows),
               "fallback": sum("fallback" in r for r in rows), "seconds": round(time.perf_counter() - t0, 3)}
    write_json(path / "recommend.json", summary)
    log.info("%d rows (%d errors, %d popularity fallbacks) in %.2fs: %s", summary["rows"], summary["errors"],
             summary["fallback"], summary["seconds"], out)
    return summary


def _write(out: Path, rows: list[dict], fmt: str, videos: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", newline="") as f:
        if fmt == "jsonl":
            for row in rows:
                f.write(json.dumps(row, default=str) + "\n")
        else:  # one line per recommended item; a row without items keeps one line with its error
            keys = ["user"] + ([] if videos else ["video"])
            writer = csv.writer(f)
            writer.writerow([*keys, "rank", "item", "score", "fallback", "error"])
            for row in rows:
                ids = [row.get(k, "") for k in keys]
                if "error" in row:
                    writer.writerow([*ids, "", "", "", "", row["error"]])
                    continue
                scores = row.get("scores") or [""] * len(row["items"])
                for rank, (item, score) in enumerate(zip(row["items"], scores), 1):
                    writer.writerow([*ids, rank, item, score, row.get("fallback", ""), ""])
    tmp.replace(out)
