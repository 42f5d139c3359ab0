"""Interactions of the synthetic world (:mod:`lsvcr.data.synthetic`): who watches what when, and
which comments they engage with. Everything is vectorised over all users at once.

Two view generators:

- :func:`sticky_views`, the world without mechanisms: a topic chain per user (keep the previous
  view's topic with ``topic_stickiness``, else draw from the user's preferences), the video within
  the topic by popularity, every video available from the start;
- :func:`fresh_views`, with the mechanisms: a share ``view_noise`` of views is feed exploration
  (any available video, by popularity and freshness); the topic chain runs over the *genuine* views
  only, each genuine view also draws one of the user's sub-interests of the topic; a video can be
  watched only after its upload, and its appeal decays with age (``freshness_days``).
"""

from __future__ import annotations

import numpy as np


def segment_cdf(weights: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Stacked per-segment CDFs: segment ``s`` (rows grouped, ids 0..S-1, none empty) spans
    ``(s, s + 1]``, so one ``searchsorted`` samples every segment at once. [n] -> [n]."""
    cs = np.cumsum(weights)
    starts = np.flatnonzero(np.r_[True, segment[1:] != segment[:-1]])
    ends = np.r_[starts[1:], len(weights)] - 1
    base = np.r_[0.0, cs][starts]
    total = cs[ends] - base
    cdf = segment + (cs - base[segment]) / total[segment]
    cdf[ends] = segment[ends] + 1.0
    return cdf


def sample_segments(rng, cdf: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """One draw from each requested segment: ``segments`` [N] -> positions into the cdf [N]."""
    return np.searchsorted(cdf, segments + rng.random(len(segments)), side="right")


def later_repeats(a: np.ndarray, b: np.ndarray, nb: int) -> np.ndarray:
    """bool [N]: True where the pair (a, b) already occurred at an earlier row."""
    key = a.astype(np.int64) * nb + b
    order = np.argsort(key, kind="stable")
    rep = np.zeros(len(key), bool)
    rep[order[1:]] = key[order[1:]] == key[order[:-1]]
    return rep


def _lengths_and_firsts(cfg, rng):
    extra = cfg.mean_video_interactions - cfg.min_video_interactions
    lengths = cfg.min_video_interactions + rng.geometric(1 / (extra + 1), cfg.num_users) - 1
    n = int(lengths.sum())
    user = np.repeat(np.arange(cfg.num_users), lengths)
    first = np.zeros(n, bool)
    first[np.r_[0, np.cumsum(lengths)[:-1]]] = True
    return user, first


def _times(cfg, rng, user: np.ndarray, first: np.ndarray) -> np.ndarray:
    n = len(user)
    gaps = cfg.min_gap_seconds + rng.exponential(cfg.mean_gap_seconds - cfg.min_gap_seconds, n).astype(np.int64)
    gaps[first] = 0
    since_start = np.cumsum(gaps)
    since_start -= since_start[first][user]
    start = cfg.start_time + rng.integers(0, cfg.start_spread_seconds, cfg.num_users)
    return start[user] + since_start


def _topic_chain(cfg, rng, user: np.ndarray, first: np.ndarray, pref: np.ndarray) -> np.ndarray:
    """Per row, a topic that sticks to the row before with ``topic_stickiness`` (a user's first row
    always draws from the user's preferences)."""
    n = len(user)
    switch = first | (rng.random(n) >= cfg.topic_stickiness)
    topic = np.zeros(n, np.int64)
    pref_cdf = segment_cdf(pref.ravel(), np.repeat(np.arange(cfg.num_users), cfg.num_topics))
    topic[switch] = sample_segments(rng, pref_cdf, user[switch]) % cfg.num_topics
    # A kept topic copies the topic of the latest switch of the same user (every user starts with one).
    last_switch = np.maximum.accumulate(np.where(switch, np.arange(n), 0))
    return topic[last_switch]


def sticky_views(cfg, rng, pref, video_topic, in_topic_weight):
    """The world without mechanisms -> (user, video, time) rows sorted by user then time."""
    user, first = _lengths_and_firsts(cfg, rng)
    topic = _topic_chain(cfg, rng, user, first, pref)
    by_topic = np.argsort(video_topic, kind="stable")
    video_cdf = segment_cdf(in_topic_weight[by_topic], video_topic[by_topic])
    video = by_topic[sample_segments(rng, video_cdf, topic)]
    for _ in range(cfg.repeat_resample_rounds):
        rep = later_repeats(user, video, cfg.num_videos)
        video[rep] = by_topic[sample_segments(rng, video_cdf, topic[rep])]
    for attempt in range(64):
        bad = _consecutive(first, video)
        if len(bad) == 0:
            return user, video, _times(cfg, rng, user, first)
        if attempt < 5:
            video[bad] = by_topic[sample_segments(rng, video_cdf, topic[bad])]
        else:
            video[bad] = (video[bad] + rng.integers(1, cfg.num_videos, len(bad))) % cfg.num_videos
    raise RuntimeError("could not remove consecutive repeated videos after 64 redraws")


def _consecutive(first: np.ndarray, video: np.ndarray) -> np.ndarray:
    """Rows whose video equals the same user's previous one."""
    return np.flatnonzero(~first[1:] & (video[1:] == video[:-1])) + 1


class FreshSampler:
    """Draws videos of a segment available at a time, with probability proportional to
    ``weight * exp(-(t - upload) / tau)`` over the segment's videos uploaded at or before ``t``.

    The age factor splits into ``exp(upload / tau) * exp(-t / tau)``, and the second factor is the
    same for every candidate of one draw, so per segment one cumulative sum over videos sorted by
    upload time serves every draw time: the videos available at ``t`` are a prefix. Segment
    ``num_segments`` holds every video (the feed's exploration draws).

    Args:
        segment: ``[V]`` segment of each video (topic, or topic x sub-interest), every one non-empty
            and holding a video uploaded before any draw time.
        upload: ``[V]`` upload times (seconds).
        weight: ``[V]`` popularity weights.
        tau: seconds of the exponential decay; 0 = no decay.
    """

    def __init__(self, segment: np.ndarray, upload: np.ndarray, weight: np.ndarray, tau: float, num_segments: int):
        v = len(segment)
        seg = np.r_[segment, np.full(v, num_segments)]
        vid = np.r_[np.arange(v), np.arange(v)]
        order = np.lexsort((upload[vid], seg))
        self.seg, self.video, self.upload = seg[order], vid[order], upload[vid][order]
        self.num_segments = num_segments + 1
        self.ptr = np.searchsorted(self.seg, np.arange(self.num_segments + 1))
        self.t0 = int(upload.min())
        self.stride = int(upload.max()) - self.t0 + 2
        self.key = self.seg * self.stride + (self.upload - self.t0)
        w = weight[self.video].astype(np.float64)
        if tau > 0:  # relative to each segment's latest upload: no overflow
            latest = self.upload[self.ptr[1:] - 1][self.seg]
            w = w * np.exp((self.upload - latest) / tau)
        self.cum = np.cumsum(w)  # inclusive, global; segments are contiguous
        self.base = np.r_[0.0, self.cum][self.ptr[:-1]]  # [segments] cumulative weight before each
        # per video, its position in each of its two segments (own, then "every video")
        self.position = np.empty((2, v), np.int64)
        own = self.seg < num_segments
        self.position[0, self.video[own]] = np.flatnonzero(own)
        self.position[1, self.video[~own]] = np.flatnonzero(~own)

    def _available_end(self, segments: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Exclusive end of the available prefix of each segment at each time (clipped to the
        segment's first video, which the world uploads before every draw time)."""
        q = segments * self.stride + np.clip(times - self.t0, -1, self.stride - 1)
        end = np.searchsorted(self.key, q, side="right")
        return np.maximum(end, self.ptr[segments] + 1)

    def sample(self, rng, segments: np.ndarray, times: np.ndarray) -> np.ndarray:
        """One video per (segment, time): [N], [N] -> [N] video rows."""
        start, end = self.ptr[segments], self._available_end(segments, times)
        lo, hi = self.base[segments], self.cum[end - 1]
        pos = np.searchsorted(self.cum, lo + rng.random(len(segments)) * (hi - lo), side="right")
        return self.video[np.clip(pos, start, end - 1)]

    def prob(self, segments: np.ndarray, videos: np.ndarray, times: np.ndarray, everyone: bool) -> np.ndarray:
        """P(draw = video | segment, time) for ``videos [N, M]`` in ``segments [N, M]`` (their own
        segment, or with ``everyone`` the all-videos one) at ``times [N]``; 0 where not yet uploaded."""
        t = np.broadcast_to(times[:, None], videos.shape)
        pos = self.position[int(everyone), videos]
        end = self._available_end(segments, t)
        total = self.cum[end - 1] - self.base[segments]
        mass = self.cum[pos] - np.r_[0.0, self.cum][pos]
        return np.where(pos < end, mass / total, 0.0)


def fresh_views(cfg, rng, pref, sub_pref, sampler: FreshSampler):
    """Views with the mechanisms -> (user, video, time, genuine) rows sorted by user then time."""
    user, first = _lengths_and_firsts(cfg, rng)
    time = _times(cfg, rng, user, first)
    genuine = rng.random(len(user)) >= cfg.view_noise
    g = np.flatnonzero(genuine)
    g_first = np.r_[True, user[g][1:] != user[g][:-1]]
    topic = _topic_chain(cfg, rng, user[g], g_first, pref)
    s = sub_pref.shape[2]
    sub = np.zeros(len(g), np.int64)
    if s > 1:
        sub_cdf = segment_cdf(sub_pref.reshape(-1), np.repeat(np.arange(cfg.num_users * cfg.num_topics), s))
        sub = sample_segments(rng, sub_cdf, user[g] * cfg.num_topics + topic) % s
    seg = np.full(len(user), sampler.num_segments - 1)  # noise views: the all-videos segment
    seg[g] = topic * s + sub
    video = sampler.sample(rng, seg, time)
    for _ in range(cfg.repeat_resample_rounds):
        rep = np.flatnonzero(later_repeats(user, video, cfg.num_videos))
        video[rep] = sampler.sample(rng, seg[rep], time[rep])
    for attempt in range(64):
        bad = _consecutive(first, video)
        if len(bad) == 0:
            return user, video, time, genuine
        # a few redraws in the segment, then from every available video (small segments)
        seg_bad = seg[bad] if attempt < 5 else np.full(len(bad), sampler.num_segments - 1)
        video[bad] = sampler.sample(rng, seg_bad, time[bad])
    raise RuntimeError("could not remove consecutive repeated videos after 64 redraws")


def comment_interactions(cfg, rng, vi, genuine, opens, style_pref, c_ptr, c_style, c_likes):
    """Users who open comment sections engage with 1..max comments under some of their *genuine*
    views (every view, without view noise), chosen by Gumbel-top-k on the true logits. Returns
    (user, comment, time) rows, earliest per pair only."""
    vi_user, vi_video, vi_time = vi
    n_comments = c_ptr[vi_video + 1] - c_ptr[vi_video]
    opened = rng.random(len(vi_user)) < cfg.comment_open_prob
    ev = np.flatnonzero(opens[vi_user] & genuine & (n_comments > 0) & opened)
    ev_user, ev_video, ev_n = vi_user[ev], vi_video[ev], n_comments[ev]
    k = np.minimum(rng.integers(1, cfg.max_comments_liked + 1, len(ev)), ev_n)

    pair_ev = np.repeat(np.arange(len(ev)), ev_n)
    seg_start = np.zeros(len(ev), np.int64)
    np.cumsum(ev_n[:-1], out=seg_start[1:])
    within = np.arange(len(pair_ev)) - seg_start[pair_ev]
    pair_c = c_ptr[ev_video][pair_ev] + within
    logit = cfg.style_strength * style_pref[ev_user[pair_ev], c_style[pair_c]] + cfg.like_beta * np.log1p(
        c_likes[pair_c]
    )
    order = np.lexsort((-(logit + rng.gumbel(size=len(logit))), pair_ev))
    # Sorting by event first keeps every event's segment in place, so `within` is the rank.
    chosen = within < k[pair_ev]
    keep, rank = order[chosen], within[chosen]
    delay = rng.integers(1, cfg.max_comment_delay_seconds - cfg.max_comments_liked + 2, len(ev))
    user, comment = ev_user[pair_ev[keep]], pair_c[keep]
    time = vi_time[ev][pair_ev[keep]] + delay[pair_ev[keep]] + rank
    fresh = ~later_repeats(user, comment, len(c_style))
    return user[fresh], comment[fresh], time[fresh]
