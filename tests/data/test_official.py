"""data=official keeps the files' own samples (data.splits) and imports their embedding tables
(data.embeddings): every prepared sample is compared with its file line, every table row with
the file's row of the same id; inconsistent files and broken tables end in a counted skip or one
clear error."""

from __future__ import annotations

import json
import logging
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from test_sources import Exploit, comm_sample, sample, write_lines, write_official

from lsvcr.data.builder import write_dataset
from lsvcr.data.history import HistoryGatherer
from lsvcr.data.official import read_official
from lsvcr.data.samples import SplitConfig
from lsvcr.data.store import SPLITS, TASKS, PreparedDataset
from lsvcr.data.validate import validate
from lsvcr.errors import ConfigError, DataError

WIDTH = 8


def official_world(root: Path, users: int = 10, seed: int = 0) -> Path:
    """Official files made the way the official data was: from one event log per user, a rec sample
    per video after the first and a comm_rank sample per comment group (histories strictly before
    it), the last of each user's samples in test and the second-last in val. Videos repeat and
    users comment on videos they did not watch; the pickles list ids in their own order, with a
    comment that belongs to no video first (the reader drops it), and both embedding tables exist."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    photos = {f"v{i}": {"title": f"title {i}", "comment_list": [f"k{i}_{j}" for j in range(0 if i % 5 == 0 else 2 + i % 3)]}
              for i in range(1, 16)}
    commentable = [v for v, p in photos.items() if p["comment_list"]]
    files = {(t, s): [] for t in TASKS for s in SPLITS}
    for u in range(users):
        pool = rng.sample(commentable, 3) + rng.sample(list(photos), 2)  # a few favourites: videos come back
        seq = [rng.choice(pool) for _ in range(rng.randint(4, 8))]
        groups, used = [], set()  # (position of the video being watched, video, comments); comments once a user
        for j, v in enumerate(seq):
            listed = [c for c in photos[v]["comment_list"][:-1] if c not in used]  # the last: a negative
            if listed and rng.random() < 0.6:
                groups.append((j, v, rng.sample(listed, rng.randint(1, len(listed)))))
                used.update(groups[-1][2])
            w = rng.choice(commentable)
            listed = [c for c in photos[w]["comment_list"][:-1] if c not in used]
            if listed and rng.random() < 0.25:  # a comment under a video the user never watched
                groups.append((j, w, [rng.choice(listed)]))
                used.update(groups[-1][2])
        chis = lambda gs: [[v for _, v, _ in gs], [list(cs) for _, _, cs in gs]]  # noqa: E731
        n = len(seq)
        for i in range(1, n):
            split = "test" if i == n - 1 else "val" if i == n - 2 else "train"
            files["rec", split].append(sample(100 + u, seq[i], seq[:i], *chis([g for g in groups if g[0] < i])))
        for g, (j, v, cs) in enumerate(groups):
            split = "train" if len(groups) < 3 else "test" if g == len(groups) - 1 else "val" if g == len(groups) - 2 else "train"
            files["comm_rank", split].append(comm_sample(100 + u, v, seq[:j], *chis(groups[:g]), pos=cs))
    comments = {c: f"text of {c}" for p in photos.values() for c in p["comment_list"]}
    comment_ids = ["orphan", *sorted(comments, key=lambda c: rng.random())]
    comments["orphan"] = "listed nowhere"
    photo_ids = sorted(photos, key=lambda p: rng.random())
    (root / "photo.json").write_text(json.dumps(photos))
    (root / "comment.json").write_text(json.dumps(comments))
    (root / "all_photos.pkl").write_bytes(pickle.dumps(["[PAD]", *photo_ids]))
    (root / "all_comments.pkl").write_bytes(pickle.dumps(["[PAD]", *comment_ids]))
    for (task, split), recs in files.items():
        write_lines(root / f"{task}.{split}.json", recs)
    write_embs(root, len(photo_ids) + 1, len(comment_ids) + 1, seed)
    return root


def write_embs(root: Path, n_photos: int, n_comments: int, seed: int = 0, width: int = WIDTH) -> None:
    rng = np.random.default_rng(seed)
    for name, rows in (("photo_embs.npy", n_photos), ("comment_embs.npy", n_comments)):
        table = rng.normal(size=(rows, width)).astype(np.float32)
        table[0] = 0
        np.save(root / name, table)


def prepare(root: Path, out: Path, **options) -> PreparedDataset:
    """What stage=prepare does with ``read_official(root, **options)`` (its manifest's source and skipped too)."""
    raw, skipped = validate(read_official(root, **options))
    extra = {"source": raw.source, "skipped": skipped}
    return PreparedDataset(write_dataset(raw, out, SplitConfig(), overwrite=True, manifest_extra=extra))


def lines(root: Path, task: str, split: str) -> list[dict]:
    return [json.loads(line) for line in (root / f"{task}.{split}.json").read_text().splitlines()]


def as_prepared(ds: PreparedDataset, s, i: int) -> tuple:
    """Sample i of ``s`` in raw ids: user, target, video history, (video, comment) history, positives."""
    users, videos, comments = (ds.raw_ids(k).to_pylist() for k in ("users", "videos", "comments"))
    u = int(s.user[i])
    vh = [videos[v - 1] for v in ds.vi_video[ds.vi_ptr[u]:s.vi_end[i]]]
    rows = range(ds.ci_ptr[u], s.ci_end[i])
    ch = [(videos[ds.ci_video[r] - 1], comments[ds.ci_comment[r] - 1]) for r in rows]
    pos = sorted(comments[c - 1] for c in s.positives(i)) if len(s.pos_ptr) > 1 else []
    return users[u - 1], videos[int(s.target[i]) - 1], vh, ch, pos


def as_line(rec: dict) -> tuple:
    videos, groups = rec["comment_inter_his"]
    flat = [(str(v), str(c)) for v, g in zip(videos, groups) for c in g]
    return (str(rec["user_id"]), str(rec["target_photo"]), [str(v) for v in rec["photo_inter_his"]], flat,
            sorted(set(map(str, rec.get("pos_comments", [])))))


def kept(rec: dict, split: str, photos: dict) -> bool:
    """Whether a line is a prepared sample: a history to read, and (comm_rank val/test) a comment to rank it against."""
    if not rec["photo_inter_his"] and not any(rec["comment_inter_his"][1]):
        return False
    return "pos_comments" not in rec or split == "train" or len(photos[rec["target_photo"]]["comment_list"]) > len(
        set(rec["pos_comments"]))


# ----------------------------------------------------------------------------- given splits


def test_given_splits_are_the_files_samples_line_for_line(tmp_path):
    root = official_world(tmp_path / "files")
    ds = prepare(root, tmp_path / "ds")
    photos = json.loads((root / "photo.json").read_text())
    dropped = {"rec": 0, "comm_rank": 0}
    for task in TASKS:
        for split in SPLITS:
            recs = lines(root, task, split)
            expected = [as_line(r) for r in recs if kept(r, split, photos)]
            dropped[task] += len(recs) - len(expected)
            s = ds.samples(task, split)
            assert [as_prepared(ds, s, i) for i in range(len(s))] == expected, (task, split)
            assert len(expected) > 0
    m = ds.manifest
    assert m["split"]["method"] == "given" and m["source"]["splits"] == "given"
    assert all(f["skipped"] == {} and f["kept"] == f["lines"] for f in m["split"]["files"].values())
    assert m["sample_stats"]["comm_rank.dropped_no_history"] + m["sample_stats"][
        "comm_rank.eval_dropped_no_negative"] == dropped["comm_rank"] > 0  # only what the model cannot use
    repeats = sum(len(set(r["comment_inter_his"][0])) < len(r["comment_inter_his"][0])
                  for t in TASKS for s in SPLITS for r in lines(root, t, s))
    assert m["sample_stats"]["given.comment_history_merged"] == repeats > 0

    # the model's input: the last max_phis_len videos of photo_inter_his, the last max_chis_len groups
    videos = {v: i + 1 for i, v in enumerate(ds.raw_ids("videos").to_pylist())}
    s = ds.samples("rec", "test")
    batch = HistoryGatherer(ds, 3, 2, pad_to_max=True)(s, np.arange(len(s)))
    for i, rec in enumerate(r for r in lines(root, "rec", "test") if kept(r, "test", photos)):
        want = [videos[v] for v in rec["photo_inter_his"][-3:]]
        assert batch.v_video[i].tolist() == want + [0] * (3 - len(want))
        group_videos = rec["comment_inter_his"][0]
        if len(set(group_videos)) == len(group_videos):
            want = [videos[v] for v in group_videos[-2:]]
            assert batch.c_video[i].tolist() == want + [0] * (2 - len(want))


def test_a_comment_listed_twice_in_one_visit_is_one_interaction(tmp_path):
    root = write_official(tmp_path / "files")
    # user 7 back on p2 (stamp 2, like the first p2 group) with c4 again
    twice = sample(7, "p4", ["p1", "p2", "p3"], ["p2", "p1", "p4", "p2"], [["c4"], ["c1", "c2"], ["c5"], ["c4"]])
    write_lines(root / "rec.test.json", [twice])
    ds = prepare(root, tmp_path / "ds")
    assert as_prepared(ds, ds.samples("rec", "test"), 0) == (
        "7", "p4", ["p1", "p2", "p3"], [("p2", "c4"), ("p1", "c1"), ("p1", "c2"), ("p4", "c5")], [])
    assert ds.manifest["split"]["files"]["rec.test.json"] == {"lines": 1, "kept": 1, "skipped": {},
                                                              "comment_history_merged": 1}
    assert ds.manifest["skipped"]["duplicate_comment_interaction"] == 0  # never a row for validation to drop
    assert [len(ds.samples("comm_rank", s)) for s in SPLITS] == [1, 1, 1]  # user 7's other lines still fit


def test_resplit_derives_the_samples_as_before_and_ignores_comm_rank_files(tmp_path):
    root = write_official(tmp_path / "files")
    ds = prepare(root, tmp_path / "ds", splits="resplit")
    assert ds.manifest["split"] == {"method": "loo", "val_frac": 0.1, "test_frac": 0.1}
    got = {(t, s): [as_prepared(ds, ds.samples(t, s), i) for i in range(len(ds.samples(t, s)))]
           for t in TASKS for s in SPLITS}
    # what the reader derived before data.splits existed: rec per video interaction (LOO), comm_rank per
    # (user, video) group at its first comment; user 7's comments are all stamped 2 (while watching p2),
    # so the comm_rank histories hold p1 alone and rec targets from p3 on see every comment
    everything = [("p2", "c4"), ("p1", "c1"), ("p1", "c2"), ("p4", "c5")]
    assert got == {
        ("rec", "train"): [("7", "p2", ["p1"], [], []), ("8", "p3", ["p2"], [("p2", "c4")], [])],
        ("rec", "val"): [("7", "p3", ["p1", "p2"], everything, [])],
        ("rec", "test"): [("7", "p4", ["p1", "p2", "p3"], everything, [])],
        ("comm_rank", "train"): [("7", "p2", ["p1"], [], ["c4"])],
        ("comm_rank", "val"): [("7", "p1", ["p1"], [], ["c1", "c2"])],
        ("comm_rank", "test"): [],  # p4's only comment is the positive: nothing to rank
    }
    given = prepare(root, tmp_path / "given")
    assert as_prepared(given, given.samples("comm_rank", "val"), 0) == ("7", "p1", ["p1", "p2"], [("p2", "c4")],
                                                                        ["c1", "c2"])  # the file's line
    for split in SPLITS:
        (root / f"comm_rank.{split}.json").unlink()
    again = prepare(root, tmp_path / "again", splits="resplit")
    for t in TASKS:
        for s in SPLITS:
            assert [as_prepared(again, again.samples(t, s), i) for i in range(len(again.samples(t, s)))] == got[t, s]


def _rewrite(path: Path, change) -> None:
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    write_lines(path, [change(i, r) for i, r in enumerate(recs)])


def test_lines_that_do_not_fit_are_skipped_counted_and_named(tmp_path, caplog):
    root = write_official(tmp_path / "files")
    # rec.val: user 7's history in the wrong order; comm_rank.val: a positive of another video;
    # comm_rank.train: a comment history filing c1 under p2; user 8: a history comment missing from
    # comment.json (validation skips its interaction); comm_rank.test: an unknown target
    _rewrite(root / "rec.val.json", lambda i, r: {**r, "photo_inter_his": ["p2", "p1"]})
    _rewrite(root / "comm_rank.val.json", lambda i, r: {**r, "pos_comments": ["c1", "c4"]})
    _rewrite(root / "comm_rank.train.json", lambda i, r: {**r, "comment_inter_his": [["p2"], [["c1"]]]})
    _rewrite(root / "rec.train.json", lambda i, r: r if r["user_id"] == 7 else {**r, "comment_inter_his": [["p2"], [["c9"]]]})
    _rewrite(root / "comm_rank.test.json", lambda i, r: {**r, "target_photo": "p99", "comment_inter_his": [["p2"], [["c9"]]]})
    with caplog.at_level(logging.WARNING):
        ds = prepare(root, tmp_path / "ds")
    files = ds.manifest["split"]["files"]
    assert files["rec.val.json"]["skipped"] == {"history_not_prefix": 1}
    assert files["comm_rank.val.json"]["skipped"] == {"bad_positives": 1}
    assert files["comm_rank.train.json"]["skipped"] == {"history_not_prefix": 1}  # not the user's c4 there
    assert files["rec.train.json"]["skipped"] == {"history_rows_dropped": 1}
    assert files["comm_rank.test.json"]["skipped"] == {"unknown_target": 1}
    assert ds.manifest["skipped"]["comment_interaction_unknown_comment"] == 1  # validation's own count
    assert ds.manifest["sample_stats"]["given.history_not_prefix"] == 2
    assert [len(ds.samples("rec", s)) for s in SPLITS] == [1, 0, 1]
    assert [len(ds.samples("comm_rank", s)) for s in SPLITS] == [0, 0, 0]
    assert "rec.val.json: skipped 1 samples: history is not a prefix" in caplog.text
    assert "first: line 1, photo_inter_his item 1 is 'p2', user 7's sequence has 'p1' there" in caplog.text
    assert "comm_rank.val.json: skipped 1 samples: pos_comments is empty or names a comment" in caplog.text


def test_comment_under_another_video_is_skipped(tmp_path):
    root = write_official(tmp_path / "files")
    # the whole of user 8's history files c4 (p2's comment) under p3, in both of its lines
    _rewrite(root / "rec.train.json", lambda i, r: r if r["user_id"] == 7 else {**r, "comment_inter_his": [["p3"], [["c4"]]]})
    _rewrite(root / "comm_rank.test.json", lambda i, r: {**r, "comment_inter_his": [["p3"], [["c4"]]]})
    ds = prepare(root, tmp_path / "ds")
    assert ds.manifest["split"]["files"]["rec.train.json"]["skipped"] == {"comment_under_other_video": 1}
    assert ds.manifest["sample_stats"]["given.comment_under_other_video"] == 2


def test_files_that_mostly_disagree_stop_prepare_with_file_and_line(tmp_path):
    root = official_world(tmp_path / "files")
    photos = json.loads((root / "photo.json").read_text())
    others = iter(list(photos) * 100)

    def other_first_video(i, r):
        if r["photo_inter_his"]:
            r["photo_inter_his"][0] = next(v for v in others if v != r["photo_inter_his"][0])
        return r

    _rewrite(root / "rec.train.json", other_first_video)
    n = len(lines(root, "rec", "train"))
    assert n >= 10
    with pytest.raises(DataError, match=rf"rec\.train\.json: line 1: history is not a prefix of the user's sequence "
                                        rf"in the other files \(photo_inter_his item 1 is .*\); {n} of {n} samples of this "
                                        r"file do not fit \(history_not_prefix \d+\).*data\.splits=resplit re-derives"):
        prepare(root, tmp_path / "ds")


def test_prepare_cli_records_the_split_source(tmp_path):
    root = official_world(tmp_path / "files")
    out = tmp_path / "out"
    for splits in ("given", "resplit"):
        r = run_cli(["stage=prepare", "data=official", f"data.root={root}", f"data.splits={splits}"], out)
        assert r.returncode == 0, r.stderr[-2000:]
    manifests = [json.loads(p.read_text()) for p in sorted((out / "data").glob("official-*/manifest.json"))]
    assert sorted(m["split"]["method"] for m in manifests) == ["given", "loo"]
    assert all(m["text_tables"]["dim"] == WIDTH for m in manifests)
    (root / "comm_rank.test.json").unlink()
    r = run_cli(["stage=prepare", "data=official", f"data.root={root}"], out)
    assert r.returncode == 2 and "missing comm_rank.test.json" in r.stderr and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- embedding tables


def _rows_by_id(root: Path, pkl: str, npy: str) -> dict[str, np.ndarray]:
    ids = pickle.loads((root / pkl).read_bytes())
    table = np.load(root / npy)
    rows: dict[str, np.ndarray] = {}
    for i, x in enumerate(ids[1:], start=1):
        rows.setdefault(str(x), table[i])  # a repeated id is its first entry, as validation keeps it
    return rows


def _assert_tables_are_the_files_rows(ds: PreparedDataset, root: Path, video: np.ndarray, comment: np.ndarray):
    for kind, table, pkl, npy in (("videos", video, "all_photos.pkl", "photo_embs.npy"),
                                  ("comments", comment, "all_comments.pkl", "comment_embs.npy")):
        rows = _rows_by_id(root, pkl, npy)
        ids = ds.raw_ids(kind).to_pylist()
        assert table.shape == (len(ids) + 1, WIDTH) and not np.asarray(table[0]).any()
        np.testing.assert_array_equal(np.asarray(table[1:]), np.stack([rows[i] for i in ids]))


def test_embedding_tables_are_imported_row_by_id(tmp_path):
    root = official_world(tmp_path / "files")
    # all_photos.pkl lists a video twice: validation keeps the first, so the later rows shift
    ids = pickle.loads((root / "all_photos.pkl").read_bytes())
    (root / "all_photos.pkl").write_bytes(pickle.dumps([*ids[:3], ids[2], *ids[3:]]))
    write_embs(root, len(ids) + 1, len(pickle.loads((root / "all_comments.pkl").read_bytes())), seed=1)
    ds = prepare(root, tmp_path / "ds")
    info = ds.manifest["text_tables"]
    assert info["dir"] == "embeddings/imported" and info["dim"] == WIDTH
    assert info["video"]["rows"] == len(ids) + 1 and info["video"]["kept"] == len(ids) - 1 and info["video"]["reordered"]
    assert info["comment"]["kept"] == info["comment"]["rows"] - 2 and info["comment"]["reordered"]  # orphan dropped
    video = np.load(ds.root / info["dir"] / "videos.npy")
    comment = np.load(ds.root / info["dir"] / "comments.npy")
    _assert_tables_are_the_files_rows(ds, root, video, comment)
    assert "orphan" not in ds.raw_ids("comments").to_pylist()
    # the embed stage's own format, so its loader reads them
    from lsvcr.data.table_files import load_tables

    manifest, arrays = load_tables(ds.root / info["dir"])
    assert set(arrays) == {"video", "comment"} and manifest["out_dim"] == WIDTH

    off = prepare(root, tmp_path / "off", embeddings=False)
    assert "text_tables" not in off.manifest and not (off.root / "embeddings").exists()


@pytest.mark.parametrize("table,message", [
    (np.zeros((3, WIDTH), np.float32), r"photo_embs\.npy: shape \(3, 8\), expected \(5, 8\): one row per entry of "
                                       r".*all_photos\.pkl \(4 ids and the padding entry 0\)"),
    (np.zeros(5, np.float32), r"photo_embs\.npy: shape \(5,\) float32, expected a 2-D float array of shape \(5, width\)"),
    (np.zeros((5, WIDTH), np.int64), r"photo_embs\.npy: shape \(5, 8\) int64, expected a 2-D float array"),
    (np.zeros((5, 4), np.float32), r"comment_embs\.npy: shape \(7, 8\), but .*photo_embs\.npy has shape \(5, 4\): "
                                   r"both tables must have one width"),
])
def test_wrong_shaped_tables_are_one_clear_error(tmp_path, table, message):
    root = write_official(tmp_path / "files")
    write_embs(root, 5, 7)
    np.save(root / "photo_embs.npy", table)
    with pytest.raises(DataError, match=message):
        read_official(root)


def test_pickled_object_table_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    root = write_official(tmp_path / "files")
    write_embs(root, 5, 7)
    np.save(root / "comment_embs.npy", np.array([Exploit(marker)] * 7, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"comment_embs\.npy: not a numeric \.npy array .*pickled objects are refused"):
        read_official(root)
    (root / "comment_embs.npy").write_bytes(pickle.dumps(Exploit(marker)))  # a bare pickle under the .npy name
    with pytest.raises(DataError, match=r"comment_embs\.npy: not a numeric \.npy array"):
        read_official(root)
    assert not marker.exists()


def test_missing_table_nan_rows_and_bad_mode(tmp_path):
    root = write_official(tmp_path / "files")
    assert read_official(root).text_tables is None  # auto: neither file, stage=embed makes the tables
    with pytest.raises(DataError, match=r"photo_embs\.npy: not found \(data\.embeddings=true\)"):
        read_official(root, embeddings=True)
    write_embs(root, 5, 7)
    (root / "comment_embs.npy").unlink()
    with pytest.raises(DataError, match=r"comment_embs\.npy: not found \(data\.embeddings=auto; photo_embs\.npy is "
                                        r"there\).*or set data\.embeddings=false"):
        read_official(root)
    assert read_official(root, embeddings=False).text_tables is None
    write_embs(root, 5, 7)
    table = np.load(root / "comment_embs.npy")
    table[4, 2] = np.nan
    np.save(root / "comment_embs.npy", table)
    with pytest.raises(DataError, match=r"comment_embs\.npy: row 4 \(all_comments\.pkl id 'c4'\) holds NaN or Inf"):
        prepare(root, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    with pytest.raises(ConfigError, match="data.embeddings='yes': expected auto"):
        read_official(root, embeddings="yes")


@pytest.mark.slow
def test_finetune_and_evaluate_read_the_imported_tables_without_an_embed_stage(tmp_path):
    root = official_world(tmp_path / "files", users=12)
    data = ["data=official", f"data.root={root}", "eval.protocols=[sampled,full]", "data.max_phis_len=8",
            "data.max_chis_len=8"]
    fit = ["stage=finetune", "task=comm_rank", "model/sr=lsvcr", "finetune.batch_size=16", "finetune.monitor=full/ndcg@10"]
    env = {"OMP_NUM_THREADS": "1"}
    r = run_cli([*fit, "finetune.epochs=1", *data], tmp_path / "wrong", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "photo_embs.npy: shape (16, 8), model.sr.llm_emb_size=256 expects (16, 256); set embed.out_dim=8" in r.stderr

    args = [*data, f"embed.out_dim={WIDTH}"]
    r = run_cli([*fit, "finetune.epochs=2", *args], tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "text tables: imported with the dataset" in r.stdout + r.stderr
    [run] = sorted(tmp_path.glob("runs/*/*finetune-comm_rank-lsvcr"))
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["results"]["test"]["full"]["count"] > 0
    [ds_dir] = list((tmp_path / "data").glob("official-*"))
    assert [p.name for p in (ds_dir / "embeddings").iterdir()] == ["imported"]  # nothing encoded, no LLM built
    assert not (ds_dir / "llm").exists()

    r = run_cli(["stage=evaluate", "task=comm_rank", "model/sr=lsvcr", f"evaluate.checkpoint={run}", *args], tmp_path,
                env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    [evaluated] = sorted(tmp_path.glob("runs/*/*evaluate-comm_rank-lsvcr"))
    again = json.loads((evaluated / "metrics.json").read_text())["results"]
    for split, by_protocol in summary["results"].items():
        for protocol, metrics in by_protocol.items():
            assert again[split][protocol] == pytest.approx(metrics, rel=1e-6), (split, protocol)

    # the model fine-tuning builds holds the files' rows of its own videos and comments
    from conftest import REPO
    from hydra import compose, initialize_config_dir

    from lsvcr.pipelines.common import load_dataset
    from lsvcr.pipelines.checkpoint import build_recommender
    from lsvcr.tasks import build_task

    overrides = [*fit, *args, f"paths.output_dir={tmp_path}", "paths.run_dir=/unused"]
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    ds = load_dataset(cfg)
    assert ds.root == ds_dir
    model = build_recommender(cfg, ds, build_task(cfg.task))
    _assert_tables_are_the_files_rows(ds, root, model.video_table.numpy(), model.comment_table.numpy())
