"""What ships: a fine-tuned SR per task with its frozen tables and the dataset's histories, no LLM.

An artifact directory (written by :func:`write_artifact`, read by :func:`load_artifact`)::

    manifest.json               format, version, lsvcr and torch versions, tasks, dataset counts,
                                and for every other file its size, SHA-256 (and an array's shape, dtype)
    data/                       the prepared dataset's manifest, id maps (users/videos/comments.parquet)
                                and interaction arrays (arrays/*.npy): the known users' histories
    text/<kind>-<sha>.npy       the SR's input text tables (``llm_emb_mlp`` already applied where the
                                run had one), stored once when two tasks share them
    <task>/sr.safetensors       the SR's weights
    <task>/config.json          its class and settings, the history lengths, the tables it reads
    rec/videos.npy              every video's candidate representation ``[V+1, d]``
    comm_rank/comments.npy      every comment's candidate representation ``[C+1, d]``

It is written under a temporary name beside the target and renamed at the end, so a crash leaves
either no artifact or a whole one. Loading checks the manifest, every file's size (a truncated copy
fails at once) and, with ``verify=True`` (the default), its SHA-256, and every array's shape; any
mismatch is one :class:`ArtifactError` naming the file. The SR class named by a config must be a
:class:`~lsvcr.models.sr.layers.SequentialRecommender` of this package: an artifact cannot make the
loader construct anything else.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lsvcr.data.batch import HistoryBatch
from lsvcr.data.history import HistoryGatherer, ragged_index
from lsvcr.data.store import PreparedDataset, SampleSet
from lsvcr.errors import DataError
from lsvcr.models.recommender import Recommender, frozen_table
from lsvcr.models.sr.inputs import lookup_inputs
from lsvcr.models.sr.layers import SequentialRecommender
from lsvcr.tasks import TASK_CLASSES
from lsvcr.utils.ranks import blocked_topk
from lsvcr.version import __version__

FORMAT, VERSION = "lsvcr-artifact", 1
MANIFEST = "manifest.json"
DATA_FILES = ("manifest.json", "users.parquet", "videos.parquet", "comments.parquet")
_CHUNK_ROWS = 1 << 16


class ArtifactError(DataError):
    """A missing, truncated, altered or mismatched artifact file."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@torch.no_grad()
def _write_rows(path: Path, rows: int, fn, width: int) -> None:
    """``[rows, width]`` float32 ``.npy`` from ``fn(lo, hi) -> Tensor`` over row chunks."""
    out = np.lib.format.open_memmap(path, "w+", np.float32, (rows, width))
    for lo in range(0, rows, _CHUNK_ROWS):
        hi = min(rows, lo + _CHUNK_ROWS)
        out[lo:hi] = fn(lo, hi).detach().float().cpu().numpy()
    out.flush()
    del out


