import numpy as np
import pytest

from lsvcr.data.candidates import sample_comment_candidates, sample_video_candidates


def _no_row_duplicates(a: np.ndarray, ignore: int | None = None) -> bool:
    s = np.sort(a, axis=1)
    same = s[:, 1:] == s[:, :-1]
    if ignore is not None:
        same &= s[:, 1:] != ignore
    return not same.any()


# --- videos -------------------------------------------------------------------------------------

# (num_videos, num_negatives): 49 <= 4 * 20 takes the dense path, 999 > 4 * 20 the rejection path.
REGIMES = [(50, 20), (1000, 20)]


@pytest.mark.parametrize("num_videos,k", REGIMES)
def test_video_candidates_are_target_then_distinct_other_videos(num_videos, k):
    targets = np.random.default_rng(0).integers(1, num_videos + 1, 3000)
    c = sample_video_candidates(targets, num_videos, k, seed=5)
    assert c.shape == (3000, 1 + k) and c.dtype == np.int64
    assert (c[:, 0] == targets).all()
    assert (c[:, 1:] != targets[:, None]).all()
    assert c.min() >= 1 and c.max() <= num_videos
    assert _no_row_duplicates(c)


@pytest.mark.parametrize("num_videos,k", [(21, 5), (101, 5)])
def test_video_negatives_are_uniform_over_the_other_videos(num_videos, k):
    n = 20000
    targets = np.random.default_rng(1).integers(1, num_videos + 1, n)
    c = sample_video_candidates(targets, num_videos, k, seed=3)
    # Each sample's negatives are uniform over its num_videos - 1 other videos; planted counts.
    hits = np.bincount(c[:, 1:].ravel(), minlength=num_videos + 1)[1:]
    expected = np.array([(k / (num_videos - 1)) * (targets != v).sum() for v in range(1, num_videos + 1)])
    np.testing.assert_allclose(hits, expected, rtol=0.12)


def test_video_candidates_deterministic_by_seed_and_chunking():
    targets = np.random.default_rng(2).integers(1, 5001, 1000)
    a = sample_video_candidates(targets, 5000, 99, seed=11)
    np.testing.assert_array_equal(a, sample_video_candidates(targets, 5000, 99, seed=11))
    assert (a[:, 1:] != sample_video_candidates(targets, 5000, 99, seed=12)[:, 1:]).mean() > 0.9
    parts = [
        sample_video_candidates(targets[s : s + 300], 5000, 99, 11, rows=np.arange(s, min(s + 300, 1000)))
        for s in range(0, 1000, 300)
    ]
    np.testing.assert_array_equal(a, np.concatenate(parts))
    perm = np.random.default_rng(0).permutation(1000)
    np.testing.assert_array_equal(a[perm], sample_video_candidates(targets[perm], 5000, 99, 11, rows=perm))


def test_video_candidates_take_every_other_video_when_asked_for_all():
    c = sample_video_candidates(np.array([1, 4, 7]), 7, 6, seed=0)
    for row in c:
        assert sorted(row[1:].tolist()) == sorted(set(range(1, 8)) - {row[0]})


def test_video_candidates_errors():
    with pytest.raises(ValueError, match="only 9 videos besides the target"):
        sample_video_candidates(np.array([1]), 10, 99, seed=0)
    with pytest.raises(ValueError, match="target video 11 of sample 1 is outside 1..10"):
        sample_video_candidates(np.array([3, 11]), 10, 5, seed=0)
    with pytest.raises(ValueError, match="rows must have one id per sample"):
        sample_video_candidates(np.array([3, 4]), 10, 5, seed=0, rows=np.array([0]))


# --- comments -----------------------------------------------------------------------------------

# video 1: comments 3, 1, 2 (most liked first); video 2: 4..9 with 7 first; video 3: none.
VC_PTR = np.array([0, 0, 3, 9, 9])
VC = np.array([3, 1, 2, 7, 4, 5, 6, 8, 9])


def _csr(lists):
    ptr = np.zeros(len(lists) + 1, np.int64)
    ptr[1:] = np.cumsum([len(x) for x in lists])
    return ptr, np.array([c for x in lists for c in x], np.int64)


