import json
import os
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from lsvcr.data.official import load_id_list, read_official
from lsvcr.data.sources import ROW_COLUMN, read_kuaicomt, read_native
from lsvcr.errors import ConfigError, DataError

NATIVE = {
    "videos.csv": "video_id,title,category\n1,123,\n2,cats and dogs,pets\n",
    "comments.csv": 'comment_id,video_id,text,like_count\n10,1,"nice, really",5\n11,2,007,0\n',
    "video_interactions.csv": "user_id,video_id,timestamp\nu1,1,100\nu1,2,200\nu2,2,150\n",
    "comment_interactions.csv": "user_id,comment_id,timestamp\nu1,10,120\n",
}


def write_files(root, files):
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


# ----------------------------------------------------------------------------- native


def test_native_csv_keeps_rows_in_order_and_forces_text_types(tmp_path):
    raw = read_native(write_files(tmp_path, NATIVE))
    assert raw.videos.to_pylist() == [
        {"video_id": 1, "title": "123", "category": None},
        {"video_id": 2, "title": "cats and dogs", "category": "pets"},
    ]
    assert raw.comments["text"].to_pylist() == ["nice, really", "007"]
    assert raw.comments["like_count"].type == pa.int64()
    assert raw.video_interactions["user_id"].to_pylist() == ["u1", "u1", "u2"]
    assert raw.video_interactions["timestamp"].to_pylist() == [100, 200, 150]
    assert raw.origin["comments"] == str(tmp_path / "comments.csv")
    assert raw.source["kind"] == "native"


def test_native_parquet_and_csv_mix(tmp_path):
    files = dict(NATIVE)
    del files["videos.csv"]
    write_files(tmp_path, files)
    videos = pa.table({"video_id": [7, 8], "title": pa.array(["a", "b"]).dictionary_encode(), "extra": [0, 1]})
    pq.write_table(videos, tmp_path / "videos.parquet")
    raw = read_native(tmp_path)
    assert raw.videos.column_names == ["video_id", "title"]  # extra column not read; category optional
    assert raw.videos["title"].type == pa.string()
    assert raw.videos["video_id"].to_pylist() == [7, 8]
    assert raw.origin["videos"] == str(tmp_path / "videos.parquet")


def test_native_missing_table_names_expected_files(tmp_path):
    files = dict(NATIVE)
    del files["video_interactions.csv"]
    with pytest.raises(DataError, match=r"expected video_interactions\.csv or video_interactions\.parquet"):
        read_native(write_files(tmp_path, files))


def test_native_both_formats_is_an_error(tmp_path):
    write_files(tmp_path, NATIVE)
    pq.write_table(pa.table({"video_id": [1], "title": ["x"]}), tmp_path / "videos.parquet")
    with pytest.raises(DataError, match="both videos.csv and videos.parquet exist"):
        read_native(tmp_path)


def test_native_missing_directory(tmp_path):
    with pytest.raises(DataError, match="data directory not found"):
        read_native(tmp_path / "nope")


def test_csv_wrong_column_count_names_file_and_line(tmp_path):
    # the blank line is skipped by the reader: data row 2 sits on line 4
    files = {**NATIVE, "video_interactions.csv": "user_id,video_id,timestamp\nu1,1,100\n\nu1,2\nu1,3,200\n"}
    with pytest.raises(DataError, match=r"video_interactions\.csv: row 2 \(line 4\): Expected 3 columns, got 2"):
        read_native(write_files(tmp_path, files))


def test_csv_non_integer_timestamp_names_file_line_and_column(tmp_path):
    files = {**NATIVE, "comment_interactions.csv": "user_id,comment_id,timestamp\nu1,10,1\nu1,10,soon\n"}
    with pytest.raises(
        DataError, match=r"comment_interactions\.csv: row 2 \(line 3\), column 'timestamp': .*invalid value 'soon'"
    ):
        read_native(write_files(tmp_path, files))


def test_csv_empty_file(tmp_path):
    with pytest.raises(DataError, match="videos.csv: empty file"):
        read_native(write_files(tmp_path, {**NATIVE, "videos.csv": ""}))


