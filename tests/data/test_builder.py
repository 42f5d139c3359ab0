"""Prepare: id mapping, sorting, comment groups, splits and the no-leakage guarantee."""

import numpy as np
import pyarrow as pa
import pytest

from lsvcr.data.builder import write_dataset
from lsvcr.data.raw import RawTables
from lsvcr.data.samples import SplitConfig
from lsvcr.data.store import PreparedDataset


def tiny_raw() -> RawTables:
    videos = pa.table({"video_id": ["v1", "v2", "v3", "v4"], "title": ["a", "b", "c", "d"],
                       "category": ["x", None, "y", "x"]})
    comments = pa.table({"comment_id": ["c1", "c2", "c3", "c4", "c5"],
                         "video_id": ["v1", "v1", "v2", "v2", "v2"],
                         "text": ["t1", "t2", "t3", "t4", "t5"], "like_count": [5, 9, 1, 7, 3]})
    # user u1 watches v1@10, v2@20, v3@30, v4@40; user u2 watches v2@15, v1@25 (unsorted rows)
    vi = pa.table({"user_id": ["u1", "u2", "u1", "u1", "u2", "u1"],
                   "video_id": ["v1", "v2", "v2", "v3", "v1", "v4"],
                   "timestamp": [10, 15, 20, 30, 25, 40]})
    # u1 likes c1@11, c2@12 (group v1), c3@21 (group v2), c1@31 again (group v1, later), c4@40
    ci = pa.table({"user_id": ["u1", "u1", "u1", "u1", "u1", "u2"],
                   "comment_id": ["c1", "c2", "c3", "c1", "c4", "c5"],
                   "timestamp": [11, 12, 21, 31, 40, 16]})
    return RawTables(videos, comments, vi, ci, origin={})


@pytest.fixture()
def ds(tmp_path):
    return PreparedDataset(write_dataset(tiny_raw(), tmp_path / "ds", SplitConfig("loo")))


def test_indices_and_popularity_order(ds):
    assert (ds.num_users, ds.num_videos, ds.num_comments) == (2, 4, 5)
    # v1's comments: c2 (9 likes) before c1 (5); v2: c4 (7), c5 (3), c3 (1)
    assert list(ds.comments_of(1)) == [2, 1]
    assert list(ds.comments_of(2)) == [4, 5, 3]
    assert list(ds.comments_of(3)) == []
    assert ds.comment_video[0] == 0 and list(ds.comment_video[1:]) == [1, 1, 2, 2, 2]
    assert ds.video_category[2] == 0 and ds.video_category[1] == ds.video_category[4] != 0
    assert ds.raw_ids("users").to_pylist() == ["u1", "u2"]


def test_interactions_sorted_and_grouped(ds):
    u1 = slice(ds.vi_ptr[1], ds.vi_ptr[2])
    assert list(ds.vi_video[u1]) == [1, 2, 3, 4] and list(ds.vi_time[u1]) == [10, 20, 30, 40]
    c1 = slice(ds.ci_ptr[1], ds.ci_ptr[2])
    assert list(ds.ci_comment[c1]) == [1, 2, 3, 1, 4]
    # groups by first interaction: v1 -> 0, v2 -> 1; the late c1 like stays in group 0
    assert list(ds.ci_group[c1]) == [0, 0, 1, 0, 1]
    assert list(ds.ci_ngroups[c1]) == [1, 1, 2, 2, 2]


def test_loo_split_and_comm_rank_positives(ds):
    rec_test = ds.samples("rec", "test")
    rec_val = ds.samples("rec", "val")
    assert list(rec_test.user) == [1] and list(rec_test.target) == [4]
    assert list(rec_val.target) == [3]
    # first videos have empty histories -> dropped; u2 has <3 targets -> train only
    train = ds.samples("rec", "train")
    assert sorted(zip(train.user.tolist(), train.target.tolist())) == [(1, 2), (2, 1)]
    cr = ds.samples("comm_rank", "train")
    groups = {(int(u), int(v)): sorted(cr.positives(i).tolist()) for i, (u, v) in enumerate(zip(cr.user, cr.target))}
    # u1's v1 group has a video history before t=11 (v1@10): positives c1, c2 (c1 twice -> once)
    assert groups[(1, 1)] == [1, 2]
    assert groups[(1, 2)] == [3, 4]


