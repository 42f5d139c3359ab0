"""RecBole atomic files (data=recbole, data=ml1m/ml100k): parsing, RecBole's filters row by row,
the k-core fixed point, and the stages on a dataset without comments."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from lsvcr.errors import ConfigError, DataError
from lsvcr.data.recbole import kcore, parse_intervals, read_atomic, read_recbole, within

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:float\tgenre:token_seq"


def write(root: Path, name: str, inter: list[str], items: list[str], users: list[str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.inter").write_text("\n".join([INTER_HEADER, *inter]) + "\n")
    (root / f"{name}.item").write_text("\n".join([ITEM_HEADER, *items]) + "\n")
    if users is not None:
        (root / f"{name}.user").write_text("\n".join(["user_id:token\tage:float", *users]) + "\n")
    return root


def items_file(n: int) -> list[str]:
    return [f"i{k}\tMovie {k}\t{1990 + k}\tDrama Comedy" for k in range(n)]


def test_atomic_header_types_and_errors(tmp_path):
    root = write(tmp_path / "d", "d", ["u1\ti1\t4\t10", "u1\ti2\t3.5\t11"], items_file(3))
    table, types = read_atomic(root / "d.inter")
    assert types == {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"}
    assert table["rating"].to_pylist() == [4.0, 3.5] and table["user_id"].to_pylist() == ["u1", "u1"]
    (root / "bad.inter").write_text("user_id\titem_id:token\n1\t2\n")
    with pytest.raises(DataError, match=r"bad.inter: header column 'user_id' is not 'name:type'"):
        read_atomic(root / "bad.inter")
    (root / "num.inter").write_text(INTER_HEADER + "\nu1\ti1\t4\t10\nu1\ti2\tfour\t11\n")
    with pytest.raises(DataError, match=r"num.inter: line 3: .*four"):
        read_atomic(root / "num.inter")
    (root / "cols.inter").write_text(INTER_HEADER + "\nu1\ti1\t4\t10\nu1\ti2\t11\n")
    with pytest.raises(DataError, match=r"cols.inter: line 3: Expected 4 columns, got 3"):
        read_atomic(root / "cols.inter")
    (root / "e").mkdir()
    (root / "e" / "e.inter").write_text(INTER_HEADER + "\n")
    with pytest.raises(DataError, match=r"missing e.item .*holds: e.inter"):
        read_recbole(root / "e")


def test_intervals_parse_like_recbole():
    assert parse_intervals("[3,inf)", "k") == [("[", 3.0, float("inf"), ")")]
    two = parse_intervals("(0,1];[3,4)", "k")
    assert within(np.array([0, 0.5, 1, 2, 3, 4]), two).tolist() == [False, True, True, False, True, False]
    for bad in ("3,inf", "[a,2]", "[5,1]"):
        with pytest.raises(ConfigError, match="k="):
            parse_intervals(bad, "k")


def test_value_filter_duplicates_and_unknown_items_row_by_row(tmp_path):
    inter = [
        "u1\ti0\t5\t100",   # kept
        "u1\ti1\t2\t101",   # rating < 3: dropped by val_interval
        "u1\ti0\t4\t50",    # duplicate (u1, i0), earlier in time: rm_dup_inter=first keeps this one
        "u2\ti9\t5\t102",   # item not in .item: dropped
        "u2\ti2\t3\t103",   # kept
        "\ti2\t4\t104",     # no user id: dropped
        "u3\ti2\t4\tnan",   # no time: dropped
    ]
    root = write(tmp_path / "d", "d", inter, items_file(3))
    raw = read_recbole(root, val_interval={"rating": "[3,inf)"}, rm_dup_inter="first",
                       title_fields=["movie_title", "release_year", "genre"], category_field="genre")
    rows = sorted(zip(*(raw.video_interactions[c].to_pylist() for c in ("user_id", "video_id", "timestamp"))))
    assert rows == [("u1", "i0", 50), ("u2", "i2", 103)]
    f = raw.source["filters"]
    assert (f["missing_id_or_time"], f["duplicate_inter"], f["val_interval.rating.inter"], f["inter_unknown_item"]) == (2, 1, 1, 1)
    assert raw.videos["title"].to_pylist()[0] == "Movie 0. 1990. Drama Comedy"  # float year printed as written
    assert raw.videos["category"].to_pylist() == ["Drama"] * 3
    assert raw.comments.num_rows == 0 and raw.comment_interactions.num_rows == 0
    last = read_recbole(root, val_interval={"rating": "[3,inf)"}, rm_dup_inter="last")
    assert ("u1", "i0", 100) in zip(*(last.video_interactions[c].to_pylist() for c in ("user_id", "video_id", "timestamp")))


def _reference_kcore(pairs, u_min, i_min, item_universe):
    """RecBole's loop, written plainly: ban both sides on the same counts, drop, repeat."""
    pairs, items = list(pairs), set(item_universe)
    while True:
        uc, ic = Counter(u for u, _ in pairs), Counter(i for _, i in pairs)
        ban_u = {u for u in uc if uc[u] < u_min}
        ban_i = {i for i in ic if ic[i] < i_min} | {i for i in items if ic[i] < i_min}
        items -= ban_i
        kept = [(u, i) for u, i in pairs if u not in ban_u and i not in ban_i]
        if len(kept) == len(pairs):
            return kept, items
        pairs = kept