# ----------------------------------------------------------------------------- KuaiComt

KUAICOMT = {
    "video_features.csv": "video_id,author_id,video_type,upload_dt,caption,duration,category\n"
    "101,9,NORMAL,2023-07-06,first caption,36200.0,music\n102,9,AD,2023-07-07,second,100.0,\n",
    "comment_features.csv": "comment_id,comment_content,video_id,comment_like_cnt,comment_reply_out,"
    "show_comment_cnt_td\n"
    "501,hello there,101,112,6,645\n502,12345,102,3,0,10\n",
    "user_video_inter.csv": "user_id,video_id,p_hourmin,time_ms,is_click,is_like,long_view,play_time_ms\n"
    "1,101,1500,1696141175214.0,1,0,1,5822\n"  # long view: kept
    "1,102,1501,1696141176000.0,1,0,0,10\n"  # impression only: dropped
    "2,102,1502,1696141177000.0,0,1,0,10\n",  # like: kept
    "user_comment_inter.csv": "user_id,comment_id,time_stamp,photo_id,is_like,is_reply\n"
    "1,501,1696421927,101,1,0\n2,502,1696421930,102,0,1\n",
}


def test_kuaicomt_maps_columns_units_and_signals(tmp_path):
    raw = read_kuaicomt(write_files(tmp_path, KUAICOMT))
    assert raw.videos.to_pylist() == [
        {"video_id": 101, "title": "first caption", "category": "music"},
        {"video_id": 102, "title": "second", "category": None},
    ]
    assert raw.comments.to_pylist() == [
        {"comment_id": 501, "video_id": 101, "text": "hello there", "like_count": 112},
        {"comment_id": 502, "video_id": 102, "text": "12345", "like_count": 3},
    ]
    vi = raw.video_interactions
    assert vi.column_names == ["user_id", "video_id", "timestamp", ROW_COLUMN]
    assert vi["timestamp"].type == pa.int64()
    assert vi["timestamp"].to_pylist() == [1696141175214, 1696141177000]
    assert vi[ROW_COLUMN].to_pylist() == [1, 3]  # file rows of the kept interactions
    ci = raw.comment_interactions
    # changed by the real-files issue: photo_id is kept (as video_id) for validation to check, and
    # the comment flags filter rows (both rows here have one)
    assert ci.column_names == ["user_id", "comment_id", "timestamp", "video_id", ROW_COLUMN]
    assert ci["video_id"].to_pylist() == [101, 102]
    assert raw.source["signal_filtered"] == {"video_interactions": 1, "comment_interactions": 0}
    assert ci["timestamp"].to_pylist() == [1696421927000, 1696421930000]  # seconds -> ms
    assert raw.origin["video_interactions"] == str(tmp_path / "user_video_inter.csv")


def test_kuaicomt_keeps_every_impression_without_signals(tmp_path):
    raw = read_kuaicomt(write_files(tmp_path, KUAICOMT), video_signals=())
    assert raw.video_interactions.num_rows == 3
    assert ROW_COLUMN not in raw.video_interactions.column_names


def test_kuaicomt_seconds_named_column_holding_ms_is_not_scaled(tmp_path):
    files = {**KUAICOMT, "user_comment_inter.csv": "user_id,comment_id,timestamp\n1,501,1696421927123\n"}
    raw = read_kuaicomt(write_files(tmp_path, files), comment_signals=())
    assert raw.comment_interactions["timestamp"].to_pylist() == [1696421927123]


def test_kuaicomt_unknown_columns_list_what_was_found(tmp_path):
    files = {**KUAICOMT, "user_comment_inter.csv": "uid,cid,when\n1,501,5\n"}
    expected = r"user_comment_inter\.csv: no column for 'user_id'.*columns found: uid, cid, when"
    with pytest.raises(DataError, match=expected):
        read_kuaicomt(write_files(tmp_path, files))


def test_kuaicomt_missing_signal_column(tmp_path):
    with pytest.raises(DataError, match="no signal column is_collect"):
        read_kuaicomt(write_files(tmp_path, KUAICOMT), video_signals=("is_collect",))


