"""The exported artifact: fine-tuned runs -> stage=export -> lsvcr.load_artifact, with scores equal
to the training-time model's, checked files, and top-k recommendations."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

import lsvcr
from conftest import REPO, TINY, run_cli
from lsvcr.deploy.artifact import ArtifactError, load_artifact
from lsvcr.utils.ranks import blocked_topk

ENV = {"OMP_NUM_THREADS": "1"}
FAST = [*TINY, "finetune.batch_size=128", "embed.max_length=16", "eval.protocols=[full]",
        "finetune.monitor=full/ndcg@10", "finetune.epochs=1", "finetune.eval_initial=false"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A rec and a comm_rank fine-tune of LSVCR on one tiny world, exported: (out dir, artifact dir, runs)."""
    out = tmp_path_factory.mktemp("export")
    runs = {}
    for task in ("rec", "comm_rank"):
        r = run_cli(["stage=finetune", f"task={task}", "model/sr=lsvcr", *FAST], out, env=ENV)
        assert r.returncode == 0, r.stderr[-3000:]
        [runs[task]] = sorted(out.glob(f"runs/*/*finetune-{task}-lsvcr"))
    art = out / "artifact"
    r = run_cli(["stage=export", f"export.rec={runs['rec']}", f"export.comm_rank={runs['comm_rank']}",
                 f"export.dir={art}"], out, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, art, runs


def _training_model(run, task: str):
    """The run's best checkpoint as stage=evaluate rebuilds it (the training-time Recommender)."""
    from lsvcr.pipelines.checkpoint import load_finetuned
    from lsvcr.pipelines.common import load_dataset
    from lsvcr.tasks import task_named

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["stage=finetune", f"task={task}", "model/sr=lsvcr", *FAST,
                                           f"paths.output_dir={run.parents[2]}", "paths.run_dir=/unused"])
    return load_finetuned(cfg, load_dataset(cfg), run, task_named(task))


def test_the_artifact_holds_no_llm_and_checksums_every_file(exported):
    _, art, _ = exported
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["format"] == "lsvcr-artifact" and manifest["tasks"] == ["comm_rank", "rec"]
    files = {p.relative_to(art).as_posix() for p in art.rglob("*") if p.is_file()} - {"manifest.json"}
    assert files == set(manifest["files"])
    assert not any("lora" in f or "tokenizer" in f or "llm" in f for f in files)
    assert {"rec/sr.safetensors", "rec/videos.npy", "comm_rank/sr.safetensors", "comm_rank/comments.npy"} <= files
    # the two un-aligned runs read the same text tables: stored once
    assert len([f for f in files if f.startswith("text/")]) == 2
    assert not list(art.parent.glob(".artifact.tmp-*"))  # written under a temporary name, renamed


def test_scores_equal_the_training_time_models(exported):
    _, art, runs = exported
    loaded = lsvcr.load_artifact(art)
    users = np.arange(1, 21)
    rec = _training_model(runs["rec"], "rec")
    history = loaded.histories(users)
    torch.testing.assert_close(loaded.video_scores(history), rec.score_videos(history, None), atol=1e-5, rtol=1e-5)
    comm = _training_model(runs["comm_rank"], "comm_rank")
    ds = loaded.data
    ptr = np.asarray(ds.video_comment_ptr)
    video = int(np.argmax(ptr[1:] - ptr[:-1]))  # the video with the most comments
    user = 3
    got = loaded.rank_comments(loaded.raw_ids("users")[user - 1], loaded.raw_ids("videos")[video - 1], k=5)
    cands = torch.from_numpy(np.asarray(ds.video_comments)[ptr[video]:ptr[video + 1]].astype(np.int64))
    want = comm.score_comments(loaded.histories(np.array([user]), np.array([video]), task="comm_rank"), cands[None])[0]
    top = want.topk(5)
    raw = loaded.raw_ids("comments")
    assert got["items"] == [raw[int(c) - 1] for c in cands[top.indices]]
    np.testing.assert_allclose(got["scores"], top.values.numpy(), atol=1e-5)


