"""An embedded short-video world with planted signal, deterministic by seed.

The world is generated, not downloaded, so every stage runs anywhere and models can be checked
against a known truth. Its base: every video has one of ``K`` topics; users prefer 1..``max_user_topics``
topics; a user's next (genuine) view keeps the previous one's topic with ``topic_stickiness``, else
draws a topic from the user's preferences; the video within the topic follows popularity; comments
have a style (humorous, question, ...) and a user engages with a comment by
``softmax(style_strength * style_pref[style] + like_beta * log1p(likes))``.

On top of it, the **mechanisms** the method is for (``mechanisms=false`` turns them all off and gives
the world of earlier versions bit for bit; each also has its own off value):

- *view noise* (``view_noise``, off 0): a share of views is feed exploration, drawn from every
  available video by popularity, not from the user's interests. Comment engagement happens only
  under genuine views, so the comment history is the cleaner record of interest.
- *interest revealed by comments* (``num_subtopics``, off 1): each topic has sub-interests, a user
  prefers some of them (Dirichlet ``subtopic_concentration``), and the topic chain runs over the
  genuine views only; what a user engages with in comments (topic, sub-interest, latest genuine
  topic) predicts the next videos beyond the noisy view history.
- *cold start* (``upload_frac``, off 0; ``freshness_days``, off 0): a share of videos is uploaded
  during the interaction window, the rest is an older catalog; a video can be watched only after
  its upload and its appeal decays as ``exp(-age / freshness_days)``, so many targets, most under
  the time split, have few or no training interactions and only their text describes them.
- *real-word titles* (``vocabulary``, off "synthetic"): topic and sub-interest concepts of real
  Chinese and English synonyms (:mod:`lsvcr.data.world_text`), so two titles of one topic may share
  no token while a pretrained text encoder still sees the topic; stickers and edge cases stay.
- *comment data* (``comment_open_prob``, ``never_comment_user_frac``; off 0.3 / 0.3): enough
  comment engagement that ``comm_rank`` has over 10k training samples at the default size.

Where the defaults come from. KuaiComt (Kuaishou's public dataset of this task, five weeks) has
34,701 users, 82,452 videos (2.4 per user), 119.7 M impressions, 16.0 M comment-section opens (13% of
impressions) and 1.0 M comment interactions (6% of opens). Our video interactions are the positives
a recommender trains on (likes, long views), not impressions, so rates per interaction are higher
than per impression; and a laptop-sized world needs far denser comment data than KuaiComt's one
comment interaction per 120 impressions to give ``comm_rank`` its 10k training samples, so comment
engagement is scaled up on purpose and says so: 85% of users open comments, and they engage (1..3
comments) under 80% of their genuine views that have comments, about 43% of all views (KuaiComt:
0.8% of impressions). ``start_spread_seconds`` (60 days) is of the order of KuaiComt's five weeks;
``num_videos`` is 1.5 per user (KuaiComt 2.4; fewer keeps the text tables small). The rest are
assumptions, stated as such: 30% of recorded views are exploration (``view_noise``); popularity is
lognormal with sigma 1.0; 80% of videos are uploaded during the window, the catalog over the 30
days before it, with a 7-day freshness decay (short-video feeds favour content days old). At the
default size this gives 34k rec and 10.5k comm_rank training samples under leave-one-out, with
11% of rec test targets cold (at most 5 training interactions); 74% under the time split.
These were fixed from such data counts before any model was compared on this world, and nothing
here looks at a model.

Raw ids are ``row + 1`` for users, videos and comments, so row ``i`` of a :class:`WorldTruth`
array describes the entity with raw id ``i + 1``. Interaction tables come sorted by user, then time.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lsvcr.data.raw import RawTables
from lsvcr.data.world_text import STYLES, Pools, build_pools, compose, compose_titles, topic_names
from lsvcr.data.world_views import FreshSampler, comment_interactions, fresh_views, sticky_views
from lsvcr.errors import ConfigError

log = logging.getLogger(__name__)

MAX_TOPICS = 100
DAY = 86400


@dataclass
class SyntheticConfig:
    """Every knob of the world; defaults give 2k users, 3k videos, ~40k video interactions."""

    num_users: int = 2000
    num_videos: int = 3000
    num_topics: int = 20
    num_styles: int = 5
    mean_video_interactions: float = 20.0  # per user; lengths are min + geometric
    min_video_interactions: int = 5
    topic_stickiness: float = 0.6  # P(next topic = previous topic)
    max_user_topics: int = 3  # dominant topics per user are 1..this
    user_topic_background: float = 0.05  # preference mass spread evenly over all topics
    popularity_sigma: float = 1.0  # lognormal sigma of the video popularity prior
    popularity_alpha: float = 1.0  # within-topic choice ~ popularity ** alpha
    repeat_resample_rounds: int = 3  # redraws that make non-consecutive repeats rare
    title_min_words: int = 4
    title_max_words: int = 8
    title_topic_word_prob: float = 0.8  # else a generic word
    category_noise: float = 0.1  # category names a wrong topic
    category_missing: float = 0.02
    mean_comments_per_video: float = 10.0
    no_comment_video_frac: float = 0.1
    comment_min_words: int = 3
    comment_max_words: int = 8
    comment_topic_word_prob: float = 0.3  # else a word of the comment's style
    comment_like_scale: float = 5.0  # like_count ~ Poisson(scale * lognormal(0, sigma))
    comment_like_sigma: float = 1.5
    user_style_concentration: float = 0.3  # Dirichlet concentration of style preferences
    never_comment_user_frac: float = 0.15
    comment_open_prob: float = 0.8  # per (genuine) watched video that has comments
    max_comments_liked: int = 3  # per opened comment section, 1..this
    style_strength: float = 6.0
    like_beta: float = 0.5
    start_time: int = 1_700_000_000
    start_spread_seconds: int = 60 * DAY  # users start uniformly within this window
    min_gap_seconds: int = 120
    mean_gap_seconds: float = 3600.0
    max_comment_delay_seconds: int = 60  # comment interactions follow their video by 1..this
    # --- the mechanisms (module docstring); mechanisms=false sets every one to its off value
    mechanisms: bool = True
    view_noise: float = 0.3  # share of views that are feed exploration
    num_subtopics: int = 4  # sub-interests per topic
    subtopic_concentration: float = 0.3  # Dirichlet concentration of a user's sub-interests
    upload_frac: float = 0.8  # share of videos uploaded during the window (the rest: the catalog)
    catalog_days: float = 30.0  # the catalog's uploads spread over this many days before the window
    freshness_days: float = 7.0  # e-folding age of a video's appeal; 0 = no decay
    vocabulary: str = "real"  # "real" words with synonyms, or "synthetic" tokens
    title_subtopic_word_prob: float = 0.5  # real words: share of a title's topic words from its sub-interest
    title_sticker_prob: float = 0.15  # real words: a title ends with a sticker
    seed: int = 2024

    #: the value of every mechanism knob in the world without mechanisms
    OFF = dict(view_noise=0.0, num_subtopics=1, upload_frac=0.0, freshness_days=0.0, vocabulary="synthetic",
               comment_open_prob=0.3, never_comment_user_frac=0.3)

    def resolved(self) -> "SyntheticConfig":
        """This config with the mechanism knobs at their off values when ``mechanisms`` is false
        (sizes and every other knob stay as given)."""
        return self if self.mechanisms else replace(self, **self.OFF)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first key whose value cannot work."""
        c = self
        checks = [
            ("num_users", c.num_users >= 1, ">= 1"),
            ("num_topics", 2 <= c.num_topics <= MAX_TOPICS, f"in [2, {MAX_TOPICS}]"),
            ("num_videos", c.num_videos >= c.num_topics * c.num_subtopics,
             "at least num_topics x num_subtopics (every sub-interest has a video)"),
            ("num_styles", 1 <= c.num_styles <= len(STYLES), f"in [1, {len(STYLES)}]"),
            ("min_video_interactions", c.min_video_interactions >= 2, ">= 2"),
            ("mean_video_interactions", c.mean_video_interactions >= c.min_video_interactions,
             "at least min_video_interactions"),
            ("max_user_topics", 1 <= c.max_user_topics <= c.num_topics, "in [1, num_topics]"),
            ("popularity_sigma", c.popularity_sigma >= 0, ">= 0"),
            ("title_min_words", 1 <= c.title_min_words <= c.title_max_words, "in [1, title_max_words]"),
            ("comment_min_words", 1 <= c.comment_min_words <= c.comment_max_words, "in [1, comment_max_words]"),
            ("mean_comments_per_video", c.mean_comments_per_video >= 1 - c.no_comment_video_frac,
             "at least 1 - no_comment_video_frac (videos with comments have at least one)"),
            ("comment_like_scale", c.comment_like_scale > 0, "> 0"),
            ("user_style_concentration", c.user_style_concentration > 0, "> 0"),
            ("subtopic_concentration", c.subtopic_concentration > 0, "> 0"),
            ("num_subtopics", c.num_subtopics >= 1, ">= 1"),
            ("max_comments_liked", 1 <= c.max_comments_liked <= c.max_comment_delay_seconds,
             "in [1, max_comment_delay_seconds]"),
            ("min_gap_seconds", c.min_gap_seconds > c.max_comment_delay_seconds,
             "greater than max_comment_delay_seconds"),
            ("mean_gap_seconds", c.mean_gap_seconds >= c.min_gap_seconds, "at least min_gap_seconds"),
            ("start_time", c.start_time > 0, "> 0"),
            ("start_spread_seconds", c.start_spread_seconds >= 1, ">= 1"),
            ("catalog_days", c.catalog_days > 0, "> 0"),
            ("freshness_days", c.freshness_days >= 0, ">= 0 (0 = no decay)"),
        ]
        for key in ("topic_stickiness", "no_comment_video_frac", "never_comment_user_frac", "view_noise",
                    "upload_frac"):
            checks.append((key, 0 <= getattr(c, key) < 1, "in [0, 1)"))
        for key in ("user_topic_background", "title_topic_word_prob", "category_noise", "category_missing",
                    "comment_topic_word_prob", "comment_open_prob", "title_subtopic_word_prob",
                    "title_sticker_prob"):
            checks.append((key, 0 <= getattr(c, key) <= 1, "in [0, 1]"))
        for key, ok, need in checks:
            if not ok:
                raise ConfigError(f"data.{key}={getattr(c, key)!r}: must be {need}")

    @property
    def has_fresh_views(self) -> bool:
        """Whether views need the mechanisms' generator (noise, sub-interests or upload times)."""
        return self.view_noise > 0 or self.num_subtopics > 1 or self.upload_frac > 0 or self.freshness_days > 0


