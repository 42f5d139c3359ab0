"""Tests of the synthetic world: determinism, schema, timing invariants and the planted signal."""

import re
from dataclasses import replace

import numpy as np
import pytest

from lsvcr.data.synthetic import SyntheticConfig, WorldTruth, generate, topic_names
from lsvcr.errors import ConfigError

TINY = SyntheticConfig(num_users=300, num_videos=600, num_topics=8, seed=7)
# the world without mechanisms (the planted base signal alone)
PLAIN = replace(TINY, mechanisms=False)


@pytest.fixture(scope="module")
def world():
    return generate(TINY)


def col(table, name):
    return table[name].to_numpy(zero_copy_only=False)


def video_rows(tables):
    """(user row, video row, time) of the video interactions; ids are row + 1."""
    vi = tables.video_interactions
    return col(vi, "user_id") - 1, col(vi, "video_id") - 1, col(vi, "timestamp")


def hit_at(scores: np.ndarray, k: int) -> float:
    """Hit@k of column 0 among the columns of ``scores`` [N, M]; ties count half."""
    above = (scores[:, 1:] > scores[:, :1]).sum(1) + 0.5 * (scores[:, 1:] == scores[:, :1]).sum(1)
    return float((above < k).mean())


def test_same_seed_same_world_and_other_seed_differs(world):
    tables, _ = world
    again, _ = generate(TINY)
    other, _ = generate(replace(TINY, seed=8))
    for name in ("videos", "comments", "video_interactions", "comment_interactions"):
        assert tables.table(name).equals(again.table(name)), name
        assert not tables.table(name).equals(other.table(name)), name


def test_schema_ids_and_provenance(world):
    tables, truth = world
    tables.check_columns()
    assert tables.origin["comments"] == "synthetic:comments"
    assert tables.source["seed"] == 7 and tables.source["num_users"] == 300
    assert tables.videos.num_rows == 600
    assert np.array_equal(col(tables.videos, "video_id"), np.arange(1, 601))
    assert col(tables.comments, "comment_id").min() == 1
    assert set(np.unique(col(tables.video_interactions, "user_id"))) == set(range(1, 301))
    assert np.array_equal(col(tables.comments, "video_id") - 1, truth.comment_video)
    assert np.array_equal(col(tables.comments, "like_count"), truth.comment_likes)


def test_sequences_lengths_times_and_no_consecutive_repeats(world):
    tables, _ = world
    user, video, time = video_rows(tables)
    assert np.all(np.diff(user) >= 0)
    same_user = user[1:] == user[:-1]
    assert np.all(np.diff(time)[same_user] > 0)
    assert not np.any(video[1:][same_user] == video[:-1][same_user])
    lengths = np.bincount(user)
    assert lengths.min() >= TINY.min_video_interactions
    assert abs(lengths.mean() - TINY.mean_video_interactions) < 2.5
    # Users start at spread-out times, so a global-time split cuts through many histories.
    first_time = time[np.r_[True, ~same_user]]
    assert first_time.max() - first_time.min() > TINY.start_spread_seconds // 2


def test_comment_interactions_follow_a_view_of_their_video(world):
    tables, truth = world
    user, video, time = video_rows(tables)
    ci = tables.comment_interactions
    cu, cc, ct = col(ci, "user_id") - 1, col(ci, "comment_id") - 1, col(ci, "timestamp")
    assert len(cc) > 0 and cc.min() >= 0 and cc.max() < tables.comments.num_rows
    # The user's latest video interaction strictly before the comment one is on the comment's video.
    big = np.int64(10) ** 12
    latest = np.searchsorted(user * big + time, cu * big + ct, side="left") - 1
    assert np.all(latest >= 0)
    assert np.array_equal(user[latest], cu)
    assert np.array_equal(video[latest], truth.comment_video[cc])
    assert np.all(ct - time[latest] <= TINY.max_comment_delay_seconds)
    assert len(np.unique(cu * 10**7 + cc)) == len(cc)


def test_videos_without_comments_and_users_who_never_comment(world):
    tables, truth = world
    per_video = np.bincount(truth.comment_video, minlength=TINY.num_videos)
    assert 0.03 < (per_video == 0).mean() < 0.2
    assert abs(per_video.mean() - TINY.mean_comments_per_video) < 2
    commenters = np.unique(col(tables.comment_interactions, "user_id") - 1)
    assert not np.any(~truth.user_opens_comments[commenters])
    assert abs((~truth.user_opens_comments).mean() - TINY.never_comment_user_frac) < 0.07
    assert 0.5 < len(commenters) / TINY.num_users < 0.9


