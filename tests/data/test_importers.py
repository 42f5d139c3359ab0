"""The KuaiComt and official-code importers on files with the defects real files have: each case
ends in a clean import with the problem counted, or in one message naming the file and row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from lsvcr.errors import DataError
from lsvcr.data.sources import read_kuaicomt
from lsvcr.data.validate import validate
from test_sources import write_official

# a KuaiComt-schema world big enough for the checks that look at shares of rows
VIDEOS = "video_id,author_id,video_type,upload_dt,caption,duration,category\n" + "".join(
    f"{100 + v},9,NORMAL,2023-07-06,caption {v},36.0,music\n" for v in range(6))
COMMENTS = "comment_id,comment_content,video_id,comment_like_cnt,comment_reply_out,show_comment_cnt_td\n" + "".join(
    f"{500 + c},text {c},{100 + c % 6},{c},0,1\n" for c in range(12))
VI_HEADER = "user_id,video_id,p_hourmin,time_ms,is_click,is_like,long_view,play_time_ms\n"
VI = VI_HEADER + "".join(f"{u},{100 + (u + k) % 6},1500,{1696141175000 + 1000 * (10 * u + k)},1,0,1,10\n"
                         for u in range(4) for k in range(5))
CI_HEADER = "user_id,comment_id,time_stamp,photo_id,is_like,is_reply\n"
CI = CI_HEADER + "".join(f"{u},{500 + c},{1696141175 + 10 * u + c},{100 + c % 6},1,0\n" for u in range(4) for c in range(4))


def kuaicomt(tmp_path: Path, **files) -> Path:
    names = {"videos": "video_features.csv", "comments": "comment_features.csv", "vi": "user_video_inter.csv",
             "ci": "user_comment_inter.csv"}
    base = {"video_features.csv": VIDEOS, "comment_features.csv": COMMENTS, "user_video_inter.csv": VI,
            "user_comment_inter.csv": CI}
    base.update({names[k]: v for k, v in files.items()})
    root = tmp_path / "kuaicomt"
    root.mkdir(parents=True, exist_ok=True)
    for name, text in base.items():
        (root / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return root


def prepared(raw):
    out, counts = validate(raw, timestamps="sort")
    return out, counts


def test_empty_captions_are_kept_and_counted(tmp_path):
    videos = VIDEOS.replace("caption 2", "").replace("caption 4", "   ")
    out, _ = prepared(read_kuaicomt(kuaicomt(tmp_path, videos=videos)))
    assert out.videos.num_rows == 6 and out.videos["title"].to_pylist()[2] == ""
    assert out.source["empty_text"] == {"empty_title": 2, "empty_comment_text": 0}


def test_truncated_last_line_is_skipped_with_its_line(tmp_path):
    root = kuaicomt(tmp_path, vi=VI + "3,101,1500,169614")  # the copy stopped mid-row
    raw = read_kuaicomt(root)
    assert raw.video_interactions.num_rows == 20
    assert raw.source["read_skips"] == {str(root / "user_video_inter.csv"): {"truncated_last_line": 22}}


def test_non_numeric_ids_import_instead_of_a_traceback(tmp_path):
    ci = CI + "anon,501,1696141190,101,1,0\n"  # one user id that is not a number
    out, _ = prepared(read_kuaicomt(kuaicomt(tmp_path, ci=ci)))
    assert set(out.comment_interactions["user_id"].to_pylist()) == {"0", "1", "2", "3", "anon"}
    assert out.video_interactions["user_id"].type == out.comment_interactions["user_id"].type
    from lsvcr.data.builder import index_world

    world = index_world(out)
    assert world.num_users == 5


def test_nan_and_empty_timestamps_are_skipped_and_counted(tmp_path):
    vi = VI + "3,101,1500,nan,1,0,1,10\n3,102,1500,,1,0,1,10\n"
    out, counts = prepared(read_kuaicomt(kuaicomt(tmp_path, vi=vi)))
    assert counts["video_interaction_null_timestamp"] == 2 and out.video_interactions.num_rows == 20


def test_gbk_file_names_itself_and_the_row(tmp_path):
    videos = (VIDEOS + "106,9,NORMAL,2023-07-06,中文标题,36.0,music\n").encode("gbk")
    with pytest.raises(DataError, match=r"video_features\.csv is not UTF-8 \(row 7 \(line 8\), column 'caption'\); "
                                         r"re-encode it as UTF-8"):
        read_kuaicomt(kuaicomt(tmp_path, videos=videos))


def test_header_only_comment_interactions_import_without_comment_behaviour(tmp_path):
    out, counts = prepared(read_kuaicomt(kuaicomt(tmp_path, ci=CI_HEADER)))
    assert out.comment_interactions.num_rows == 0 and out.video_interactions.num_rows == 20
    from lsvcr.data.builder import index_world

    assert len(index_world(out).arrays["ci_comment"]) == 0


def test_comment_flags_filter_and_count(tmp_path):
    ci = CI_HEADER + "0,500,1696141175,100,0,0\n0,501,1696141176,101,0,1\n1,502,1696141177,102,1,0\n"
    raw = read_kuaicomt(kuaicomt(tmp_path, ci=ci))
    assert raw.comment_interactions["comment_id"].to_pylist() == [501, 502]
    assert raw.source["signal_filtered"]["comment_interactions"] == 1
    every = read_kuaicomt(kuaicomt(tmp_path, ci=ci), comment_signals=())
    assert every.comment_interactions.num_rows == 3


def test_photo_id_of_another_video_is_dropped_or_fatal_when_most_disagree(tmp_path):
    # two of 16 rows name another video than their comment's: dropped and counted
    lines = CI.splitlines()
    lines[1] = lines[1].replace(",100,1,0", ",105,1,0")
    lines[2] = lines[2].replace(",101,1,0", ",103,1,0")
    out, counts = prepared(read_kuaicomt(kuaicomt(tmp_path, ci="\n".join(lines) + "\n")))
    assert counts["comment_interaction_wrong_video"] == 2 and out.comment_interactions.num_rows == 14
    assert "video_id" not in out.comment_interactions.column_names
    # photo_id and comment_id swapped in the header: most rows disagree
    swapped = CI.replace("user_id,comment_id,time_stamp,photo_id", "user_id,photo_id,time_stamp,comment_id")
    with pytest.raises(DataError, match=r"user_comment_inter\.csv: row 1 \(line 2\), user_id=0: 16 of 16 rows name a "
                                        r"comment_id that is not in comments \(this row: 100\); the column looks swapped"):
        prepared(read_kuaicomt(kuaicomt(tmp_path, ci=swapped)))
    # the video column of most rows is another video (a shifted export): fatal too
    shifted = CI_HEADER + "".join(f"{u},{500 + c},{1696141175 + 10 * u + c},{100 + (c + 1) % 6},1,0\n"
                                  for u in range(4) for c in range(4))
    with pytest.raises(DataError, match=r"16 of 16 comment interactions name another video than their comment's "
                                        r"\(this row: video 101, its comment 500 is under 100\)"):
        prepared(read_kuaicomt(kuaicomt(tmp_path, ci=shifted)))


def test_comment_times_on_another_clock_are_fatal(tmp_path):
    # time_stamp holding small ids: read as seconds they date every comment to 1970
    wrong = CI_HEADER + "".join(f"{u},{500 + c},{10 * u + c},{100 + c % 6},1,0\n" for u in range(4) for c in range(4))
    with pytest.raises(DataError, match=r"user_comment_inter\.csv: only 0% of comment interaction timestamps .*different "
                                        r"time units \(seconds vs milliseconds\) or the timestamp column holds something else"):
        prepared(read_kuaicomt(kuaicomt(tmp_path, ci=wrong)))
    # milliseconds in a seconds-named column are recognised, not a clock error
    ms = CI_HEADER + "0,500,1696141175123,100,1,0\n"
    out, _ = prepared(read_kuaicomt(kuaicomt(tmp_path, ci=ms)))
    assert out.comment_interactions["timestamp"].to_pylist() == [1696141175123]


def test_official_empty_title_is_kept(tmp_path):
    from lsvcr.data.official import read_official

    photos = {"p1": {"title": "", "comment_list": ["c1", "c2", "c3"]}, "p2": {"title": "t2", "comment_list": ["c4"]},
              "p3": {"title": "t3", "comment_list": []}, "p4": {"title": None, "comment_list": []}}
    out, _ = prepared(read_official(write_official(tmp_path / "off", photos=photos)))
    assert out.videos.num_rows == 4 and out.source["empty_text"]["empty_title"] == 2


@pytest.mark.slow
def test_prepare_records_every_count_in_the_manifest(tmp_path):
    videos = VIDEOS.replace("caption 2", "")
    vi = VI + "3,101,1500,nan,1,0,1,10\n3,101,1500,1696"
    root = kuaicomt(tmp_path, videos=videos, vi=vi)
    p = run_cli(["stage=prepare", "data=kuaicomt", f"data.root={root}", "data.empty_text='(no caption)'"], tmp_path / "out")
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads(next((tmp_path / "out" / "data").glob("kuaicomt-*/manifest.json")).read_text())
    assert m["skipped"]["video_interaction_null_timestamp"] == 1
    assert m["source"]["empty_text"]["empty_title"] == 1
    assert list(m["source"]["read_skips"].values()) == [{"truncated_last_line": 23}]
    assert m["source"]["signal_filtered"] == {"video_interactions": 0, "comment_interactions": 0}
    assert m["counts"]["videos"] == 6