def test_recommend_videos_excludes_seen_and_reports_unknown_ids(exported):
    _, art, _ = exported
    loaded = load_artifact(art)
    raw_users = list(loaded.raw_ids("users")[:6])
    rows = loaded.recommend_videos([raw_users[0], "no-such-user", *raw_users[1:]], k=7, batch_size=4)
    assert rows[1] == {"user": "no-such-user", "error": "unknown user id"}
    ds, videos = loaded.data, list(loaded.raw_ids("videos"))
    ptr = np.asarray(ds.vi_ptr)
    for row, raw in zip([rows[0], *rows[2:]], raw_users):
        u = loaded.index("users", raw)
        seen = {videos[v - 1] for v in np.asarray(ds.vi_video)[ptr[u]:ptr[u + 1]]}
        assert row["user"] == raw and len(row["items"]) == 7 and not seen & set(row["items"])
        assert row["scores"] == sorted(row["scores"], reverse=True)
    # without exclude_seen: exactly the best-scored videos of the full score matrix
    both = loaded.recommend_videos(raw_users[:3], k=5, exclude_seen=False)
    scores = loaded.video_scores(loaded.histories(np.array([loaded.index("users", r) for r in raw_users[:3]])))
    scores[:, 0] = -torch.inf
    for row, s in zip(both, scores):
        assert row["items"] == [videos[int(v) - 1] for v in s.topk(5).indices]


def test_a_damaged_artifact_is_refused_naming_the_file(exported, tmp_path):
    _, art, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(art, copy)
    target = copy / "rec" / "videos.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte changed
    target.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"rec/videos\.npy: its SHA-256 differs"):
        load_artifact(copy)
    load_artifact(copy, verify=False)  # sizes and shapes only: the change goes unseen, by choice
    target.write_bytes(bytes(data[:-100]))
    with pytest.raises(ArtifactError, match=r"rec/videos\.npy: \d+ bytes, the manifest says \d+ \(truncated"):
        load_artifact(copy, verify=False)
    (copy / "comm_rank" / "sr.safetensors").unlink()
    shutil.copy2(art / "rec" / "videos.npy", target)
    with pytest.raises(ArtifactError, match=r"comm_rank/sr\.safetensors: missing from the artifact"):
        load_artifact(copy)
    with pytest.raises(ArtifactError, match="is not an lsvcr artifact"):
        load_artifact(tmp_path)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"]["rec/videos.npy"]["shape"][1] += 1
    shutil.rmtree(copy)
    shutil.copytree(art, copy)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"rec/videos\.npy: shape .* the manifest says"):
        load_artifact(copy)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"]["../outside.npy"] = manifest["files"].pop("rec/videos.npy")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"the path '\.\./outside\.npy' leads outside the artifact directory"):
        load_artifact(copy)


def test_export_refuses_bad_runs_and_an_existing_directory(exported):
    out, art, runs = exported
    r = run_cli(["stage=export", f"export.rec={runs['comm_rank']}", f"export.dir={out / 'other'}"], out, env=ENV)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "it fine-tuned task=comm_rank; give it as export.comm_rank" in r.stderr
    r = run_cli(["stage=export", f"export.rec={runs['rec']}", f"export.dir={art}"], out, env=ENV)
    assert r.returncode == 2 and "exists; choose another directory or overwrite it" in r.stderr
    r = run_cli(["stage=export", f"export.dir={out / 'other'}"], out, env=ENV)
    assert r.returncode == 2 and "give at least one finetune run directory" in r.stderr
    assert not (out / "other").exists()


def test_blocked_topk_equals_the_full_topk():
    g = torch.Generator().manual_seed(0)
    user, items = torch.randn(5, 8, generator=g), torch.randn(1001, 8, generator=g)
    full = user @ items.T
    full[:, 0] = -torch.inf
    for block in (1, 7, 1000, 1 << 16):
        scores, idx = blocked_topk(user, items, 10, block_rows=block)
        want = full.topk(10)
        assert torch.equal(idx, want.indices) and torch.allclose(scores, want.values)
    rows, cols = torch.tensor([0, 0, 3]), torch.tensor([int(full[0].argmax()), 5, int(full[3].argmax())])
    _, idx = blocked_topk(user, items, 3, block_rows=64, exclude=(rows, cols))
    assert int(cols[0]) not in idx[0].tolist() and int(cols[2]) not in idx[3].tolist()
    full[rows, cols] = -torch.inf
    assert torch.equal(idx, full.topk(3).indices)
    _, few = blocked_topk(user, items[:4], 10)
    assert few.shape == (5, 3)  # only 3 items after the padding row