def test_texts_mix_chinese_english_and_emoji(world):
    tables, truth = world
    for text in (tables.videos["title"].to_pylist(), tables.comments["text"].to_pylist()):
        joined = "\n".join(text)
        assert re.search(r"[\u4e00-\u9fff]", joined)
        assert re.search(r"\b[a-z]{3,}\b", joined)
        assert re.search(r"\[[^\]\s]+\]", joined)
        assert all(t.strip() == t and "  " not in t and t for t in text)
    comments = tables.comments["text"].to_pylist()
    humorous = [c for c, s in zip(comments, truth.comment_style) if s == truth.style_names.index("humorous")]
    assert np.mean([bool(re.search("哈哈哈|笑死我了|lol|haha|笑哭|捂脸", c)) for c in humorous]) > 0.8


def test_titles_and_categories_reveal_topics():
    tables, truth = generate(PLAIN)  # made-up tokens: only token identity tells topics apart
    titles = tables.videos["title"].to_pylist()
    # Videos of one topic share words; videos of different topics rarely do.
    words = [set(t.split()) for t in titles]
    t0 = np.flatnonzero(truth.video_topic == 0)[:20]
    t1 = np.flatnonzero(truth.video_topic == 1)[:20]
    same = np.mean([len(words[a] & words[b]) > 0 for a in t0 for b in t0 if a < b])
    cross = np.mean([len((words[a] & words[b]) - set("vlog my new today best part with life day video".split()))
                     > 0 for a in t0 for b in t1])
    assert same > 0.5 and cross < 0.2
    cats = np.array(tables.videos["category"].to_pylist(), dtype=object)
    names = np.array(topic_names(TINY.num_topics), dtype=object)
    missing = np.array([c is None for c in cats])
    right = cats[~missing] == names[truth.video_topic[~missing]]
    assert 0.0 < missing.mean() < 0.06
    assert 0.83 < right.mean() < 0.96


def test_next_video_prob_is_a_distribution():
    truth = WorldTruth(
        topic_names=["a", "b"], style_names=["s"], user_topic_pref=np.array([[0.25, 0.75]]),
        user_style_pref=np.ones((1, 1)), user_opens_comments=np.ones(1, bool),
        video_topic=np.array([0, 0, 1]), video_popularity=np.array([1.0, 3.0, 2.0]),
        video_in_topic_prob=np.array([0.25, 0.75, 1.0]), comment_video=np.zeros(0, np.int64),
        comment_style=np.zeros(0, np.int64), comment_likes=np.zeros(0, np.int64),
        topic_stickiness=0.6, style_strength=1.0, like_beta=1.0,
    )
    p = truth.next_video_prob(np.array([0]), np.array([0]), np.array([[0, 1, 2]]))
    # topic a: 0.6 + 0.4 * 0.25 = 0.7, topic b: 0.4 * 0.75 = 0.3
    np.testing.assert_allclose(p, [[0.7 * 0.25, 0.7 * 0.75, 0.3]])


def test_planted_video_signal_beats_popularity():
    tables, truth = generate(PLAIN)
    user, video, _ = video_rows(tables)
    last = np.r_[user[1:] != user[:-1], True]
    target, prev, users = video[last], video[np.flatnonzero(last) - 1], user[last]
    counts = np.bincount(video[~last], minlength=TINY.num_videos).astype(float)
    rng = np.random.default_rng(0)
    neg = rng.integers(0, TINY.num_videos - 1, (len(target), 99))
    neg += neg >= target[:, None]
    cand = np.concatenate([target[:, None], neg], 1)
    oracle = hit_at(truth.next_video_prob(users, prev, cand), 10)
    popular = hit_at(counts[cand], 10)
    assert oracle > 0.75 and oracle > popular + 0.35, (oracle, popular)
    all_videos = np.broadcast_to(np.arange(TINY.num_videos), (len(users), TINY.num_videos))
    np.testing.assert_allclose(truth.next_video_prob(users, prev, all_videos).sum(1), 1.0)


def test_planted_comment_signal_beats_most_liked(world):
    tables, truth = world
    ci = tables.comment_interactions
    cu, cc = col(ci, "user_id") - 1, col(ci, "comment_id") - 1
    per_video = np.bincount(truth.comment_video, minlength=TINY.num_videos)
    ptr = np.r_[0, np.cumsum(per_video)]
    # Pair every liked comment with every comment of its video, then rank it by each scorer.
    n = per_video[truth.comment_video[cc]]
    row = np.repeat(np.arange(len(cc)), n)
    other = ptr[truth.comment_video[cc]][row] + np.arange(len(row)) - np.repeat(np.r_[0, np.cumsum(n)[:-1]], n)

    def mrr(pos_score, other_score):
        above = np.bincount(row, other_score > pos_score[row], len(cc))
        ties = np.bincount(row, other_score == pos_score[row], len(cc)) - 1
        return float(np.mean(1 / (1 + above + 0.5 * ties)))

    oracle = mrr(truth.comment_logit(cu, cc), truth.comment_logit(cu[row], other))
    liked = mrr(truth.comment_likes[cc].astype(float), truth.comment_likes[other].astype(float))
    style_only = mrr(truth.user_style_pref[cu, truth.comment_style[cc]],
                     truth.user_style_pref[cu[row], truth.comment_style[other]])
    assert oracle > liked + 0.1, (oracle, liked)
    assert style_only > liked, (style_only, liked)


