"""An embedded short-video world with planted signal, deterministic by seed.

The world is generated, not downloaded, so every stage can be exercised anywhere and models can be
checked against a known truth. The signal is built so that a sequential model that reads text can
find it and a popularity model cannot fully exploit it:

- every video has one of ``K`` topics; a topic owns a vocabulary of Chinese words, English
  (syllable) words and bracketed emoji tokens, and titles draw mostly from it;
- users prefer 1..``max_user_topics`` topics; a user's next video keeps the previous video's topic
  with probability ``topic_stickiness``, otherwise the topic is drawn from the user's preferences;
  the video within the topic is drawn proportionally to ``popularity ** popularity_alpha``;
- comments have a style (humorous, question, ...); a user likes comments by
  ``softmax(style_strength * style_pref[style] + like_beta * log1p(likes))``, and a fraction of
  users never opens comment sections.

Raw ids are ``row + 1`` for users, videos and comments, so row ``i`` of a :class:`WorldTruth`
array describes the entity with raw id ``i + 1``. Interaction tables come sorted by user, then time.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lsvcr.data.errors import ConfigError
from lsvcr.data.raw import RawTables

log = logging.getLogger(__name__)

TOPIC_NAMES = ("美食 旅行 宠物 游戏 音乐 舞蹈 健身 科技 时尚 搞笑 汽车 教育 体育 动漫 影视 育儿 家居 摄影 美妆 三农").split()
#: (style name, its words separated by "|"); every style has the same number of words
STYLES = (
    ("humorous", "哈哈哈|笑死我了|太逗了|绝了|lol|haha|so funny|hilarious|[笑哭]|[捂脸]|[偷笑]|[呲牙]"),
    ("question", "请问|为什么|怎么做的|在哪里买|求教程|how|why|where is this|any tips|[疑问]|[惊讶]|[发呆]"),
    ("praise", "太棒了|厉害|好喜欢|支持|amazing|love it|great job|so good|[赞]|[鼓掌]|[比心]|[点赞]"),
    ("critique", "一般般|不太行|差评|没意思|boring|meh|overrated|not great|[白眼]|[撇嘴]|[打脸]|[吃瓜]"),
    ("emoji", "哇|wow|[玫瑰]|[爱心]|[送花]|[666]|[抱抱]|[火]|[干杯]|[加油]|[OK]|[调皮]"),
    ("sharing", "我也是|同款|想起了我|me too|same here|been there|my story|[大哭]|[可怜]|[机智]|[握手]|[奸笑]"),
)
GENERIC_WORDS = "今天|分享|日常|第一次|终于|真的|一起|记录|大家|这个|vlog|my|new|today|best|part|with|life|day|video"
_ZH_CHARS = "山水花月星云风雨光影甜酸香脆暖冷红蓝金银龙虎猫狗鱼鸟茶酒米面歌舞书画车船城村海湖林田石玉火冰春秋晨夜"
_EN_SYLLABLES = "ka lo mi tu ra ne so vi da pe zo li ba ku fe ni go ta me ro sa du ki bo ve ly xo cha pri stel".split()
_ZH_PER_TOPIC, _EN_PER_TOPIC, _EMOJI_PER_TOPIC = 8, 8, 2
MAX_TOPICS = 100


@dataclass
class SyntheticConfig:
    """Every knob of the world; defaults give ~1k users, 1.5k videos, 20k video interactions."""

    num_users: int = 1000
    num_videos: int = 1500
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
    never_comment_user_frac: float = 0.3
    comment_open_prob: float = 0.3  # per watched video that has comments
    max_comments_liked: int = 3  # per opened comment section, 1..this
    style_strength: float = 6.0
    like_beta: float = 0.5
    start_time: int = 1_700_000_000
    start_spread_seconds: int = 60 * 86400  # users start uniformly within this window
    min_gap_seconds: int = 120
    mean_gap_seconds: float = 3600.0
    max_comment_delay_seconds: int = 60  # comment interactions follow their video by 1..this
    seed: int = 2024

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first key whose value cannot work."""
        c = self
        checks = [
            ("num_users", c.num_users >= 1, ">= 1"),
            ("num_topics", 2 <= c.num_topics <= MAX_TOPICS, f"in [2, {MAX_TOPICS}]"),
            ("num_videos", c.num_videos >= c.num_topics, "at least num_topics"),
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
            ("max_comments_liked", 1 <= c.max_comments_liked <= c.max_comment_delay_seconds,
             "in [1, max_comment_delay_seconds]"),
            ("min_gap_seconds", c.min_gap_seconds > c.max_comment_delay_seconds,
             "greater than max_comment_delay_seconds"),
            ("mean_gap_seconds", c.mean_gap_seconds >= c.min_gap_seconds, "at least min_gap_seconds"),
            ("start_time", c.start_time > 0, "> 0"),
            ("start_spread_seconds", c.start_spread_seconds >= 1, ">= 1"),
        ]
        for key in ("topic_stickiness", "no_comment_video_frac", "never_comment_user_frac"):
            checks.append((key, 0 <= getattr(c, key) < 1, "in [0, 1)"))
        for key in ("user_topic_background", "title_topic_word_prob", "category_noise", "category_missing",
                    "comment_topic_word_prob", "comment_open_prob"):
            checks.append((key, 0 <= getattr(c, key) <= 1, "in [0, 1]"))
        for key, ok, need in checks:
            if not ok:
                raise ConfigError(f"data.{key}={getattr(c, key)!r}: must be {need}")


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
    video_in_topic_prob: np.ndarray  # float64 [V] P(video | its topic)
    comment_video: np.ndarray  # int64 [C] video row of each comment
    comment_style: np.ndarray  # int64 [C]
    comment_likes: np.ndarray  # int64 [C]
    topic_stickiness: float
    style_strength: float
    like_beta: float

    def next_video_prob(self, users: np.ndarray, prev_videos: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """P(next video = candidate | previous video, user): ``users``, ``prev_videos`` [N] rows,
        ``candidates`` [N, M] rows -> [N, M]. Sums to 1 over all videos."""
        cand_topic = self.video_topic[candidates]
        same = cand_topic == self.video_topic[prev_videos][:, None]
        p_topic = self.topic_stickiness * same + (1 - self.topic_stickiness) * self.user_topic_pref[
            users[:, None], cand_topic
        ]
        return p_topic * self.video_in_topic_prob[candidates]

    def comment_logit(self, users: np.ndarray, comments: np.ndarray) -> np.ndarray:
        """Logit of a user liking a comment within its video's section; same-shape rows -> float64."""
        pref = self.user_style_pref[users, self.comment_style[comments]]
        return self.style_strength * pref + self.like_beta * np.log1p(self.comment_likes[comments])


@dataclass(frozen=True)
class _Vocab:
    words: pa.Array  # every token
    topic_pool: np.ndarray  # int64 [K, Wt] token indices of each topic
    style_pool: np.ndarray  # int64 [S, Ws]
    generic_pool: np.ndarray  # int64 [1, G]


def _build_vocab(num_topics: int, num_styles: int) -> _Vocab:
    # A fixed generator: topic k keeps the same words whatever the world's seed.
    rng = np.random.default_rng(0)
    zh = np.array([a + b for a in _ZH_CHARS for b in _ZH_CHARS if a != b])
    en = np.array([a + b for a in _EN_SYLLABLES for b in _EN_SYLLABLES if a != b])
    zh = zh[rng.permutation(len(zh))][: num_topics * (_ZH_PER_TOPIC + _EMOJI_PER_TOPIC)]
    zh = zh.reshape(num_topics, -1)
    en = en[rng.permutation(len(en))][: num_topics * _EN_PER_TOPIC].reshape(num_topics, -1)
    emoji = np.char.add(np.char.add("[", zh[:, _ZH_PER_TOPIC:]), "]")
    topic = np.concatenate([zh[:, :_ZH_PER_TOPIC], en, emoji], axis=1)
    style = np.array([words.split("|") for _, words in STYLES[:num_styles]])
    generic = np.array(GENERIC_WORDS.split("|"))
    words = np.concatenate([generic, style.ravel(), topic.ravel()])
    g, s = len(generic), style.size
    return _Vocab(
        words=pa.array(words.tolist(), pa.string()),
        topic_pool=g + s + np.arange(topic.size).reshape(topic.shape),
        style_pool=g + np.arange(s).reshape(style.shape),
        generic_pool=np.arange(g)[None, :],
    )


def topic_names(num_topics: int) -> list[str]:
    """Category name of each topic: the 20 built-in names, then ``话题<k>``."""
    return [TOPIC_NAMES[k] if k < len(TOPIC_NAMES) else f"话题{k + 1}" for k in range(num_topics)]


def _compose(rng, words: pa.Array, n_words, a_pool, a_rows, b_pool, b_rows, p_a: float) -> pa.Array:
    """Texts of ``n_words[i]`` tokens each, every token drawn uniformly from row ``a_rows[i]`` of
    ``a_pool`` with probability ``p_a``, else from row ``b_rows[i]`` of ``b_pool``."""
    row = np.repeat(np.arange(len(n_words)), n_words)
    t = len(row)
    tok = np.where(
        rng.random(t) < p_a,
        a_pool[a_rows[row], rng.integers(0, a_pool.shape[1], t)],
        b_pool[b_rows[row], rng.integers(0, b_pool.shape[1], t)],
    )
    offsets = np.zeros(len(n_words) + 1, np.int64)
    np.cumsum(n_words, out=offsets[1:])
    # Arrow joins the token lists in C++; a Python join over millions of rows is the slow part.
    lists = pa.LargeListArray.from_arrays(pa.array(offsets), words.take(pa.array(tok)))
    return pc.binary_join(lists, " ")


def _segment_cdf(weights: np.ndarray, segment: np.ndarray) -> np.ndarray:
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


def _sample_segments(rng, cdf: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """One draw from each requested segment: ``segments`` [N] -> positions into the cdf [N]."""
    return np.searchsorted(cdf, segments + rng.random(len(segments)), side="right")


def _later_repeats(a: np.ndarray, b: np.ndarray, nb: int) -> np.ndarray:
    """bool [N]: True where the pair (a, b) already occurred at an earlier row."""
    key = a.astype(np.int64) * nb + b
    order = np.argsort(key, kind="stable")
    rep = np.zeros(len(key), bool)
    rep[order[1:]] = key[order[1:]] == key[order[:-1]]
    return rep


def _users(cfg: SyntheticConfig, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u, k = cfg.num_users, cfg.num_topics
    n_dom = rng.integers(1, cfg.max_user_topics + 1, u)
    rank = rng.permuted(np.tile(np.arange(k), (u, 1)), axis=1)
    dom = rng.gamma(1.0, size=(u, k)) * (rank < n_dom[:, None])
    pref = (1 - cfg.user_topic_background) * dom / dom.sum(1, keepdims=True) + cfg.user_topic_background / k
    style = rng.dirichlet(np.full(cfg.num_styles, cfg.user_style_concentration), u)
    opens = rng.random(u) >= cfg.never_comment_user_frac
    return pref, style, opens


def _video_sequences(cfg: SyntheticConfig, rng, pref, video_topic, in_topic_weight):
    """Sticky topic chains per user -> (user, video, time) rows sorted by user then time."""
    extra = cfg.mean_video_interactions - cfg.min_video_interactions
    lengths = cfg.min_video_interactions + rng.geometric(1 / (extra + 1), cfg.num_users) - 1
    n = int(lengths.sum())
    user = np.repeat(np.arange(cfg.num_users), lengths)
    first = np.zeros(n, bool)
    first[np.r_[0, np.cumsum(lengths)[:-1]]] = True

    switch = first | (rng.random(n) >= cfg.topic_stickiness)
    topic = np.zeros(n, np.int64)
    pref_cdf = _segment_cdf(pref.ravel(), np.repeat(np.arange(cfg.num_users), cfg.num_topics))
    topic[switch] = _sample_segments(rng, pref_cdf, user[switch]) % cfg.num_topics
    # A kept topic copies the topic of the latest switch of the same user (every user starts with one).
    last_switch = np.maximum.accumulate(np.where(switch, np.arange(n), 0))
    topic = topic[last_switch]

    by_topic = np.argsort(video_topic, kind="stable")
    video_cdf = _segment_cdf(in_topic_weight[by_topic], video_topic[by_topic])
    video = by_topic[_sample_segments(rng, video_cdf, topic)]
    for _ in range(cfg.repeat_resample_rounds):
        rep = _later_repeats(user, video, cfg.num_videos)
        video[rep] = by_topic[_sample_segments(rng, video_cdf, topic[rep])]
    video = _break_consecutive(cfg, rng, first, topic, video, by_topic, video_cdf)

    gaps = cfg.min_gap_seconds + rng.exponential(cfg.mean_gap_seconds - cfg.min_gap_seconds, n).astype(np.int64)
    gaps[first] = 0
    since_start = np.cumsum(gaps)
    since_start -= since_start[first][user]
    start = cfg.start_time + rng.integers(0, cfg.start_spread_seconds, cfg.num_users)
    return user, video, start[user] + since_start


def _break_consecutive(cfg, rng, first, topic, video, by_topic, video_cdf) -> np.ndarray:
    """Redraw a video equal to the user's previous one, within its topic a few times, then (for
    topics too small to avoid it) from any other video."""
    for attempt in range(64):
        bad = np.flatnonzero(~first[1:] & (video[1:] == video[:-1])) + 1
        if len(bad) == 0:
            return video
        if attempt < 5:
            video[bad] = by_topic[_sample_segments(rng, video_cdf, topic[bad])]
        else:
            video[bad] = (video[bad] + rng.integers(1, cfg.num_videos, len(bad))) % cfg.num_videos
    raise RuntimeError("could not remove consecutive repeated videos after 64 redraws")


def _comment_interactions(cfg, rng, vi, opens, style_pref, c_ptr, c_style, c_likes):
    """Users who open comment sections like 1..max comments of some watched videos, chosen by
    Gumbel-top-k on the true logits. Returns (user, comment, time) rows, earliest per pair only."""
    vi_user, vi_video, vi_time = vi
    n_comments = c_ptr[vi_video + 1] - c_ptr[vi_video]
    ev = np.flatnonzero(opens[vi_user] & (n_comments > 0) & (rng.random(len(vi_user)) < cfg.comment_open_prob))
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
    fresh = ~_later_repeats(user, comment, len(c_style))
    return user[fresh], comment[fresh], time[fresh]


def _videos(cfg: SyntheticConfig, rng, vocab: _Vocab, names: list[str]):
    """Topics (balanced, every topic used), popularity priors, titles and noisy categories."""
    v, k = cfg.num_videos, cfg.num_topics
    topic = rng.permutation(np.arange(v) % k)
    popularity = rng.lognormal(0.0, cfg.popularity_sigma, v)
    n_words = rng.integers(cfg.title_min_words, cfg.title_max_words + 1, v)
    titles = _compose(rng, vocab.words, n_words, vocab.topic_pool, topic, vocab.generic_pool,
                      np.zeros(v, np.int64), cfg.title_topic_word_prob)
    cat_topic = np.where(rng.random(v) < cfg.category_noise, (topic + rng.integers(1, k, v)) % k, topic)
    category = pc.if_else(pa.array(rng.random(v) < cfg.category_missing), pa.scalar(None, pa.string()),
                          pa.array(np.array(names)[cat_topic].tolist(), pa.string()))
    table = pa.table({"video_id": np.arange(1, v + 1), "title": titles, "category": category})
    return topic, popularity, table


def _comments(cfg: SyntheticConfig, rng, vocab: _Vocab, video_topic: np.ndarray):
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
    texts = _compose(rng, vocab.words, n_words, vocab.topic_pool, video_topic[video], vocab.style_pool, style,
                     cfg.comment_topic_word_prob)
    table = pa.table({"comment_id": np.arange(1, nc + 1), "video_id": video + 1, "text": texts, "like_count": likes})
    return ptr, video, style, likes, table


def generate(cfg: SyntheticConfig) -> tuple[RawTables, WorldTruth]:
    """Build the world of ``cfg``: raw tables (ids = row + 1) and the truth that generated them."""
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    vocab = _build_vocab(cfg.num_topics, cfg.num_styles)
    names = topic_names(cfg.num_topics)
    pref, style_pref, opens = _users(cfg, rng)
    video_topic, popularity, videos = _videos(cfg, rng, vocab, names)
    weight = popularity**cfg.popularity_alpha
    in_topic = weight / np.bincount(video_topic, weight, cfg.num_topics)[video_topic]
    c_ptr, c_video, c_style, c_likes, comments = _comments(cfg, rng, vocab, video_topic)

    vi_user, vi_video, vi_time = _video_sequences(cfg, rng, pref, video_topic, weight)
    ci_user, ci_comment, ci_time = _comment_interactions(
        cfg, rng, (vi_user, vi_video, vi_time), opens, style_pref, c_ptr, c_style, c_likes
    )
    log.info("synthetic world: %d users, %d videos, %d comments, %d video and %d comment interactions",
             cfg.num_users, cfg.num_videos, len(c_video), len(vi_user), len(ci_user))

    tables = RawTables(
        videos=videos,
        comments=comments,
        video_interactions=pa.table({"user_id": vi_user + 1, "video_id": vi_video + 1, "timestamp": vi_time}),
        comment_interactions=pa.table({"user_id": ci_user + 1, "comment_id": ci_comment + 1, "timestamp": ci_time}),
        origin={name: f"synthetic:{name}" for name in ("videos", "comments", "video_interactions",
                                                       "comment_interactions")},
        source={"kind": "synthetic", **asdict(cfg)},
    )
    truth = WorldTruth(
        topic_names=names, style_names=[s for s, _ in STYLES[: cfg.num_styles]], user_topic_pref=pref,
        user_style_pref=style_pref, user_opens_comments=opens, video_topic=video_topic,
        video_popularity=popularity, video_in_topic_prob=in_topic, comment_video=c_video, comment_style=c_style,
        comment_likes=c_likes, topic_stickiness=cfg.topic_stickiness,
        style_strength=cfg.style_strength, like_beta=cfg.like_beta,
    )
    return tables, truth


def synthetic_tables(**knobs) -> RawTables:
    """The raw tables of the world :class:`SyntheticConfig` ``(**knobs)`` describes (the data
    source ``conf/data/synthetic.yaml`` builds)."""
    unknown = set(knobs) - {f.name for f in fields(SyntheticConfig)}
    if unknown:
        raise ConfigError(f"data.reader: unknown synthetic-world keys {sorted(unknown)}")
    return generate(SyntheticConfig(**knobs))[0]