def test_comment_full_ranking_returns_every_comment_of_the_video():
    videos = np.array([2, 1, 3])
    ptr, pos = _csr([[5], [2, 3], []])
    c, lab = sample_comment_candidates(videos, ptr, pos, VC_PTR, VC, None, seed=0)
    # positives first (given order), then the other comments in the video's popularity order
    np.testing.assert_array_equal(c, [[5, 7, 4, 6, 8, 9], [2, 3, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(lab, [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])


def test_comment_sampled_keeps_all_positives_and_only_that_videos_comments():
    videos = np.array([2, 2, 1, 2])
    ptr, pos = _csr([[8], [4, 5, 6, 8], [2], []])
    c, lab = sample_comment_candidates(videos, ptr, pos, VC_PTR, VC, 3, seed=0)
    assert c.shape == (4, 4)
    assert c[0, 0] == 8 and set(c[0, 1:3]) <= {7, 4, 5, 6, 9} and c[0, 1] != c[0, 2] and c[0, 3] == 0
    np.testing.assert_array_equal(c[1], [4, 5, 6, 8])  # more positives than max_candidates: all kept
    np.testing.assert_array_equal(c[2], [2, 3, 1, 0])  # video has only 3 comments
    assert set(c[3, :3]) <= set(range(4, 10)) and len(set(c[3, :3])) == 3 and c[3, 3] == 0
    np.testing.assert_array_equal(lab.sum(1), [1, 4, 1, 0])
    np.testing.assert_array_equal(lab[:, 0], [1, 1, 1, 0])


def _random_catalogue(rng, num_videos=60):
    counts = rng.integers(0, 400, num_videos + 1)
    counts[0] = 0
    ptr = np.zeros(num_videos + 2, np.int64)
    ptr[1:] = np.cumsum(counts)
    comments = rng.permutation(np.arange(1, ptr[-1] + 1))
    owner = np.zeros(ptr[-1] + 1, np.int64)
    owner[comments] = np.repeat(np.arange(num_videos + 1), counts)
    return counts, ptr, comments, owner


def _random_samples(rng, counts, ptr, comments, n):
    videos = rng.integers(1, len(counts), n)
    lists = [
        list(rng.choice(comments[ptr[v] : ptr[v + 1]], min(counts[v], rng.integers(0, 6)), replace=False))
        for v in videos
    ]
    return videos, *_csr(lists)


@pytest.mark.parametrize("max_candidates", [20, None])
def test_comment_candidates_properties_on_random_catalogue(max_candidates):
    rng = np.random.default_rng(4)
    counts, vptr, vcom, owner = _random_catalogue(rng)
    videos, pptr, pos = _random_samples(rng, counts, vptr, vcom, 500)
    c, lab = sample_comment_candidates(videos, pptr, pos, vptr, vcom, max_candidates, seed=9)
    real = c > 0
    n_pos = np.diff(pptr)
    width = counts[videos] if max_candidates is None else np.minimum(counts[videos], np.maximum(max_candidates, n_pos))
    np.testing.assert_array_equal(real.sum(1), width)
    assert (owner[c][real] == np.broadcast_to(videos[:, None], c.shape)[real]).all()
    assert _no_row_duplicates(c, ignore=0)
    np.testing.assert_array_equal(lab.sum(1), n_pos)
    for i in range(0, 500, 37):
        assert set(c[i][lab[i]]) == set(pos[pptr[i] : pptr[i + 1]])


def test_comment_negatives_are_uniform_over_the_videos_other_comments():
    # video 2 has 6 comments; with positive 7 and 3 candidates, 2 of the 5 others are drawn
    n = 10000
    ptr, pos = _csr([[7]] * n)
    c, _ = sample_comment_candidates(np.full(n, 2), ptr, pos, VC_PTR, VC, 3, seed=1)
    hits = np.bincount(c[:, 1:].ravel(), minlength=10)
    assert hits[7] == 0 and hits[:4].sum() == 0
    np.testing.assert_allclose(hits[[4, 5, 6, 8, 9]], n * 2 / 5, rtol=0.06)
    # a big video takes the rejection path; check its draws are spread too
    big_ptr = np.array([0, 0, 1000])
    big = np.arange(1, 1001)
    ptr, pos = _csr([[500]] * n)
    c, _ = sample_comment_candidates(np.full(n, 1), ptr, pos, big_ptr, big, 6, seed=1)
    assert _no_row_duplicates(c) and (c[:, 1:] != 500).all()
    hits = np.bincount(c[:, 1:].ravel(), minlength=1001)[1:]
    assert abs(hits[:500].sum() - hits[500:].sum()) < 0.03 * n * 5


def test_comment_candidates_deterministic_by_seed_and_chunking():
    rng = np.random.default_rng(6)
    counts, vptr, vcom, _ = _random_catalogue(rng)
    videos, pptr, pos = _random_samples(rng, counts, vptr, vcom, 300)
    a = sample_comment_candidates(videos, pptr, pos, vptr, vcom, 30, seed=2)
    b = sample_comment_candidates(videos, pptr, pos, vptr, vcom, 30, seed=2)
    np.testing.assert_array_equal(a[0], b[0])
    other = sample_comment_candidates(videos, pptr, pos, vptr, vcom, 30, seed=3)[0]
    assert not np.array_equal(a[0], other)
    lo, hi = slice(0, 120), slice(120, 300)
    part = sample_comment_candidates(videos[lo], pptr[:121], pos[: pptr[120]], vptr, vcom, 30, 2, rows=np.arange(120))
    rest_ptr = pptr[120:] - pptr[120]
    rest_pos = pos[pptr[120] :]
    rest = sample_comment_candidates(videos[hi], rest_ptr, rest_pos, vptr, vcom, 30, 2, rows=np.arange(120, 300))
    np.testing.assert_array_equal(a[0][lo, : part[0].shape[1]], part[0])
    np.testing.assert_array_equal(a[0][hi, : rest[0].shape[1]], rest[0])
    np.testing.assert_array_equal(a[1][hi, : rest[1].shape[1]], rest[1])


def test_comment_candidates_errors():
    with pytest.raises(ValueError, match=r"sample 1: positives \[4\] are not distinct comments of its video 1"):
        sample_comment_candidates(np.array([2, 1]), *_csr([[4], [4]]), VC_PTR, VC, 3, seed=0)
    with pytest.raises(ValueError, match=r"sample 0: positives \[5, 5\] are not distinct"):
        sample_comment_candidates(np.array([2]), *_csr([[5, 5]]), VC_PTR, VC, 3, seed=0)
    with pytest.raises(ValueError, match="video 4 of sample 0 is outside 1..3"):
        sample_comment_candidates(np.array([4]), *_csr([[]]), VC_PTR, VC, 3, seed=0)
    with pytest.raises(ValueError, match="max_candidates must be >= 1"):
        sample_comment_candidates(np.array([2]), *_csr([[]]), VC_PTR, VC, 0, seed=0)