@pytest.mark.parametrize(
    "change, key",
    [
        (dict(num_topics=1), "num_topics"),
        (dict(num_videos=5), "num_videos"),
        (dict(topic_stickiness=1.0), "topic_stickiness"),
        (dict(min_gap_seconds=30), "min_gap_seconds"),
        (dict(num_styles=9), "num_styles"),
    ],
)
def test_bad_config_names_the_key(change, key):
    with pytest.raises(ConfigError, match=f"data.{key}="):
        generate(replace(TINY, **change))


# ---------------------------------------------------------------- the mechanisms

def _fingerprint(tables) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in ("videos", "comments", "video_interactions", "comment_interactions"):
        t = tables.table(name)
        for c in t.column_names:
            h.update(f"{name}.{c}={t[c].to_pylist()}".encode())
    return h.hexdigest()


def test_mechanisms_off_is_the_world_of_earlier_versions_bit_for_bit():
    # the fingerprint of lsvcr 0.1's generator (before the mechanisms) for this config
    plain = SyntheticConfig(num_users=50, num_videos=60, seed=5, mean_video_interactions=20.0, mechanisms=False)
    tables, truth = generate(plain)
    assert _fingerprint(tables) == "93552a10ab2766c77608127f6bb79ef26016c2d360636c2851724abbf5c02cb0"
    assert truth.view_genuine.all() and truth.video_upload is None and truth.user_subtopic_pref is None
    # and each off value on its own is what mechanisms=false sets
    assert generate(replace(plain, mechanisms=True, **SyntheticConfig.OFF))[0].video_interactions.equals(
        tables.video_interactions)


def test_view_noise_is_independent_of_preferences_and_comments_follow_genuine_views(world):
    tables, truth = world
    user, video, time = video_rows(tables)
    genuine = truth.view_genuine
    assert abs((~genuine).mean() - TINY.view_noise) < 0.03
    liking = truth.user_topic_pref[user, truth.video_topic[video]]
    chance = (truth.user_topic_pref ** 2).sum(1).mean()  # a view whose topic is drawn from the user's own prefs
    uniform = 1 / TINY.num_topics
    # exploration views land on the user's topics about as often as any topic; genuine ones far more
    assert abs(liking[~genuine].mean() - uniform) < 0.05 and liking[genuine].mean() > 0.7 * chance
    ci = tables.comment_interactions
    cu, ct = col(ci, "user_id") - 1, col(ci, "timestamp")
    big = np.int64(10) ** 12
    latest = np.searchsorted(user * big + time, cu * big + ct, side="left") - 1
    assert genuine[latest].all()  # every comment engagement is under a genuine view
    noisy_off, t_off = generate(replace(TINY, view_noise=0.0))
    assert t_off.view_genuine.all()


def _topic_hits(tables, truth):
    """How often the next view's topic equals (the latest view's, the latest commented video's)
    topic, over views with both, as a pair of shares."""
    user, video, time = video_rows(tables)
    ci = tables.comment_interactions
    cu, cc, ct = col(ci, "user_id") - 1, col(ci, "comment_id") - 1, col(ci, "timestamp")
    big = np.int64(10) ** 12
    # per view: the latest comment interaction of the same user strictly before it
    j = np.searchsorted(cu * big + ct, user * big + time, side="left") - 1
    has = (j >= 0) & (cu[np.maximum(j, 0)] == user) & np.r_[False, user[1:] == user[:-1]]
    rows = np.flatnonzero(has)
    topic = truth.video_topic
    by_view = (topic[video[rows]] == topic[video[rows - 1]]).mean()
    by_comment = (topic[video[rows]] == topic[truth.comment_video[cc[j[rows]]]]).mean()
    return by_view, by_comment


def test_comments_reveal_interest_beyond_noisy_views(world):
    by_view, by_comment = _topic_hits(*world)
    assert by_comment > by_view + 0.05, (by_view, by_comment)
    # without view noise the latest view is the better cue (the topic chain sticks to it)
    by_view, by_comment = _topic_hits(*generate(replace(TINY, view_noise=0.0)))
    assert by_view > by_comment, (by_view, by_comment)