@dataclass
class WorldTruth:
    """The generative ground truth; row ``i`` of each array describes raw id ``i + 1``."""

    topic_names: list[str]
    style_names: list[str]
    user_topic_pref: np.ndarray  # float64 [U, K], rows sum to 1
    user_style_pref: np.ndarray  # float64 [U, S], rows sum to 1
    user_opens_comments: np.ndarray  # bool [U]
    video_topic: np.ndarray  # int64 [V]
    video_popularity: np.ndarray  # float64 [V] prior
    video_in_topic_prob: np.ndarray  # float64 [V] P(video | its topic) with every video available
    comment_video: np.ndarray  # int64 [C] video row of each comment
    comment_style: np.ndarray  # int64 [C]
    comment_likes: np.ndarray  # int64 [C]
    topic_stickiness: float
    style_strength: float
    like_beta: float
    # the mechanisms (defaults: none)
    user_subtopic_pref: np.ndarray | None = None  # float64 [U, K, S'] rows sum to 1; None = one sub-interest
    video_subtopic: np.ndarray | None = None  # int64 [V]
    video_upload: np.ndarray | None = None  # int64 [V] upload time; None = before every view
    view_genuine: np.ndarray | None = None  # bool [Nv] per video-interaction row; None = all
    view_noise: float = 0.0
    freshness_seconds: float = 0.0
    popularity_alpha: float = 1.0

    @property
    def num_subtopics(self) -> int:
        return 1 if self.user_subtopic_pref is None else self.user_subtopic_pref.shape[2]

    @functools.cached_property
    def sampler(self) -> FreshSampler:
        """The view sampler of this world (availability and freshness)."""
        s, v = self.num_subtopics, len(self.video_topic)
        sub = np.zeros(v, np.int64) if self.video_subtopic is None else self.video_subtopic
        upload = np.zeros(v, np.int64) if self.video_upload is None else self.video_upload
        k = len(self.topic_names)
        return FreshSampler(self.video_topic * s + sub, upload, self.video_popularity ** self.popularity_alpha,
                            self.freshness_seconds, k * s)

    def next_video_prob(self, users: np.ndarray, prev_videos: np.ndarray, candidates: np.ndarray,
                        times: np.ndarray | None = None) -> np.ndarray:
        """P(next view = candidate | user, the user's previous *genuine* view, time): ``users``,
        ``prev_videos``, ``times`` [N] rows/seconds, ``candidates`` [N, M] rows -> [N, M]. Sums to 1
        over all videos. ``times`` may be None only in a world without upload times and freshness."""
        if times is None:
            if self.video_upload is not None or self.freshness_seconds > 0:
                raise ValueError("this world has upload times or freshness: pass the view times")
            times = np.full(len(users), np.iinfo(np.int64).max // 4)
        cand_topic = self.video_topic[candidates]
        same = cand_topic == self.video_topic[prev_videos][:, None]
        p_topic = self.topic_stickiness * same + (1 - self.topic_stickiness) * self.user_topic_pref[
            users[:, None], cand_topic
        ]
        s = self.num_subtopics
        sub = np.zeros_like(candidates) if self.video_subtopic is None else self.video_subtopic[candidates]
        p_sub = 1.0 if s == 1 else self.user_subtopic_pref[users[:, None], cand_topic, sub]
        p_in = self.sampler.prob(cand_topic * s + sub, candidates, times, everyone=False)
        p = (1 - self.view_noise) * p_topic * p_sub * p_in
        if self.view_noise > 0:
            every = np.full_like(candidates, self.sampler.num_segments - 1)
            p = p + self.view_noise * self.sampler.prob(every, candidates, times, everyone=True)
        return p

    def sample_context(self, ds, samples) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What :meth:`next_video_prob` conditions on, for each sample of a prepared dataset of
        this world: ``(user rows, the user's latest genuine view before the sample (its video
        row; the latest view if none is genuine), sample times)``, each [N]."""
        raw_user = np.asarray(ds.raw_ids("users")).astype(np.int64)
        raw_video = np.r_[0, np.asarray(ds.raw_ids("videos")).astype(np.int64) - 1]
        ptr, video = np.asarray(ds.vi_ptr), np.asarray(ds.vi_video)
        if not np.all(np.diff(raw_user) > 0) or len(video) != len(self.view_genuine):
            raise ValueError("the dataset's users or video interactions are not those of this world")
        genuine = self.view_genuine  # prepared rows are the world's rows: users in raw-id order, then time
        user = np.asarray(samples.user)
        end = np.asarray(samples.vi_end)
        idx = np.where(genuine, np.arange(len(genuine)), -1)
        latest = np.maximum.accumulate(idx)[np.maximum(end - 1, 0)]
        latest = np.where(latest >= ptr[user], latest, end - 1)
        return raw_user[user - 1] - 1, raw_video[video[latest]], np.asarray(samples.time)

    def comment_logit(self, users: np.ndarray, comments: np.ndarray) -> np.ndarray:
        """Logit of a user liking a comment within its video's section; same-shape rows -> float64."""
        pref = self.user_style_pref[users, self.comment_style[comments]]
        return self.style_strength * pref + self.like_beta * np.log1p(self.comment_likes[comments])