def test_kcore_reaches_the_fixed_point_recbole_reaches(tmp_path):
    rng = np.random.default_rng(0)
    # a long-tailed random bipartite graph: several rounds of banning before the fixed point
    pairs = {(f"u{int(u)}", f"i{int(i)}") for u, i in zip(rng.zipf(1.6, 900) % 80, rng.zipf(1.4, 900) % 60)}
    # plus a chain that unravels one link per round: c0 has 1 item (j0); j0 then has 2 users, ...
    for k in range(5):
        pairs |= {(f"c{k}", f"j{k}"), (f"c{k + 1}", f"j{k}")} | {(f"c{k + 1}", f"i{n}") for n in range(2)}
    pairs = sorted(pairs)
    inter = [f"{u}\t{i}\t4\t{t}" for t, (u, i) in enumerate(pairs)]
    chain_items = [f"j{k}\tChain {k}\t2000\tDrama" for k in range(5)]
    root = write(tmp_path / "d", "d", inter, items_file(70) + chain_items)
    raw = read_recbole(root, user_inter_num_interval="[4,inf)", item_inter_num_interval="[3,inf)")
    expected, items = _reference_kcore(pairs, 4, 3, {f"i{k}" for k in range(70)} | {f"j{k}" for k in range(5)})
    got = sorted(zip(raw.video_interactions["user_id"].to_pylist(), raw.video_interactions["video_id"].to_pylist()))
    assert got == sorted(expected) and len(got) > 0
    assert raw.source["filters"]["kcore_rounds"] >= 3, "the test graph should need several rounds"
    assert not any(u.startswith("c") for u, _ in got), "the chain unravels completely"
    # the .item rows without enough interactions (none at all included) are gone: not ranking candidates
    assert set(raw.videos["video_id"].to_pylist()) == items
    uc = Counter(u for u, _ in got)
    ic = Counter(i for _, i in got)
    assert min(uc.values()) >= 4 and min(ic.values()) >= 3
    # without an item interval, .item rows without interactions stay (RecBole keeps them too)
    raw = read_recbole(root, user_inter_num_interval="[4,inf)")
    assert raw.videos.num_rows == 75


def test_kcore_codes_direct():
    users = np.array([0, 0, 1, 1, 2])
    items = np.array([0, 1, 0, 1, 2])
    keep, rounds = kcore(users, items, parse_intervals("[2,inf)", "u"), parse_intervals("[2,inf)", "i"), 3, 3)
    assert keep.tolist() == [True, True, True, True, False] and rounds == 1


