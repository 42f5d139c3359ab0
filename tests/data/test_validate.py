import logging

import pyarrow as pa
import pytest

from lsvcr.data.raw import RawTables
from lsvcr.data.sources import ROW_COLUMN, read_native
from lsvcr.data.validate import REASONS, validate
from lsvcr.errors import ConfigError, DataError


def tables(**override):
    base = {
        "videos": {"video_id": [1, 2, 3], "title": ["a", "b", "c"], "category": [None, "x", "y"]},
        "comments": {"comment_id": [10, 11, 12], "video_id": [1, 1, 2], "text": ["p", "q", "r"],
                     "like_count": [5, 0, 2]},
        "video_interactions": {"user_id": ["u1", "u2", "u1"], "video_id": [1, 2, 3], "timestamp": [5, 1, 6]},
        "comment_interactions": {"user_id": ["u1", "u1"], "comment_id": [10, 12], "timestamp": [5, 5]},
    }
    base.update(override)
    origin = {name: f"data/{name}.parquet" for name in base}
    return RawTables(**{k: pa.table(v) for k, v in base.items()}, origin=origin)


def test_clean_tables_pass_unchanged_with_zero_counts():
    raw = tables()
    out, counts = validate(raw)
    assert counts == dict.fromkeys(REASONS, 0)
    for name in ("videos", "comments", "video_interactions", "comment_interactions"):
        assert out.table(name).equals(raw.table(name))
    assert out.origin == raw.origin


def test_missing_column_is_fatal():
    with pytest.raises(DataError, match=r"data/comments\.parquet: missing column 'like_count'"):
        validate(tables(comments={"comment_id": [10], "video_id": [1], "text": ["p"]}))


def test_null_id_names_file_and_row():
    vi = {"user_id": ["u1", None, "u1"], "video_id": [1, 2, 3], "timestamp": [1, 2, 3]}
    with pytest.raises(DataError, match=r"data/video_interactions\.parquet: row 2, user_id=None: null user_id"):
        validate(tables(video_interactions=vi))


# Changed by the real-files issue: empty titles and texts were fatal; real KuaiComt has empty
# captions, so such videos and comments are kept (with data.empty_text) and counted.
@pytest.mark.parametrize("title", ["", "   ", "\u3000\t", None])
def test_blank_title_is_kept_and_counted(title, caplog):
    videos = {"video_id": [1, 2, 3], "title": ["a", "b", title], "category": [None, None, None]}
    with caplog.at_level(logging.WARNING, logger="lsvcr.data.validate"):
        out, counts = validate(tables(videos=videos), empty_text="[no title]")
    assert out.videos["title"].to_pylist() == ["a", "b", "[no title]"]
    assert out.source["empty_text"] == {"empty_title": 1, "empty_comment_text": 0}
    assert "data/videos.parquet: 1 rows with an empty title kept" in caplog.text and "(first: row 3)" in caplog.text


def test_blank_comment_text_is_kept_and_counted():
    comments = {"comment_id": [10, 11], "video_id": [1, 1], "text": ["ok", " "], "like_count": [1, 1]}
    out, _ = validate(tables(comments=comments, comment_interactions={"user_id": ["u1"], "comment_id": [10],
                                                                      "timestamp": [5]}))
    assert out.comments["text"].to_pylist() == ["ok", ""] and out.source["empty_text"]["empty_comment_text"] == 1


def test_negative_timestamp_and_negative_likes_are_fatal_null_timestamps_skipped():
    ci = {"user_id": ["u1", "u2"], "comment_id": [10, 11], "timestamp": [3, -4]}
    expected = r"comment_interactions\.parquet: row 2, user_id='u2': negative timestamp \(-4\)"
    with pytest.raises(DataError, match=expected):
        validate(tables(comment_interactions=ci))
    # changed by the real-files issue: a row without a timestamp (empty field, NaN) is skipped and counted
    vi = {"user_id": ["u1", "u1", "u2"], "video_id": [1, 2, 3], "timestamp": pa.array([1, None, 4], pa.int64())}
    out, counts = validate(tables(video_interactions=vi))
    assert counts["video_interaction_null_timestamp"] == 1 and out.video_interactions["video_id"].to_pylist() == [1, 3]
    comments = {"comment_id": [10], "video_id": [1], "text": ["p"], "like_count": [-1]}
    with pytest.raises(DataError, match=r"row 1, comment_id=10: null or negative like_count \(-1\)"):
        validate(tables(comments=comments))


def test_out_of_order_timestamps_strict_vs_sort():
    # users interleave freely; only u1's own rows must not go back in time (row 4: 4 < 7)
    vi = {"user_id": ["u1", "u2", "u1", "u1", "u2"], "video_id": [1, 2, 3, 1, 3], "timestamp": [5, 1, 7, 4, 2]}
    raw = tables(video_interactions=vi)
    with pytest.raises(
        DataError,
        match=r"video_interactions\.parquet: row 4, user_id='u1': timestamp 4 is earlier than 7 at this user's "
        r"previous row 3;.*data\.timestamps=sort",
    ):
        validate(raw)
    out, counts = validate(raw, timestamps="sort")
    assert out.video_interactions.num_rows == 5 and sum(counts.values()) == 0


def test_unknown_timestamp_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="data.timestamps='chrono'"):
        validate(tables(), timestamps="chrono")


