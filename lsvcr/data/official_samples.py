"""The sample files of the official LSVCR code (``rec.*.json``, ``comm_rank.*.json``: one JSON
sample per line), read into one video sequence and comment history per user, and the clock on
which :func:`lsvcr.data.official.read_official` stamps the rebuilt comment interactions.

Shared by the reader (which rebuilds the interactions) and :mod:`lsvcr.data.official_splits`
(which keeps the files' own samples as the splits).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from lsvcr.errors import DataError


def _check_sample(rec: object, where: str) -> dict:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object")
    for key in ("user_id", "target_photo", "photo_inter_his", "comment_inter_his"):
        if key not in rec:
            raise DataError(f"{where}: missing key '{key}'")
    chis = rec["comment_inter_his"]
    ok = isinstance(chis, list) and len(chis) == 2 and all(isinstance(p, list) for p in chis)
    if not ok or len(chis[0]) != len(chis[1]) or not all(isinstance(g, list) for g in chis[1]):
        raise DataError(f"{where}: 'comment_inter_his' must be [[video ids], [[comment ids], ...]] of equal lengths")
    if not isinstance(rec["photo_inter_his"], list):
        raise DataError(f"{where}: 'photo_inter_his' must be a list of video ids")
    return rec


def json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line number, sample)`` of a sample file, each checked for the keys every task has
    (``comm_rank.*`` files also for ``pos_comments``)."""
    comm_rank = path.name.startswith("comm_rank.")
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}: line {line_no}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON ({e.msg})") from None
            rec = _check_sample(rec, where)
            if comm_rank and not isinstance(rec.get("pos_comments"), list):
                raise DataError(f"{where}: 'pos_comments' must be a list of comment ids")
            yield line_no, rec


#: per user: (video sequence, comment_inter_his) from which the interactions are rebuilt
Sequences = dict[str, tuple[list[str], list]]


def latest_samples(paths: Sequence[Path]) -> Sequences:
    """Per user, the sample of the latest split with the longest video history (later lines
    win ties): its history plus target is the user's most complete sequence."""
    best: dict[str, tuple[tuple[int, int], dict]] = {}
    for rank, path in enumerate(paths):
        for _, rec in json_lines(path):
            user, key = str(rec["user_id"]), (rank, len(rec["photo_inter_his"]))
            if user not in best or key >= best[user][0]:
                best[user] = (key, rec)
    return {user: ([str(v) for v in rec["photo_inter_his"]] + [str(rec["target_photo"])], rec["comment_inter_his"])
            for user, (_, rec) in best.items()}


def longest_sequences(paths: Sequence[Path]) -> Sequences:
    """Per user, the longest video sequence (a rec sample's history plus target, a comm_rank
    sample's history) and the comment history with the most comments in any of ``paths``
    (later files and lines win ties): every consistent sample is then a prefix of them."""
    seqs: dict[str, tuple[int, list[str]]] = {}
    chis: dict[str, tuple[int, list]] = {}
    for path in paths:
        rec_file = path.name.startswith("rec.")
        for _, rec in json_lines(path):
            user = str(rec["user_id"])
            seq = [str(v) for v in rec["photo_inter_his"]] + ([str(rec["target_photo"])] if rec_file else [])
            if len(seq) >= seqs.get(user, (-1,))[0]:
                seqs[user] = (len(seq), seq)
            n = sum(map(len, rec["comment_inter_his"][1]))
            if n >= chis.get(user, (-1,))[0]:
                chis[user] = (n, rec["comment_inter_his"])
    return {user: (seq, chis[user][1]) for user, (_, seq) in seqs.items()}


def comment_rows(seq: list[str], chis: list) -> tuple[list[tuple[str, str]], list[int]]:
    """(group video, comment) of every comment interaction of ``chis`` in order, and its stamp
    on the clock of the video sequence ``seq`` (see :func:`lsvcr.data.official.read_official`)."""
    position = {v: i for i, v in enumerate(seq[:-1], start=1)}  # last occurrence wins
    pairs: list[tuple[str, str]] = []
    stamps: list[int] = []
    time = 1
    for video, group in zip(*chis):
        video = str(video)
        time = max(time, position.get(video, 0))
        for comment in group:
            pairs.append((video, str(comment)))
            stamps.append(time)
    return pairs, stamps


def first_rows(pairs: list[tuple[str, str]], stamps: list[int]) -> list[bool]:
    """Whether each comment row is the first with its (comment, stamp): a comment listed twice in
    one visit is one interaction (validation would drop the second as a duplicate row)."""
    seen: set[tuple[str, int]] = set()
    first = []
    for (_, comment), time in zip(pairs, stamps):
        first.append((comment, time) not in seen)
        seen.add((comment, time))
    return first