def _ml_like(root: Path, users: int = 40, items: int = 150, per_user: int = 14, seed: int = 0) -> Path:
    """A small MovieLens-shaped dataset: users follow a topic (items k, k+1, ... mod items)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        start, t = int(rng.integers(items)), 1000 * u
        for k in range(per_user):
            t += int(rng.integers(0, 3))  # many equal timestamps, as in MovieLens
            rows.append(f"u{u}\ti{(start + k) % items}\t{int(rng.integers(1, 6))}\t{t}")
    return write(root, root.name, rows, items_file(items))


@pytest.mark.slow
def test_stages_on_a_dataset_without_comments(tmp_path):
    root = _ml_like(tmp_path / "mini")
    data = ["data=recbole", f"data.root={root}", "data.title_fields=[movie_title,genre]",
            'data.val_interval={rating:"[2,inf)"}', "data.user_inter_num_interval='[5,inf)'"]
    p = run_cli(["stage=prepare", *data], tmp_path / "out")
    assert p.returncode == 0, p.stderr[-3000:]
    manifest = json.loads(next((tmp_path / "out" / "data").glob("recbole-*/manifest.json")).read_text())
    assert manifest["counts"]["comments"] == 0 and manifest["counts"]["comment_interactions"] == 0
    assert manifest["source"]["filters"]["val_interval.rating.inter"] > 0
    assert manifest["history_ties"] == "sorted_order"
    p = run_cli(["stage=finetune", "task=comm_rank", "model/sr=lsvcr", *data], tmp_path / "out")
    assert p.returncode != 0 and "task=comm_rank ranks comments, but data=recbole has no comment interactions" in p.stderr
    assert "Traceback" not in p.stderr
    p = run_cli(["stage=evaluate", "task=comm_rank", "model/sr=most_liked", *data], tmp_path / "out")
    assert p.returncode != 0 and "has no comment interactions" in p.stderr
    p = run_cli(["stage=finetune", "task=rec", "model/sr=lsvcr", "model.sr.use_comment_history=true", *data],
                tmp_path / "out")
    assert p.returncode != 0 and "model.sr.use_comment_history=true reads the comment history" in p.stderr
    p = run_cli(["stage=align", "task=joint", *data], tmp_path / "out")
    assert p.returncode != 0 and "task=joint ranks comments" in p.stderr
    # LSVCR trains on its video stream alone (the default follows data.comments=false)
    p = run_cli(["stage=finetune", "task=rec", "model/sr=lsvcr", "finetune.epochs=1", "finetune.batch_size=64",
                 "embed.out_dim=32", "eval.protocols=[full]", *data], tmp_path / "out", timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    run = max((tmp_path / "out" / "runs").rglob("metrics.json"), key=lambda f: f.stat().st_mtime)
    metrics = json.loads(run.read_text())
    assert metrics["model"] == "lsvcr" and metrics["results"]["test"]["full"]["count"] == 40


def test_history_ties(tmp_path):
    """Equal timestamps: `exclude` leaves same-time rows out of each other's history, `sorted_order`
    keeps the sorted (file) order, as RecBole's sequences do."""
    from lsvcr.data.builder import write_dataset
    from lsvcr.data.samples import SplitConfig
    from lsvcr.data.store import PreparedDataset

    root = write(tmp_path / "t", "t", ["u\ti0\t5\t1", "u\ti1\t5\t2", "u\ti2\t5\t2", "u\ti0\t5\t2", "u\ti1\t5\t3"],
                 items_file(3))
    raw = read_recbole(root)
    ends = {}
    for ties in ("exclude", "sorted_order"):
        ds = PreparedDataset(write_dataset(raw, tmp_path / ties, SplitConfig("loo"), history_ties=ties))
        s = [ds.samples("rec", p) for p in ("train", "val", "test")]
        ends[ties] = sorted(int(e - ds.vi_ptr[u]) for part in s for u, e in zip(part.user, part.vi_end))
    assert ends["exclude"] == [1, 1, 1, 4]        # the three rows at t=2 each see only t=1
    assert ends["sorted_order"] == [1, 2, 3, 4]   # each sees every row before it
    with pytest.raises(ConfigError, match="data.history_ties='x'"):
        write_dataset(raw, tmp_path / "x", SplitConfig("loo"), history_ties="x")


def test_presets_compose():
    from hydra import compose, initialize_config_module

    with initialize_config_module("lsvcr.conf", version_base="1.3"):
        for name, stem, fields in (("ml1m", "ml-1m", ["movie_title", "genre"]), ("ml100k", "ml-100k", ["movie_title", "class"])):
            cfg = compose("config", overrides=[f"data={name}", "model/sr=lsvcr"])
            assert cfg.data.reader.name == stem and list(cfg.data.reader.title_fields) == fields
            assert cfg.data.reader.val_interval == {"rating": "[3,inf)"}
            assert cfg.data.reader.user_inter_num_interval == "[10,inf)" == cfg.data.reader.item_inter_num_interval
            assert cfg.data.max_phis_len == 50 and cfg.data.split.method == "loo"
            assert cfg.model.sr.use_comment_history is False
            assert str(cfg.data.root).endswith(f"assets/{stem}")


def test_pipeline_runs_the_video_side_without_comments():
    from lsvcr.pipelines.pipeline import STEPS, plan_steps

    full, video = plan_steps(True), plan_steps(False)
    assert len(full) == len(STEPS)
    assert {STEPS[i].name for i in video} == {s.name for s in STEPS if s.task != "comm_rank"}
    align = next(i for i, s in enumerate(STEPS) if s.stage == "align")
    assert full[align] == "joint" and video[align] == "rec"
    assert all(t == "rec" for t in video.values())