def _users(cfg: SyntheticConfig, rng, rng2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    u, k = cfg.num_users, cfg.num_topics
    n_dom = rng.integers(1, cfg.max_user_topics + 1, u)
    rank = rng.permuted(np.tile(np.arange(k), (u, 1)), axis=1)
    dom = rng.gamma(1.0, size=(u, k)) * (rank < n_dom[:, None])
    pref = (1 - cfg.user_topic_background) * dom / dom.sum(1, keepdims=True) + cfg.user_topic_background / k
    style = rng.dirichlet(np.full(cfg.num_styles, cfg.user_style_concentration), u)
    opens = rng.random(u) >= cfg.never_comment_user_frac
    sub = None
    if cfg.num_subtopics > 1:
        sub = rng2.dirichlet(np.full(cfg.num_subtopics, cfg.subtopic_concentration), (u, k))
    return pref, style, opens, sub


def _videos(cfg: SyntheticConfig, rng, rng2, pools: Pools, names: list[str]):
    """Topics (balanced, every topic used), sub-interests (balanced within a topic), popularity
    priors, upload times, titles and noisy categories."""
    v, k = cfg.num_videos, cfg.num_topics
    topic = rng.permutation(np.arange(v) % k)
    popularity = rng.lognormal(0.0, cfg.popularity_sigma, v)
    n_words = rng.integers(cfg.title_min_words, cfg.title_max_words + 1, v)
    # the i-th video of a topic (in row order) takes sub-interest i mod num_subtopics
    order = np.argsort(topic, kind="stable")
    rank = np.empty(v, np.int64)
    rank[order] = np.arange(v) - np.searchsorted(topic[order], topic[order])
    subtopic = rank % cfg.num_subtopics
    if cfg.vocabulary == "real":
        titles = compose_titles(rng2, pools, n_words, topic, subtopic, cfg.title_topic_word_prob,
                                cfg.title_subtopic_word_prob, cfg.title_sticker_prob, cfg.num_subtopics)
    else:
        titles = compose(rng, pools, n_words, pools.topic, topic, pools.generic, np.zeros(v, np.int64),
                         cfg.title_topic_word_prob)
    cat_topic = np.where(rng.random(v) < cfg.category_noise, (topic + rng.integers(1, k, v)) % k, topic)
    category = pc.if_else(pa.array(rng.random(v) < cfg.category_missing), pa.scalar(None, pa.string()),
                          pa.array(np.array(names)[cat_topic].tolist(), pa.string()))
    table = pa.table({"video_id": np.arange(1, v + 1), "title": titles, "category": category})
    return topic, subtopic, popularity, _uploads(cfg, rng2, rank < cfg.num_subtopics), table


def _uploads(cfg: SyntheticConfig, rng2, first_of_segment: np.ndarray) -> np.ndarray | None:
    """Upload times: the catalog over ``catalog_days`` before the window, the rest (``upload_frac``)
    within it; the first video of every (topic, sub-interest) is in the catalog, so every segment
    has a video before any view. None without cold start."""
    if cfg.upload_frac == 0 and cfg.freshness_days == 0:
        return None
    v = cfg.num_videos
    new = (rng2.random(v) < cfg.upload_frac) & ~first_of_segment
    catalog = cfg.start_time - rng2.integers(1, int(cfg.catalog_days * DAY) + 1, v)
    window = cfg.start_time + rng2.integers(0, cfg.start_spread_seconds, v)
    return np.where(new, window, catalog).astype(np.int64)


def _comments(cfg: SyntheticConfig, rng, rng2, pools: Pools, video_topic: np.ndarray):
    """Comments grouped by video: ``ptr`` [V+1], and per comment its video, style, likes [C]."""
    v = cfg.num_videos
    m = cfg.mean_comments_per_video / (1 - cfg.no_comment_video_frac)
    counts = np.where(rng.random(v) < cfg.no_comment_video_frac, 0, rng.geometric(1 / m, v))
    ptr = np.zeros(v + 1, np.int64)
    np.cumsum(counts, out=ptr[1:])
    video = np.repeat(np.arange(v), counts)
    nc = len(video)
    style = rng.integers(0, cfg.num_styles, nc)
    likes = rng.poisson(cfg.comment_like_scale * rng.lognormal(0.0, cfg.comment_like_sigma, nc)).astype(np.int64)
    n_words = rng.integers(cfg.comment_min_words, cfg.comment_max_words + 1, nc)
    texts = compose(rng2 if cfg.vocabulary == "real" else rng, pools, n_words, pools.topic, video_topic[video],
                    pools.style, style, cfg.comment_topic_word_prob)
    table = pa.table({"comment_id": np.arange(1, nc + 1), "video_id": video + 1, "text": texts, "like_count": likes})
    return ptr, video, style, likes, table


def generate(cfg: SyntheticConfig) -> tuple[RawTables, WorldTruth]:
    """Build the world of ``cfg``: raw tables (ids = row + 1) and the truth that generated them."""
    cfg = cfg.resolved()
    cfg.validate()
    # rng: every draw of the world without mechanisms, in its order; rng2: the mechanisms' draws,
    # so turning them off leaves the rest of the world as it was
    rng, rng2 = np.random.default_rng(cfg.seed), np.random.default_rng([cfg.seed, 1])
    pools = build_pools(cfg.vocabulary, cfg.num_topics, cfg.num_styles, cfg.num_subtopics)
    names = topic_names(cfg.num_topics)
    pref, style_pref, opens, sub_pref = _users(cfg, rng, rng2)
    video_topic, video_sub, popularity, upload, videos = _videos(cfg, rng, rng2, pools, names)
    weight = popularity**cfg.popularity_alpha
    in_topic = weight / np.bincount(video_topic, weight, cfg.num_topics)[video_topic]
    c_ptr, c_video, c_style, c_likes, comments = _comments(cfg, rng, rng2, pools, video_topic)
    truth = WorldTruth(
        topic_names=names, style_names=[s for s, _ in STYLES[: cfg.num_styles]], user_topic_pref=pref,
        user_style_pref=style_pref, user_opens_comments=opens, video_topic=video_topic,
        video_popularity=popularity, video_in_topic_prob=in_topic, comment_video=c_video, comment_style=c_style,
        comment_likes=c_likes, topic_stickiness=cfg.topic_stickiness,
        style_strength=cfg.style_strength, like_beta=cfg.like_beta, user_subtopic_pref=sub_pref,
        video_subtopic=None if sub_pref is None else video_sub, video_upload=upload, view_noise=cfg.view_noise,
        freshness_seconds=cfg.freshness_days * DAY, popularity_alpha=cfg.popularity_alpha,
    )
    if cfg.has_fresh_views:
        sp = np.ones((cfg.num_users, cfg.num_topics, 1)) if sub_pref is None else sub_pref
        vi_user, vi_video, vi_time, genuine = fresh_views(cfg, rng2, pref, sp, truth.sampler)
    else:
        vi_user, vi_video, vi_time = sticky_views(cfg, rng, pref, video_topic, weight)
        genuine = np.ones(len(vi_user), bool)
    truth.view_genuine = genuine
    ci_user, ci_comment, ci_time = comment_interactions(
        cfg, rng, (vi_user, vi_video, vi_time), genuine, opens, style_pref, c_ptr, c_style, c_likes
    )
    log.info("synthetic world: %d users, %d videos, %d comments, %d video (%.0f%% genuine) and %d comment "
             "interactions", cfg.num_users, cfg.num_videos, len(c_video), len(vi_user), 100 * genuine.mean(),
             len(ci_user))
    tables = RawTables(
        videos=videos,
        comments=comments,
        video_interactions=pa.table({"user_id": vi_user + 1, "video_id": vi_video + 1, "timestamp": vi_time}),
        comment_interactions=pa.table({"user_id": ci_user + 1, "comment_id": ci_comment + 1, "timestamp": ci_time}),
        origin={name: f"synthetic:{name}" for name in ("videos", "comments", "video_interactions",
                                                       "comment_interactions")},
        source={"kind": "synthetic", **asdict(cfg)},
    )
    return tables, truth


def synthetic_tables(**knobs) -> RawTables:
    """The raw tables of the world :class:`SyntheticConfig` ``(**knobs)`` describes (the data
    source ``conf/data/synthetic.yaml`` builds)."""
    unknown = set(knobs) - {f.name for f in fields(SyntheticConfig)}
    if unknown:
        raise ConfigError(f"data.reader: unknown synthetic-world keys {sorted(unknown)}")
    return generate(SyntheticConfig(**knobs))[0]