@pytest.mark.parametrize("method", ["loo", "time"])
def test_no_time_leakage(tmp_path, method):
    """Every history item of every sample happened strictly before the sample's time."""
    from lsvcr.data.synthetic import SyntheticConfig, generate

    raw, _ = generate(SyntheticConfig(num_users=200, num_videos=300, seed=3))
    ds = PreparedDataset(write_dataset(raw, tmp_path / "ds", SplitConfig(method, 0.1, 0.1)))
    for task in ("rec", "comm_rank"):
        for part in ("train", "val", "test"):
            s = ds.samples(task, part)
            assert len(s) > 0, (task, part)
            u = s.user.astype(np.int64)
            # the last history item is before t, and the next interaction (if any) is not
            vi_last = np.where(s.vi_end > ds.vi_ptr[u], ds.vi_time[np.maximum(s.vi_end - 1, 0)], -1)
            assert (vi_last < s.time).all()
            nxt = s.vi_end < ds.vi_ptr[u + 1]
            assert (ds.vi_time[s.vi_end[nxt]] >= s.time[nxt]).all()
            ci_last = np.where(s.ci_end > ds.ci_ptr[u], ds.ci_time[np.maximum(s.ci_end - 1, 0)], -1)
            assert (ci_last < s.time).all()
            nxt = s.ci_end < ds.ci_ptr[u + 1]
            assert (ds.ci_time[s.ci_end[nxt]] >= s.time[nxt]).all()
    if method == "time":
        assert ds.samples("rec", "train").time.max() < ds.samples("rec", "test").time.min()


def test_samples_do_not_depend_on_how_far_apart_times_are(tmp_path):
    """Times 2^57 apart overflow the one-int64 (user, time) key, so samples fall back to dense time
    ranks; the samples must be those of the same world with small times."""
    small = tiny_raw()
    far = tiny_raw()
    for name in ("video_interactions", "comment_interactions"):
        t = far.table(name)
        setattr(far, name, t.set_column(t.schema.get_field_index("timestamp"), "timestamp",
                                        pa.compute.multiply(t["timestamp"], 2**57)))
    a = PreparedDataset(write_dataset(small, tmp_path / "small", SplitConfig("loo")))
    b = PreparedDataset(write_dataset(far, tmp_path / "far", SplitConfig("loo")))
    for task in ("rec", "comm_rank"):
        for part in ("train", "val", "test"):
            x, y = a.samples(task, part), b.samples(task, part)
            for f in ("user", "target", "vi_end", "ci_end", "pos_ptr", "pos"):
                assert np.array_equal(getattr(x, f), getattr(y, f)), (task, part, f)
            assert np.array_equal(x.time * 2**57, y.time)
    assert len(a.samples("rec", "train")) and len(a.samples("comm_rank", "train"))


def test_history_gatherer_caps_and_groups(ds):
    from lsvcr.data.history import HistoryGatherer

    test = ds.samples("rec", "test")  # u1 -> v4 at t=40
    b = HistoryGatherer(ds, max_phis_len=2, max_chis_len=5)(test, np.arange(len(test)))
    assert b.v_video.tolist() == [[2, 3]]  # the two most recent of v1, v2, v3
    assert b.v_comment.tolist() == [[4, 0]]  # v2's hottest comment is c4; v3 has none
    assert b.c_video.tolist() == [[1, 2]]  # groups v1 (opened @11), v2 (@21); c4@40 is not before t
    pairs = sorted(zip(b.c_slot.tolist(), b.c_comment.tolist()))
    assert pairs == [(0, 1), (0, 1), (0, 2), (1, 3)]
    b1 = HistoryGatherer(ds, max_phis_len=50, max_chis_len=1)(test, np.arange(len(test)))
    assert b1.c_video.tolist() == [[2]] and b1.c_comment.tolist() == [3] and b1.c_slot.tolist() == [0]
    assert b1.v_video.tolist() == [[1, 2, 3]]
