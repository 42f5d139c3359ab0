"""Fixed evaluation candidates: sampled negative videos and per-video comment candidates.

Every random choice is a hash of ``(seed, row id, ...)`` rather than a draw from a stream, so a
sample's candidates depend only on the seed and the sample's own row id. Evaluating a split in
chunks, shards or worker orders (pass the global ``rows``) gives the same candidates as one call
over the whole split, and every evaluation of every run with the same seed sees the same ones.

Both samplers reduce to one primitive, :func:`_distinct_indices`: ``q`` distinct uniform indices in
``[0, a)`` per row, which are then mapped onto ids that skip the excluded ones (the target video,
or the positive comments). Work is proportional to the number of candidates, not to the catalogue.
"""

from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1
_U64_MAX = np.iinfo(np.uint64).max
# Below this ratio of available to wanted indices, rejection needs many rounds, so rows take the
# wanted number of smallest random keys over all available indices instead.
_DENSE_FACTOR = 4
# Bound on the elements of any [rows, columns] work array, to cap memory.
_CHUNK = 1 << 22


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash(seed: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A uint64 pseudo-random value per broadcast element of (rows, cols)."""
    with np.errstate(over="ignore"):
        h = _mix(np.asarray([seed & _MASK64], dtype=np.uint64))
        h = _mix(h ^ np.asarray(rows).astype(np.uint64))
        return _mix(h ^ np.asarray(cols).astype(np.uint64))


def _uniform(h: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Integers in ``[0, m)`` from hashes (multiply-shift on the top 32 bits; m < 2**32)."""
    return (((h >> np.uint64(32)) * np.asarray(m).astype(np.uint64)) >> np.uint64(32)).astype(np.int64)


def _rows(rows: np.ndarray | None, n: int) -> np.ndarray:
    if rows is None:
        return np.arange(n, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    if rows.shape != (n,):
        raise ValueError(f"rows must have one id per sample, shape ({n},); got {rows.shape}")
    return rows


def _distinct_indices(seed: int, rows: np.ndarray, a: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``q[r]`` distinct uniform indices in ``[0, a[r])`` for each row (requires ``q <= a < 2**32``).

    Returns ``[R, max q]`` int64, padded with -1 beyond ``q[r]``. Row r depends only on
    ``(seed, rows[r], a[r], q[r])``.
    """
    out = np.full((len(rows), int(q.max(initial=0))), -1, np.int64)
    dense = a <= _DENSE_FACTOR * q
    for mask, fill in ((dense & (q > 0), _smallest_keys), (~dense & (q > 0), _rejection)):
        idx = np.flatnonzero(mask)
        if len(idx):
            got = fill(seed, rows[idx], a[idx], q[idx])
            out[idx, : got.shape[1]] = got
    return out


def _smallest_keys(seed: int, rows: np.ndarray, a: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Dense case: the indices with the ``q`` smallest random keys, in key order."""
    width, k = int(a.max()), int(q.max())
    out = np.empty((len(rows), k), np.int64)
    step = max(1, _CHUNK // width)
    cols = np.arange(width)
    for s in range(0, len(rows), step):
        keys = _hash(seed, rows[s : s + step, None], cols[None, :])
        keys[cols[None, :] >= a[s : s + step, None]] = _U64_MAX
        first = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < width else np.tile(cols, (len(keys), 1))
        out[s : s + step] = np.take_along_axis(first, np.argsort(np.take_along_axis(keys, first, 1), 1), 1)
    out[np.arange(k)[None, :] >= q[:, None]] = -1
    return out


def _rejection(seed: int, rows: np.ndarray, a: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Sparse case: draw with replacement, then redraw only repeated positions until none remain.

    The hash of a redraw includes the attempt number (above bit 32 of the column key), so rows
    converge independently. Columns beyond ``q[r]`` hold distinct negative fillers until the end.
    """
    k = int(q.max())
    cols = np.arange(k)
    unused = cols[None, :] >= q[:, None]
    out = np.where(unused, -1 - cols[None, :], _uniform(_hash(seed, rows[:, None], cols[None, :]), a[:, None]))
    active, attempt = np.arange(len(rows)), 0
    while len(active):
        block = out[active]
        # Sorting value * k + column puts equal values next to each other, earliest column first,
        # so only later repeats are redrawn; the encoded keys are unique, so any sort agrees.
        enc = np.sort((block + k + 1) * k + cols[None, :], axis=1)
        r, c = np.nonzero(enc[:, 1:] // k == enc[:, :-1] // k)
        if not len(r):
            break
        hit, col = active[r], enc[r, c + 1] % k
        attempt += 1
        out[hit, col] = _uniform(_hash(seed, rows[hit], col + (attempt << 32)), a[hit])
        active = np.unique(hit)
    out[unused] = -1
    return out


def sample_video_candidates(
    targets: np.ndarray, num_videos: int, num_negatives: int, seed: int, rows: np.ndarray | None = None
) -> np.ndarray:
    """Target plus ``num_negatives`` distinct random other videos per sample.

    Args:
        targets: ``[N]`` target video indices in ``1..num_videos``.
        num_videos: number of videos (indices ``1..num_videos``; 0 is padding).
        num_negatives: negatives per sample (99 in the paper's protocol).
        seed: fixes the negatives.
        rows: ``[N]`` global row ids of these samples (default ``0..N-1``); a row's candidates
            depend only on ``seed``, its row id and its target.

    Returns:
        ``[N, 1 + num_negatives]`` int64; column 0 is the target, the rest are distinct videos drawn
        uniformly from the other ``num_videos - 1``.
    """
    targets = np.asarray(targets, dtype=np.int64)
    if targets.ndim != 1:
        raise ValueError(f"targets must be 1-D; got shape {targets.shape}")
    if num_negatives < 0:
        raise ValueError(f"num_negatives must be >= 0; got {num_negatives}")
    if num_videos - 1 < num_negatives:
        raise ValueError(
            f"cannot sample {num_negatives} distinct negative videos per sample: "
            f"there are only {num_videos - 1} videos besides the target (num_videos={num_videos})"
        )
    if num_videos >= 1 << 32:
        raise ValueError(f"num_videos must be < 2**32; got {num_videos}")
    if len(targets) and (targets.min() < 1 or targets.max() > num_videos):
        bad = int(np.flatnonzero((targets < 1) | (targets > num_videos))[0])
        raise ValueError(f"target video {targets[bad]} of sample {bad} is outside 1..{num_videos}")
    n = len(targets)
    rows = _rows(rows, n)
    negatives = np.zeros((n, num_negatives), np.int64)
    if num_negatives and n:
        u = _distinct_indices(seed, rows, np.full(n, num_videos - 1), np.full(n, num_negatives)) + 1
        # u is uniform over 1..num_videos-1; shifting values at or above the target skips it.
        negatives = u + (u >= targets[:, None])
    return np.concatenate([targets[:, None], negatives], axis=1)


def sample_comment_candidates(
    videos: np.ndarray,
    positives_ptr: np.ndarray,
    positives: np.ndarray,
    video_comment_ptr: np.ndarray,
    video_comments: np.ndarray,
    max_candidates: int | None,
    seed: int,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate comments of each sample's video: all its positives plus random other comments.

    Args:
        videos: ``[N]`` the video each sample watches.
        positives_ptr: ``[N+1]`` CSR offsets; sample i's positives are ``positives[ptr[i]:ptr[i+1]]``.
        positives: ``[P]`` positive comment indices; each must be a distinct comment of the video.
        video_comment_ptr: ``[V+2]`` CSR offsets of ``video_comments`` (see ``lsvcr.data.store``).
        video_comments: ``[C]`` comments grouped by video, most liked first.
        max_candidates: candidates per sample (100 in the paper's protocol); positives are always
            all included, even beyond it. None = every comment of the video (full ranking).
        seed: fixes the sampled negatives.
        rows: ``[N]`` global row ids (default ``0..N-1``); a row's candidates depend only on ``seed``,
            its row id, its video and its positives.

    Returns:
        ``(candidates, is_positive)``, both ``[N, K]`` with K the widest row. Candidates are int64
        comment indices: the positives in the given order, then the negatives (in the video's
        popularity order when all are taken, else in random order), then 0 padding.
    """
    videos = np.asarray(videos, dtype=np.int64)
    positives_ptr = np.asarray(positives_ptr, dtype=np.int64)
    positives = np.asarray(positives, dtype=np.int64)
    video_comment_ptr = np.asarray(video_comment_ptr, dtype=np.int64)
    _check_comment_inputs(videos, positives_ptr, positives, video_comment_ptr, max_candidates)
    n = len(videos)
    rows = _rows(rows, n)
    start = video_comment_ptr[videos]
    count = video_comment_ptr[videos + 1] - start
    num_pos = np.diff(positives_ptr)
    width = count if max_candidates is None else np.minimum(count, np.maximum(max_candidates, num_pos))
    candidates = np.zeros((n, int(width.max(initial=0))), np.int64)
    is_positive = np.zeros(candidates.shape, bool)
    pos_row = np.repeat(np.arange(n), num_pos)
    pos_col = np.arange(len(positives)) - positives_ptr[pos_row]
    candidates[pos_row, pos_col] = positives
    is_positive[pos_row, pos_col] = True
    skip = _positive_offsets(videos, positives_ptr, positives, start, count, video_comments)
    want, avail = width - num_pos, count - num_pos
    take_all = np.flatnonzero((want == avail) & (want > 0))
    _fill_all_negatives(take_all, num_pos, start, count, skip, video_comments, candidates)
    sampled = np.flatnonzero(want < avail)
    if len(sampled):
        u = _distinct_indices(seed, rows[sampled], avail[sampled], want[sampled])
        offset = _skip_positives(sampled[:, None], u, skip)
        r, c = np.nonzero(u >= 0)
        candidates[sampled[r], num_pos[sampled[r]] + c] = video_comments[start[sampled[r]] + offset[r, c]]
    return candidates, is_positive


def _check_comment_inputs(videos, positives_ptr, positives, video_comment_ptr, max_candidates) -> None:
    num_videos = len(video_comment_ptr) - 2
    if videos.ndim != 1:
        raise ValueError(f"videos must be 1-D; got shape {videos.shape}")
    if len(videos) and (videos.min() < 1 or videos.max() > num_videos):
        bad = int(np.flatnonzero((videos < 1) | (videos > num_videos))[0])
        raise ValueError(f"video {videos[bad]} of sample {bad} is outside 1..{num_videos}")
    if positives_ptr.shape != (len(videos) + 1,) or positives_ptr[0] != 0 or positives_ptr[-1] != len(positives):
        raise ValueError(
            f"positives_ptr must be [N+1] = [{len(videos) + 1}] offsets from 0 to len(positives)={len(positives)}"
        )
    if np.any(np.diff(positives_ptr) < 0):
        raise ValueError("positives_ptr must be non-decreasing")
    if max_candidates is not None and max_candidates < 1:
        raise ValueError(f"max_candidates must be >= 1 or None (all comments); got {max_candidates}")


def _positive_offsets(videos, positives_ptr, positives, start, count, video_comments) -> dict:
    """Where the positives sit in their video's comment list, sorted per row, for skipping.

    Returns ``{"key": [P] row * base + (offset - j), "ptr": positives_ptr, "base": base}`` where j is
    the positive's position among its row's sorted offsets: the u-th non-positive of a row is at
    offset ``u + #{key <= row * base + u}`` (each positive at or before it shifts it by one).
    """
    row = np.repeat(np.arange(len(videos)), np.diff(positives_ptr))
    # Global position of every comment in video_comments; positives not found map to -1.
    where = np.full(int(max(video_comments.max(initial=0), positives.max(initial=0))) + 1, -1, np.int64)
    where[np.asarray(video_comments, dtype=np.int64)] = np.arange(len(video_comments))
    offset = where[np.maximum(positives, 0)] - start[row]
    base = int(count.max(initial=0)) + 1
    sort = np.argsort(row * base + offset, kind="stable")
    srow, soff = row[sort], offset[sort]
    bad = (positives < 1) | (offset < 0) | (offset >= count[row])
    dup = np.zeros(len(positives), bool)
    dup[sort[1:]] = (srow[1:] == srow[:-1]) & (soff[1:] == soff[:-1])
    if np.any(bad | dup):
        i = int(row[np.flatnonzero(bad | dup)[0]])
        raise ValueError(
            f"sample {i}: positives {positives[positives_ptr[i]:positives_ptr[i + 1]].tolist()} "
            f"are not distinct comments of its video {videos[i]}"
        )
    rank = np.arange(len(positives)) - positives_ptr[srow]
    return {"key": srow * base + soff - rank, "ptr": positives_ptr, "base": base}


def _skip_positives(row: np.ndarray, u: np.ndarray, skip: dict) -> np.ndarray:
    """Offsets in the video's comment list of the ``u``-th non-positive comment of each row."""
    before = np.searchsorted(skip["key"], row * skip["base"] + u, side="right") - skip["ptr"][row]
    return u + before


def _fill_all_negatives(idx, num_pos, start, count, skip, video_comments, candidates) -> None:
    """Rows ``idx`` take every non-positive comment of their video, in the video's order."""
    want = count[idx] - num_pos[idx]
    for s, e in _chunks(want):
        part, w = idx[s:e], want[s:e]
        row = np.repeat(part, w)
        u = np.arange(len(row)) - np.repeat(np.cumsum(w) - w, w)
        offset = _skip_positives(row, u, skip)
        candidates[row, num_pos[row] + u] = video_comments[start[row] + offset]


def _chunks(sizes: np.ndarray):
    """``(start, end)`` row ranges whose sizes sum to about ``_CHUNK`` (at least one row each)."""
    cum = np.cumsum(sizes)
    s = 0
    while s < len(sizes):
        done = cum[s - 1] if s else 0
        e = max(s + 1, int(np.searchsorted(cum, done + _CHUNK, side="right")))
        yield s, e
        s = e