def write_artifact(out: str | Path, models: dict[str, Recommender], ds: PreparedDataset, sr_configs: dict[str, dict],
                   max_phis_len: int, max_chis_len: int, overwrite: bool = False) -> Path:
    """Write the artifact of ``models`` (task name -> the fine-tuned model of that task, e.g.
    ``{"rec": ..., "comm_rank": ...}``) on ``ds`` to ``out``.

    Args:
        sr_configs: per task, the SR's resolved ``model/sr`` node (``_target_`` and keyword arguments).
        max_phis_len, max_chis_len: the history lengths the models were trained with.
        overwrite: replace an existing ``out`` (else it is an error).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise ArtifactError(f"{out}: exists; choose another directory or overwrite it")
    if not models:
        raise ArtifactError(f"{out}: nothing to export (no task's model given)")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_all(tmp, models, ds, sr_configs, max_phis_len, max_chis_len)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed export leaves nothing behind
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _write_all(tmp: Path, models: dict[str, Recommender], ds: PreparedDataset, sr_configs: dict[str, dict],
               max_phis_len: int, max_chis_len: int) -> None:
    (tmp / "data" / "arrays").mkdir(parents=True)
    (tmp / "text").mkdir()
    for name in DATA_FILES:
        shutil.copy2(ds.root / name, tmp / "data" / name)
    for path in sorted((ds.root / "arrays").glob("*.npy")):
        shutil.copy2(path, tmp / "data" / "arrays" / path.name)
    for task, model in models.items():
        _write_task(tmp, task, model.eval(), sr_configs[task], ds.num_videos, max_phis_len, max_chis_len)
    files = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        entry = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        if path.suffix == ".npy":
            arr = np.load(path, mmap_mode="r")
            entry |= {"shape": list(arr.shape), "dtype": str(arr.dtype)}
        files[path.relative_to(tmp).as_posix()] = entry
    manifest = {"format": FORMAT, "version": VERSION, "lsvcr_version": __version__,
                "torch_version": torch.__version__, "created": datetime.datetime.now(datetime.UTC).isoformat(),
                "tasks": sorted(models), "dataset": {"fingerprint": ds.manifest.get("fingerprint"),
                                                     "users": ds.num_users, "videos": ds.num_videos,
                                                     "comments": ds.num_comments},
                "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _write_task(tmp: Path, task: str, model: Recommender, sr_config: dict, num_videos: int, max_phis_len: int,
                max_chis_len: int) -> None:
    sr = model.sr
    (tmp / task).mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in sr.state_dict().items()}, tmp / task / "sr.safetensors")
    tables = {}
    if sr.use_text:  # the SR's input rows: the run's llm_emb_mlp applied once here, not per request
        for kind, table in (("video", model.video_table), ("comment", model.comment_table)):
            def rows(lo, hi, table=table):
                part = table[lo:hi].to(torch.float32)
                return part if model.projection is None else model.projection(part)
            width = rows(0, 1).shape[1]
            staged = tmp / "text" / f".{task}-{kind}.npy"
            _write_rows(staged, table.shape[0], rows, width)
            final = tmp / "text" / f"{kind}-{_sha256(staged)[:16]}.npy"
            if final.exists():  # another task reads the same rows: store them once
                staged.unlink()
            else:
                staged.rename(final)
            tables[kind] = final.relative_to(tmp).as_posix()
    with torch.no_grad():
        if TASK_CLASSES[task].ranks_comments:  # candidates: the comments under a video
            d = model.comments(torch.arange(0, 1)).shape[1]
            _write_rows(tmp / task / "comments.npy", model.comment_table.shape[0],
                        lambda lo, hi: model.comments(torch.arange(lo, hi)), d)
        else:  # candidates: every video
            videos = model.all_videos()
            d = videos.shape[1]
            _write_rows(tmp / task / "videos.npy", videos.shape[0], lambda lo, hi: videos[lo:hi], d)
    config = {"task": task, "sr": {k: v for k, v in sr_config.items() if k != "name"}, "name": sr_config.get("name"),
              "num_videos": int(num_videos),
              "max_phis_len": int(max_phis_len), "max_chis_len": int(max_chis_len), "tables": tables, "dim": int(d)}
    (tmp / task / "config.json").write_text(json.dumps(config, indent=1))


# ---------------------------------------------------------------- loading


def _inside(root: Path, rel: str, where: Path) -> Path:
    """``root / rel``, refused when ``rel`` leads outside ``root`` (an absolute path, ``..``)."""
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ArtifactError(f"{where}: the path {rel!r} leads outside the artifact directory {root}")
    return path


def _check_files(root: Path, manifest: dict, verify: bool) -> None:
    for rel, entry in manifest["files"].items():
        path = _inside(root, rel, root / MANIFEST)
        if not path.is_file():
            raise ArtifactError(f"{path}: missing from the artifact ({root / MANIFEST} lists it)")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise ArtifactError(f"{path}: {size} bytes, the manifest says {entry['bytes']} (truncated or replaced); "
                                "export the artifact again")
        if verify and _sha256(path) != entry["sha256"]:
            raise ArtifactError(f"{path}: its SHA-256 differs from the manifest's (the file was altered); "
                                "export the artifact again")
        if "shape" in entry:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if list(arr.shape) != entry["shape"] or str(arr.dtype) != entry["dtype"]:
                raise ArtifactError(f"{path}: shape {list(arr.shape)} {arr.dtype}, the manifest says "
                                    f"{entry['shape']} {entry['dtype']}")


def _sr_class(name: str, where: Path) -> type:
    module, _, attr = str(name).rpartition(".")
    if not module.startswith("lsvcr."):
        raise ArtifactError(f"{where}: sr._target_={name} is not an lsvcr SR")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        raise ArtifactError(f"{where}: sr._target_={name} names no class of this lsvcr version") from None
    if not (isinstance(cls, type) and issubclass(cls, SequentialRecommender)):
        raise ArtifactError(f"{where}: sr._target_={name} is not a SequentialRecommender")
    return cls


@dataclass
class TaskModel:
    """One exported task: the SR (eval mode), its input text tables (memory-mapped, or None for an
    ID-only SR), its candidates' representations and its settings."""

    sr: SequentialRecommender
    video_text: torch.Tensor | None
    comment_text: torch.Tensor | None
    candidates: torch.Tensor
    config: dict

    @torch.no_grad()
    def users(self, history: HistoryBatch, read_out: str) -> torch.Tensor:
        """``[B, d]`` user representations (``read_out``: ``video_user`` or ``comment_user``),
        divided by the SR's temperature, so ``user @ candidates.T`` are its scores."""
        inputs = lookup_inputs(history, self.video_text, self.comment_text)
        return getattr(self.sr, read_out)(inputs) / self.sr.temperature