def test_kuaicomt_missing_file(tmp_path):
    files = dict(KUAICOMT)
    del files["comment_features.csv"]
    with pytest.raises(DataError, match="missing KuaiComt file comment_features.csv"):
        read_kuaicomt(write_files(tmp_path, files))


# ----------------------------------------------------------------------------- reading in blocks

# 3,000 impressions of 3 users: every third one a long view, every 100th also a like
VI_LOG = "user_id,video_id,p_hourmin,time_ms,is_click,is_like,long_view,play_time_ms\n" + "".join(
    f"{1 + i % 3},{101 + i % 2},1500,{1696141175000 + 7 * i}.0,1,{int(i % 100 == 0)},{int(i % 3 == 0)},10\n"
    for i in range(3000))


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 2 KB (~45 rows of VI_LOG), so one file is many blocks, as a large file is."""
    monkeypatch.setattr("lsvcr.data.sources.BLOCK_SIZE", 2048)


def test_blocks_give_the_whole_file_read(tmp_path, monkeypatch):
    files = {**KUAICOMT, "user_video_inter.csv": VI_LOG}
    whole = read_kuaicomt(write_files(tmp_path / "a", files))  # 4 MB blocks: one block
    monkeypatch.setattr("lsvcr.data.sources.BLOCK_SIZE", 2048)
    blocks = read_kuaicomt(write_files(tmp_path / "b", files))
    assert blocks.video_interactions.num_columns == 4 and blocks.video_interactions["user_id"].num_chunks > 10
    assert blocks.video_interactions.to_pylist() == whole.video_interactions.to_pylist()
    kept = [i for i in range(3000) if i % 3 == 0 or i % 100 == 0]
    assert blocks.video_interactions[ROW_COLUMN].to_pylist() == [i + 1 for i in kept]
    assert blocks.source["signal_filtered"]["video_interactions"] == 3000 - len(kept)


def test_seconds_named_times_take_their_unit_from_the_whole_file(tmp_path, small_blocks):
    # seconds throughout, but the last row (filtered out: no flag) holds milliseconds: as before the
    # file read in blocks, one value past 1e11 means the column is in ms (nothing is scaled)
    rows = "".join(f"1,501,{1696421927 + i},101,1,0\n" for i in range(300)) + "1,501,1696421927999,101,0,0\n"
    files = {**KUAICOMT, "user_comment_inter.csv": "user_id,comment_id,time_stamp,photo_id,is_like,is_reply\n" + rows}
    ci = read_kuaicomt(write_files(tmp_path, files)).comment_interactions
    assert ci.num_rows == 300 and ci["timestamp"][0].as_py() == 1696421927


def test_an_id_turning_non_numeric_in_a_later_block_makes_string_ids(tmp_path, small_blocks):
    files = {**KUAICOMT, "user_video_inter.csv": VI_LOG + "anon,101,1500,1696141199000.0,1,0,1,10\n"}
    raw = read_kuaicomt(write_files(tmp_path, files))
    vi = raw.video_interactions
    assert vi["user_id"].type == pa.string() and vi["user_id"].to_pylist()[-1] == "anon"
    assert vi.num_rows == 1021 and vi[ROW_COLUMN].to_pylist()[-1] == 3001
    assert raw.source["signal_filtered"]["video_interactions"] == 1980  # counted once, not per pass


def test_blocks_keep_the_truncated_last_line_rule_and_row_numbers_of_errors(tmp_path, small_blocks):
    files = {**KUAICOMT, "user_video_inter.csv": VI_LOG + "3,101,1500,16961"}
    raw = read_kuaicomt(write_files(tmp_path / "cut", files))
    path = str(tmp_path / "cut" / "user_video_inter.csv")
    assert raw.source["read_skips"] == {path: {"truncated_last_line": 3002}}
    lines = VI_LOG.splitlines(keepends=True)
    lines[2500] = "3,101,1500\n"  # data row 2500, far past the first block
    files = {**KUAICOMT, "user_video_inter.csv": "".join(lines)}
    with pytest.raises(DataError, match=r"user_video_inter\.csv: row 2500 \(line 2501\): Expected 8 columns, got 3"):
        read_kuaicomt(write_files(tmp_path / "bad", files))


# ----------------------------------------------------------------------------- official


def sample(user, target, phis, chis_videos=(), chis_comments=()):
    return {"user_id": user, "target_photo": target, "photo_inter_his": list(phis),
            "comment_inter_his": [list(chis_videos), [list(g) for g in chis_comments]]}


def comm_sample(user, target, phis, chis_videos=(), chis_comments=(), pos=()):
    return {**sample(user, target, phis, chis_videos, chis_comments), "pos_comments": list(pos)}


# comm_rank samples that fit the default rec samples of write_official: every history a prefix of
# the user's sequence there, the positives comments of the target video
COMM_RANK = {
    "train": [comm_sample(7, "p2", ["p1"], pos=["c4"])],
    "val": [comm_sample(7, "p1", ["p1", "p2"], ["p2"], [["c4"]], pos=["c1", "c2"])],
    "test": [comm_sample(8, "p1", ["p2"], ["p2"], [["c4"]], pos=["c3"])],
}


def write_lines(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def write_official(root, photos=None, samples=None, comm_rank=None):
    """The official code's files in ``root``: photo.json, comment.json, both pickles, and the
    sample files of both tasks (``samples``: rec, ``comm_rank``: comm_rank, by split)."""
    root.mkdir(parents=True, exist_ok=True)
    photos = photos or {
        "p1": {"title": "t1", "comment_list": ["c1", "c2", "c3"]},
        "p2": {"title": "t2", "comment_list": ["c4"]},
        "p3": {"title": "t3", "comment_list": []},
        "p4": {"title": "t4", "comment_list": []},
    }
    comments = {"c1": "one", "c2": {"content": "two"}, "c3": "three", "c4": "four", "c5": "five", "c6": "orphan"}
    (root / "photo.json").write_text(json.dumps(photos))
    (root / "comment.json").write_text(json.dumps(comments))
    with open(root / "all_photos.pkl", "wb") as f:
        pickle.dump(["[PAD]", *photos], f)
    with open(root / "all_comments.pkl", "wb") as f:
        pickle.dump([0, *comments], f)
    samples = samples or {
        "train": [sample(7, "p2", ["p1"]), sample(8, "p3", ["p2"], ["p2"], [["c4"]])],
        "val": [sample(7, "p3", ["p1", "p2"], ["p2"], [["c4"]])],
        # user 7's test sample: history p1 p2 p3, target p4; comments on p2, on p1 (later), on p4
        "test": [sample(7, "p4", ["p1", "p2", "p3"], ["p2", "p1", "p4"], [["c4"], ["c1", "c2"], ["c5"]])],
    }
    for task, by_split in (("rec", samples), ("comm_rank", comm_rank or COMM_RANK)):
        for split, recs in by_split.items():
            write_lines(root / f"{task}.{split}.json", recs)
    return root


@pytest.mark.parametrize("splits", ["given", "resplit"])
def test_official_reconstructs_ordered_interactions(tmp_path, splits):
    # the comm_rank samples fit the rec ones, so both modes rebuild the same interactions
    raw = read_official(write_official(tmp_path), splits=splits)
    assert raw.videos.to_pylist() == [
        {"video_id": f"p{i}", "title": f"t{i}", "category": None} for i in range(1, 5)
    ]
    vi = raw.video_interactions.to_pylist()
    # user 7 from the test split (latest), user 8 from train; timestamps are positions 1..n
    assert [(r["user_id"], r["video_id"], r["timestamp"]) for r in vi] == [
        ("7", "p1", 1), ("7", "p2", 2), ("7", "p3", 3), ("7", "p4", 4), ("8", "p2", 1), ("8", "p3", 2),
    ]
    ci = raw.comment_interactions.to_pylist()
    # c4 under p2 (position 2); c1, c2 under p1 (position 1, but after the p2 group: stays 2);
    # c5 under p4, not in the history: previous group's stamp, still before the target (4)
    assert [(r["user_id"], r["comment_id"], r["timestamp"]) for r in ci] == [
        ("7", "c4", 2), ("7", "c1", 2), ("7", "c2", 2), ("7", "c5", 2), ("8", "c4", 1),
    ]
    assert raw.source["kind"] == "official" and "reconstructed" in raw.source["timestamps"]


def test_official_comments_popularity_and_video(tmp_path):
    raw = read_official(write_official(tmp_path))
    rows = {r["comment_id"]: r for r in raw.comments.to_pylist()}
    assert set(rows) == {"c1", "c2", "c3", "c4", "c5"}  # c6 belongs to no video: dropped
    assert [rows[c]["like_count"] for c in ("c1", "c2", "c3", "c4")] == [3, 2, 1, 1]
    assert rows["c2"]["text"] == "two"  # {"content": ...} entries are accepted too
    assert rows["c5"]["video_id"] == "p4" and rows["c5"]["like_count"] == 0  # video from the comment history
    assert raw.source["comments_without_video"] == 1


class Exploit:
    """Unpickling it runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_official_pickle_with_a_global_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    root = write_official(tmp_path / "data")
    with open(root / "all_photos.pkl", "wb") as f:
        pickle.dump(Exploit(marker), f)
    with pytest.raises(DataError, match=r"all_photos\.pkl: refusing to load '(posix|os|nt)\.system'"):
        read_official(root)
    assert not marker.exists()