def test_users_prefer_sub_interests_and_titles_name_them(world):
    tables, truth = world
    user, video, _ = video_rows(tables)
    g = truth.view_genuine
    sub_pref = truth.user_subtopic_pref[user[g], truth.video_topic[video[g]]]  # [n, S]
    watched = sub_pref[np.arange(g.sum()), truth.video_subtopic[video[g]]]
    assert watched.mean() > 1.5 / TINY.num_subtopics  # the preferred sub-interests get the views
    assert np.bincount(truth.video_topic * TINY.num_subtopics + truth.video_subtopic).min() >= 1


def test_cold_start_videos_arrive_during_the_window():
    tables, truth = generate(TINY)
    user, video, time = video_rows(tables)
    assert np.all(truth.video_upload[video] <= time)  # nobody watches a video before its upload
    assert abs((truth.video_upload >= TINY.start_time).mean() - TINY.upload_frac) < 0.06
    # the time split's test period has many targets uploaded after the training period ended
    train_end, test_start = np.quantile(time, [0.8, 0.9])
    test_videos = video[time > test_start]
    assert (truth.video_upload[test_videos] > train_end).mean() > 0.2
    # young videos are watched more than old ones of the same popularity: the age decay
    age_days = (time - truth.video_upload[video]) / 86400
    assert np.median(age_days) < 2 * TINY.freshness_days
    _, off = generate(replace(TINY, upload_frac=0.0, freshness_days=0.0))
    assert off.video_upload is None


def test_real_words_titles_of_a_topic_may_share_no_token_but_share_concepts(world):
    from lsvcr.data.world_words import TOPIC_WORDS, check_vocabulary

    check_vocabulary()
    tables, truth = world
    concept = {}
    for entry in TOPIC_WORDS.values():
        for i, c in enumerate([*entry["general"], *[x for v in entry["sub"].values() for x in v]]):
            for side in c.split("/"):
                for word in side.strip().split("|"):
                    concept[word] = (id(entry), i)
    titles = [t.split() for t in tables.videos["title"].to_pylist()]
    words = [set(t) for t in titles]
    concepts = [{concept[w] for w in t if w in concept} for t in titles]
    t0 = np.flatnonzero(truth.video_topic == 0)[:30]
    t1 = np.flatnonzero(truth.video_topic == 1)[:30]
    pairs = [(a, b) for a in t0 for b in t0 if a < b]
    no_token = np.mean([not (words[a] & words[b] - set(GENERIC)) for a, b in pairs])
    same_concept = np.mean([bool(concepts[a] & concepts[b]) for a, b in pairs])
    cross_concept = np.mean([bool(concepts[a] & concepts[b]) for a in t0 for b in t1])
    assert no_token > 0.3 and same_concept > no_token - 0.3 and cross_concept == 0.0, (no_token, same_concept)
    assert np.mean([any(w in concept for w in t) for t in titles]) > 0.95
    assert any(t[-1].startswith("[") for t in titles)  # stickers stay


GENERIC = "今天 分享 日常 第一次 终于 真的 一起 记录 大家 这个 vlog my new today best part with life day video".split()


def test_default_world_has_enough_comment_ranking_samples(tmp_path):
    from lsvcr.data.builder import write_dataset
    from lsvcr.data.samples import SplitConfig
    from lsvcr.data.store import PreparedDataset

    raw, _ = generate(SyntheticConfig())
    ds = PreparedDataset(write_dataset(raw, tmp_path / "ds", SplitConfig("loo")))
    assert len(ds.samples("comm_rank", "train")) >= 10_000


def test_vocabulary_check_names_a_reused_word():
    import copy

    from lsvcr.data.world_words import TOPIC_WORDS, check_vocabulary

    broken = copy.deepcopy(TOPIC_WORDS)
    first = broken["美食"]["general"][0].split("/")[1].split("|")[0].strip()
    zh, en = broken["旅行"]["general"][0].split("/")
    broken["旅行"]["general"][0] = f"{zh}/ {first}|" + "|".join(en.strip().split("|")[1:])  # same count, one reused
    with pytest.raises(ValueError, match=f"{first!r} already used"):
        check_vocabulary(broken)


def test_next_video_prob_with_the_mechanisms_is_a_distribution_over_available_videos(world):
    tables, truth = world
    user, video, time = video_rows(tables)
    rows = np.flatnonzero(np.r_[False, user[1:] == user[:-1]])[:200]
    every = np.broadcast_to(np.arange(TINY.num_videos), (len(rows), TINY.num_videos))
    p = truth.next_video_prob(user[rows], video[rows - 1], every, time[rows])
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-9)
    assert np.all(p[truth.video_upload[every] > time[rows][:, None]] == 0)  # not uploaded yet
    # the draws follow it: the watched video is far likelier under it than a random available one
    watched = p[np.arange(len(rows)), video[rows]]
    assert np.median(watched) > 3 / TINY.num_videos
    with pytest.raises(ValueError, match="pass the view times"):
        truth.next_video_prob(user[rows], video[rows - 1], every)