def _load_task(root: Path, task: str) -> TaskModel:
    where = root / task / "config.json"
    config = json.loads(where.read_text())
    kwargs = {k: v for k, v in config["sr"].items() if k != "_target_"}
    sr = _sr_class(config["sr"].get("_target_"), where)(**kwargs | {"num_videos": config["num_videos"]})
    try:
        sr.load_state_dict(load_file(root / task / "sr.safetensors"))
    except RuntimeError as e:
        raise ArtifactError(f"{root / task / 'sr.safetensors'}: does not fit {where} ({str(e).splitlines()[0]})") from None
    tables = {k: frozen_table(np.load(_inside(root, rel, where), mmap_mode="r")) for k, rel in config["tables"].items()}
    name = "comments.npy" if TASK_CLASSES[task].ranks_comments else "videos.npy"
    candidates = frozen_table(np.load(root / task / name, mmap_mode="r"))
    return TaskModel(sr.eval(), tables.get("video"), tables.get("comment"), candidates, config)


class Artifact:
    """A loaded artifact (:func:`load_artifact`): top-k videos for users, top-k comments under a
    video for a user, on the CPU by default. Ids are the dataset's raw ids."""

    def __init__(self, root: Path, manifest: dict, tasks: dict[str, TaskModel]):
        self.root, self.manifest, self.tasks = root, manifest, tasks
        self.data = PreparedDataset(root / "data")
        self._ids: dict[str, dict] = {}
        self._raw: dict[str, np.ndarray] = {}
        self._by_views: np.ndarray | None = None
        self._gatherers: dict[str, HistoryGatherer] = {}  # per task: its hot-comment index is built once

    # ------------------------------------------------------------ ids

    def raw_ids(self, kind: str) -> np.ndarray:
        """Raw ids of ``kind`` (users, videos, comments); element i is index i+1."""
        if kind not in self._raw:
            self._raw[kind] = np.asarray(self.data.raw_ids(kind).to_pylist(), dtype=object)
        return self._raw[kind]

    def index(self, kind: str, raw_id) -> int | None:
        """The index of ``raw_id`` (compared as a string), or None when the dataset does not know it."""
        if kind not in self._ids:
            self._ids[kind] = {str(r): i + 1 for i, r in enumerate(self.raw_ids(kind))}
        return self._ids[kind].get(str(raw_id))

    def _task(self, name: str) -> TaskModel:
        if name not in self.tasks:
            raise ArtifactError(f"{self.root}: no {name} model in this artifact (it has {', '.join(self.tasks)}); "
                                f"export one with export.{name}=<finetune run>")
        return self.tasks[name]

    # ------------------------------------------------------------ histories

    def histories(self, users: np.ndarray, target: np.ndarray | None = None, task: str = "rec") -> HistoryBatch:
        """Both histories of dataset users (indices), every interaction they have, as the model
        of ``task`` reads them; ``target`` is the video being watched (comment ranking)."""
        ds, cfg = self.data, self._task(task).config
        users = np.asarray(users, np.int64)
        n = len(users)
        samples = SampleSet(user=users.astype(np.int32),
                            target=(np.zeros(n) if target is None else np.asarray(target)).astype(np.int32),
                            time=np.full(n, np.iinfo(np.int64).max), vi_end=np.asarray(ds.vi_ptr)[users + 1],
                            ci_end=np.asarray(ds.ci_ptr)[users + 1], pos_ptr=np.zeros(1, np.int64),
                            pos=np.zeros(0, np.int32))
        if task not in self._gatherers:
            self._gatherers[task] = HistoryGatherer(ds, cfg["max_phis_len"], cfg["max_chis_len"])
        return self._gatherers[task](samples, np.arange(n))

    # ------------------------------------------------------------ recommendation

    def video_scores(self, history: HistoryBatch) -> torch.Tensor:
        """``[B, V+1]`` the rec model's score of every video (column 0, padding, included)."""
        model = self._task("rec")
        return model.users(history, "video_user") @ model.candidates.T

    @torch.no_grad()
    def recommend_videos(self, user_ids: Sequence, k: int = 20, exclude_seen: bool = True,
                         batch_size: int = 256) -> list[dict]:
        """Top-``k`` videos per user: one dict per user id, in order, with ``items`` (raw video
        ids, best first) and ``scores``; an id the dataset does not know gets ``error`` instead,
        and a user without any history gets the most-watched videos with ``fallback: popularity``."""
        model = self._task("rec")
        ds = self.data
        rows: list[dict] = [{} for _ in user_ids]
        known = [(i, self.index("users", u)) for i, u in enumerate(user_ids)]
        for i, idx in known:
            if idx is None:
                rows[i] = {"user": user_ids[i], "error": "unknown user id"}
        users = [(i, idx) for i, idx in known if idx is not None]
        vi_ptr = np.asarray(ds.vi_ptr)
        empty = [(i, idx) for i, idx in users if vi_ptr[idx + 1] == vi_ptr[idx]]  # no video history to read
        if empty:
            top = self._popular(k)
            for i, _ in empty:
                rows[i] = {"user": user_ids[i], "items": [self.raw_ids("videos")[v - 1] for v in top],
                           "scores": None, "fallback": "popularity"}
        fallen = {i for i, _ in empty}
        served = [(i, idx) for i, idx in users if i not in fallen]
        for lo in range(0, len(served), batch_size):
            part = served[lo:lo + batch_size]
            idx = np.array([u for _, u in part], np.int64)
            user = model.users(self.histories(idx), "video_user")
            exclude = self._seen(idx) if exclude_seen else None
            scores, items = blocked_topk(user, model.candidates, k, first=1, exclude=exclude)
            raw = self.raw_ids("videos")
            for (i, _), s, v in zip(part, scores.tolist(), items.tolist()):
                keep = [j for j, x in enumerate(s) if x != float("-inf")]
                rows[i] = {"user": user_ids[i], "items": [raw[v[j] - 1] for j in keep],
                           "scores": [round(s[j], 6) for j in keep]}
        return rows

    def _seen(self, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, videos)``: every video each user has watched."""
        ptr = np.asarray(self.data.vi_ptr)
        flat, rows = ragged_index(ptr[users], ptr[users + 1] - ptr[users])
        return torch.from_numpy(rows), torch.from_numpy(np.asarray(self.data.vi_video)[flat].astype(np.int64))

    def _popular(self, k: int) -> list[int]:
        """The ``k`` most-watched videos over every interaction (the order computed once)."""
        if self._by_views is None:
            counts = np.bincount(np.asarray(self.data.vi_video), minlength=self.data.num_videos + 1)
            counts[0] = -1
            self._by_views = np.argsort(-counts, kind="stable")
        return [int(v) for v in self._by_views[:k]]

    @torch.no_grad()
    def rank_comments(self, user_id, video_id, k: int = 10) -> dict:
        """Top-``k`` comments under ``video_id`` for ``user_id`` (raw ids): ``items`` (raw comment
        ids, best first) and ``scores``; ``error`` for an unknown id or a video without comments."""
        model = self._task("comm_rank")
        user, video = self.index("users", user_id), self.index("videos", video_id)
        row = {"user": user_id, "video": video_id}
        if user is None or video is None:
            return row | {"error": f"unknown {'user' if user is None else 'video'} id"}
        ptr = np.asarray(self.data.video_comment_ptr)
        cands = torch.from_numpy(np.asarray(self.data.video_comments)[ptr[video]:ptr[video + 1]].astype(np.int64))
        if len(cands) == 0:
            return row | {"error": "the video has no comments"}
        history = self.histories(np.array([user]), np.array([video]), task="comm_rank")
        scores = (model.users(history, "comment_user") @ model.candidates[cands].T)[0]
        top = scores.topk(min(k, len(cands)))
        raw = self.raw_ids("comments")
        return row | {"items": [raw[int(c) - 1] for c in cands[top.indices]],
                      "scores": [round(float(s), 6) for s in top.values]}


def load_artifact(path: str | Path, verify: bool = True) -> Artifact:
    """Open an artifact written by :func:`write_artifact`, checking it first (see the module docstring)."""
    root = Path(path).expanduser()
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{mpath}: not found; '{root}' is not an lsvcr artifact (stage=export writes one)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{mpath}: invalid JSON ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ArtifactError(f"{mpath}: format {manifest.get('format')} version {manifest.get('version')}, this "
                            f"lsvcr reads {FORMAT} version {VERSION}")
    _check_files(root, manifest, verify)
    return Artifact(root, manifest, {task: _load_task(root, task) for task in manifest["tasks"]})