def test_a_user_without_a_video_history_gets_the_most_watched_videos(exported, tmp_path):
    _, art, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(art, copy)
    ptr_file = copy / "data" / "arrays" / "vi_ptr.npy"
    ptr = np.load(ptr_file)
    ptr[2] = ptr[1]  # planted: user 1's video interactions now belong to user 2
    np.save(ptr_file, ptr)
    loaded = load_artifact(copy, verify=False)
    raw = loaded.raw_ids("users")
    empty, other = loaded.recommend_videos([raw[0], raw[1]], k=4)
    counts = np.bincount(np.asarray(loaded.data.vi_video), minlength=loaded.data.num_videos + 1)
    counts[0] = -1
    assert empty["fallback"] == "popularity" and empty["scores"] is None
    assert empty["items"] == [loaded.raw_ids("videos")[v - 1] for v in np.argsort(-counts, kind="stable")[:4]]
    assert "fallback" not in other and len(other["scores"]) == 4


def test_a_failed_export_leaves_nothing_behind(exported, tmp_path):
    from lsvcr.deploy.artifact import write_artifact

    _, art, runs = exported
    model = _training_model(runs["rec"], "rec")
    with pytest.raises(KeyError):  # no SR config for the task: fails after the data files are copied
        write_artifact(tmp_path / "x", {"rec": model}, load_artifact(art).data, {}, 50, 50)
    assert list(tmp_path.iterdir()) == []


def test_recommend_stage_writes_a_row_per_user_and_per_request(exported, tmp_path):
    out, art, _ = exported
    loaded = load_artifact(art)
    users = [str(u) for u in loaded.raw_ids("users")[:3]]
    (tmp_path / "users.txt").write_text("\n".join([users[0], "nobody", *users[1:]]) + "\n\n")
    recs = tmp_path / "recs.jsonl"
    r = run_cli(["stage=recommend", f"recommend.artifact={art}", f"recommend.users={tmp_path / 'users.txt'}",
                 "recommend.k=5", f"recommend.out={recs}"], out, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in recs.read_text().splitlines()]
    assert [row["user"] for row in rows] == [users[0], "nobody", *users[1:]]
    assert rows[1]["error"] == "unknown user id"
    want = loaded.recommend_videos(users, k=5)
    assert [rows[0], *rows[2:]] == json.loads(json.dumps(want, default=str))
    video = loaded.raw_ids("videos")[int(np.argmax(np.diff(np.asarray(loaded.data.video_comment_ptr))))]
    lines = [json.dumps({"user": users[0], "video": video}), "{not json", json.dumps({"user": users[1]}),
             json.dumps({"user": users[1], "video": "no-such-video"})]
    (tmp_path / "requests.jsonl").write_text("\n".join(lines) + "\n")
    csv_out = tmp_path / "comments.csv"
    r = run_cli(["stage=recommend", f"recommend.artifact={art}", f"recommend.requests={tmp_path / 'requests.jsonl'}",
                 "recommend.k=3", "recommend.format=csv", f"recommend.out={csv_out}"], out, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    table = csv_out.read_text().splitlines()
    assert table[0] == "user,video,rank,item,score,fallback,error"
    best = loaded.rank_comments(users[0], video, k=3)
    assert [line.split(",")[3] for line in table[1:4]] == [str(c) for c in best["items"]]
    assert "invalid JSON" in table[4] and "expected an object with user and video" in table[5]
    assert table[6].endswith("unknown video id") and len(table) == 7


def test_recommend_stage_refuses_bad_settings_in_one_line(exported, tmp_path):
    out, art, _ = exported
    (tmp_path / "users.txt").write_text("1\n")
    for extra, message in (([], "give exactly one of recommend.users"),
                           ([f"recommend.users={tmp_path / 'users.txt'}", "recommend.k=0"], "recommend.k=0: expected an int >= 1"),
                           ([f"recommend.users={tmp_path / 'nope.txt'}"], "no such file"),
                           ([f"recommend.users={tmp_path / 'users.txt'}", "recommend.format=xml"], "recommend.format=xml")):
        r = run_cli(["stage=recommend", f"recommend.artifact={art}", *extra], out, env=ENV)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr[-2000:])
    r = run_cli(["stage=recommend", f"recommend.artifact={tmp_path}", f"recommend.users={tmp_path / 'users.txt'}"],
                out, env=ENV)
    assert r.returncode == 2 and "is not an lsvcr artifact" in r.stderr