def test_recoverable_problems_are_skipped_and_counted(caplog):
    raw = tables(
        # video 2 repeats (second copy dropped, the first title kept)
        videos={"video_id": [1, 2, 2, 3], "title": ["a", "b", "b2", "c"], "category": [None] * 4},
        # comment 11 repeats; comment 13 is under unknown video 9
        comments={"comment_id": [10, 11, 11, 12, 13], "video_id": [1, 1, 2, 2, 9], "text": list("pqrst"),
                  "like_count": [1, 2, 3, 4, 5]},
        # row 2 repeats row 1 exactly; row 3 differs only in time (kept); row 4 has unknown video 8
        video_interactions={"user_id": ["u1", "u1", "u1", "u1"], "video_id": [1, 1, 1, 8], "timestamp": [5, 5, 6, 7]},
        # row 2 duplicates row 1; comment 13 was dropped with its video -> unknown; 99 never existed
        comment_interactions={"user_id": ["u1", "u1", "u1", "u2"], "comment_id": [10, 10, 13, 99],
                              "timestamp": [1, 1, 2, 3]},
    )
    with caplog.at_level(logging.WARNING, logger="lsvcr.data.validate"):
        out, counts = validate(raw)
    assert counts == {
        "duplicate_video_id": 1,
        "duplicate_comment_id": 1,
        "comment_unknown_video": 1,
        "video_interaction_null_timestamp": 0,
        "duplicate_video_interaction": 1,
        "video_interaction_unknown_video": 1,
        "comment_interaction_null_timestamp": 0,
        "duplicate_comment_interaction": 1,
        "comment_interaction_unknown_comment": 2,
        "comment_interaction_wrong_video": 0,
    }
    assert out.videos["title"].to_pylist() == ["a", "b", "c"]
    assert out.comments["comment_id"].to_pylist() == [10, 11, 12]
    assert out.comments["like_count"].to_pylist() == [1, 2, 4]  # first copy of 11 kept
    assert out.video_interactions["timestamp"].to_pylist() == [5, 6]
    assert out.comment_interactions["comment_id"].to_pylist() == [10]
    assert len(caplog.records) == 7
    assert "data/videos.parquet: skipped 1 videos whose video_id repeats" in caplog.records[0].getMessage()


def test_duplicates_are_found_exactly_when_every_hash_collides(monkeypatch):
    """_dedupe groups only rows sharing a key hash; with every hash equal it groups all rows and
    must still drop exactly the repeated keys (nulls equal to each other), keeping the first."""
    import numpy as np

    monkeypatch.setattr("lsvcr.data.validate._row_hashes", lambda t, keys: np.zeros(t.num_rows, np.uint64))
    from lsvcr.data.validate import _dedupe

    t = pa.table({"user_id": ["u1", "u2", "u1", "u1", None, None], "video_id": [1, 1, 1, 2, 3, 3],
                  "timestamp": [5, 5, 5, 5, 7, 7]})
    out, dropped = _dedupe(t, ["user_id", "video_id", "timestamp"])
    assert dropped == 2 and out.to_pylist() == t.take([0, 1, 3, 4]).to_pylist()
    clean = t.take([0, 1, 3, 4])
    same, none = _dedupe(clean, ["user_id", "video_id", "timestamp"])
    assert none == 0 and same is clean  # nothing to drop: the table itself, no copy


def test_ids_of_different_integer_and_string_types_are_matched():
    videos = {"video_id": pa.array([1, 2], pa.int32()), "title": ["a", "b"]}
    comments = {"comment_id": ["10"], "video_id": pa.array([2], pa.int64()), "text": ["p"], "like_count": [0]}
    vi = {"user_id": [1, 1], "video_id": ["1", "7"], "timestamp": [1, 2]}
    ci = {"user_id": [1], "comment_id": [10], "timestamp": [1]}
    out, counts = validate(tables(videos=videos, comments=comments, video_interactions=vi, comment_interactions=ci))
    assert counts["video_interaction_unknown_video"] == 1 and out.video_interactions["video_id"].to_pylist() == ["1"]
    assert counts["comment_interaction_unknown_comment"] == 0 and counts["comment_unknown_video"] == 0


def test_source_row_column_names_rows_and_is_dropped():
    vi = {"user_id": ["u1", "u1"], "video_id": [1, 2], "timestamp": [9, 3], ROW_COLUMN: [4, 17]}
    expected = r"row 17, user_id='u1': timestamp 3 is earlier than 9 at this user's previous row 4;"
    with pytest.raises(DataError, match=expected):
        validate(tables(video_interactions=vi))
    out, _ = validate(tables(video_interactions=vi), timestamps="sort")
    assert out.video_interactions.column_names == ["user_id", "video_id", "timestamp"]


def test_csv_errors_give_row_and_line(tmp_path):
    files = {
        "videos.csv": "video_id,title,category\n1,a,\n2,b,\n",
        "comments.csv": "comment_id,video_id,text,like_count\n10,1,p,1\n\n11,2,q,-3\n",  # blank line 3
        "video_interactions.csv": "user_id,video_id,timestamp\nu1,1,1\n",
        "comment_interactions.csv": "user_id,comment_id,timestamp\nu1,10,1\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=r"comments\.csv: row 2 \(line 4\), comment_id=11: null or negative like_count"):
        validate(read_native(tmp_path))