def test_official_pickle_must_be_a_list_of_ids(tmp_path):
    path = tmp_path / "ids.pkl"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(DataError, match="expected a list of int or str ids, got dict"):
        load_id_list(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="ids.pkl: unreadable pickle"):
        load_id_list(path)
    path.write_bytes(pickle.dumps(("pad", 3, "x")))
    assert load_id_list(path) == ["3", "x"]


def test_official_bad_sample_line_is_named(tmp_path):
    root = write_official(tmp_path)
    (root / "rec.val.json").write_text(json.dumps(sample(7, "p3", ["p1"])) + "\n" + '{"user_id": 9}\n')
    with pytest.raises(DataError, match=r"rec\.val\.json: line 2: missing key 'target_photo'"):
        read_official(root)


def test_official_video_missing_from_photo_json(tmp_path):
    root = write_official(tmp_path)
    with open(root / "all_photos.pkl", "wb") as f:
        pickle.dump([0, "p1", "p9"], f)
    with pytest.raises(DataError, match=r"all_photos\.pkl: entry 2 \(id 'p9'\) has no entry in .*photo\.json"):
        read_official(root)


def test_official_needs_sample_files(tmp_path):
    root = write_official(tmp_path)
    (root / "comm_rank.val.json").unlink()
    with pytest.raises(DataError, match=r"missing comm_rank\.val\.json; data\.splits=given .* needs all six sample "
                                        r"files \(data\.splits=resplit re-derives"):
        read_official(root)
    assert read_official(root, splits="resplit").video_interactions.num_rows == 6  # rec.*.json suffice there
    for split in ("train", "val", "test"):
        (root / f"rec.{split}.json").unlink()
    with pytest.raises(DataError, match="no rec.train.json, rec.val.json or rec.test.json"):
        read_official(root, splits="resplit")
    with pytest.raises(ConfigError, match="data.splits='random': expected 'given'"):
        read_official(root, splits="random")


# ----------------------------------------------------------------------------- dispatch


def test_every_data_config_names_a_reader_that_exists():
    """``data.reader._target_`` of each ``conf/data/*.yaml`` is how a source is chosen (no dispatch
    table): each must import, and each reader kind has a config."""
    from hydra.utils import get_method

    targets = {}
    for path in sorted((Path(__file__).resolve().parents[2] / "conf" / "data").glob("*.yaml")):
        reader = (yaml.safe_load(path.read_text()).get("reader") or {}).get("_target_")
        if reader is not None:
            targets[path.stem] = reader
            assert callable(get_method(reader)), path
    assert {"native", "kuaicomt", "official", "recbole"} <= set(targets)
