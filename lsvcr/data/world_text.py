"""Words and texts of the synthetic world (:mod:`lsvcr.data.synthetic`): its two vocabularies and
the vectorised composers of titles and comments.

- ``vocabulary="synthetic"`` (the world before real words): every topic owns made-up tokens, two
  Chinese characters or two English syllables, plus bracketed sticker tokens like ``[山水]``; two
  titles of one topic share tokens, and only token identity tells topics apart.
- ``vocabulary="real"``: every topic has concepts of real Chinese and English synonyms
  (:data:`lsvcr.data.world_words.TOPIC_WORDS`): three general ones and two for each of four
  sub-interests. A title draws each topic word from a concept's synonyms, so two titles of one topic
  may share no token while a pretrained text encoder still recognises the topic (and sub-interest).

Comment styles (humorous, question, ...) use real words, emoji words and stickers in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lsvcr.data.world_words import GENERIC_WORDS, STYLES, TITLE_STICKERS, TOPIC_ORDER, TOPIC_WORDS
from lsvcr.errors import ConfigError

TOPIC_NAMES = TOPIC_ORDER  # 美食 旅行 宠物 ... (the categories of the built-in topics)
_ZH_CHARS = "山水花月星云风雨光影甜酸香脆暖冷红蓝金银龙虎猫狗鱼鸟茶酒米面歌舞书画车船城村海湖林田石玉火冰春秋晨夜"
_EN_SYLLABLES = "ka lo mi tu ra ne so vi da pe zo li ba ku fe ni go ta me ro sa du ki bo ve ly xo cha pri stel".split()
_ZH_PER_TOPIC, _EN_PER_TOPIC, _EMOJI_PER_TOPIC = 8, 8, 2
REAL_SUBTOPICS = 4  # sub-interests per topic in TOPIC_WORDS


def topic_names(num_topics: int) -> list[str]:
    """Category name of each topic: the built-in names, then ``话题<k>``."""
    return [TOPIC_NAMES[k] if k < len(TOPIC_NAMES) else f"话题{k + 1}" for k in range(num_topics)]


@dataclass(frozen=True)
class Pools:
    """Token pools as ragged rows: row ``r`` of a pool is ``flat[ptr[r]:ptr[r + 1]]`` (indices into
    ``words``). ``subtopic`` rows are ``topic * num_subtopics + subtopic``."""

    words: pa.Array  # every token
    topic: tuple[np.ndarray, np.ndarray]  # (ptr [K+1], flat): every topic word of a topic
    subtopic: tuple[np.ndarray, np.ndarray] | None  # real words only: a sub-interest's words
    style: tuple[np.ndarray, np.ndarray]  # (ptr [S+1], flat)
    generic: tuple[np.ndarray, np.ndarray]  # one row
    sticker: tuple[np.ndarray, np.ndarray] | None  # one row, real words only


def _ragged(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    ptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum([len(r) for r in rows], out=ptr[1:])
    return ptr, np.array([i for r in rows for i in r], np.int64)


class _Words:
    """Appends words to one list and hands back their indices."""

    def __init__(self):
        self.words: list[str] = []

    def add(self, words) -> list[int]:
        start = len(self.words)
        self.words.extend(words)
        return list(range(start, len(self.words)))


def build_pools(vocabulary: str, num_topics: int, num_styles: int, num_subtopics: int = 1) -> Pools:
    """The token pools of ``vocabulary`` ("synthetic" or "real")."""
    w = _Words()
    generic = w.add(GENERIC_WORDS.split("|"))
    style = [w.add(words.split("|")) for _, words in STYLES[:num_styles]]
    if vocabulary == "synthetic":
        topic = [w.add(words) for words in _synthetic_topic_words(num_topics)]
        return Pools(pa.array(w.words, pa.string()), _ragged(topic), None, _ragged(style), _ragged([generic]), None)
    if vocabulary != "real":
        raise ConfigError(f"data.vocabulary={vocabulary!r}: expected 'real' or 'synthetic'")
    if num_topics > len(TOPIC_WORDS):
        raise ConfigError(f"data.num_topics={num_topics}: the real-word vocabulary has {len(TOPIC_WORDS)} topics; "
                          "use fewer topics or data.vocabulary=synthetic")
    if not 1 <= num_subtopics <= REAL_SUBTOPICS:
        raise ConfigError(f"data.num_subtopics={num_subtopics}: the real-word vocabulary has {REAL_SUBTOPICS} "
                          "sub-interests per topic; use 1..4 or data.vocabulary=synthetic")
    topic, sub = [], []
    for entry in list(TOPIC_WORDS.values())[:num_topics]:
        general = w.add(_words(entry["general"]))
        subs = [w.add(_words(concepts)) for concepts in entry["sub"].values()]
        topic.append(general + [i for s in subs for i in s])
        # fewer sub-interests than the vocabulary's: sub-interest j speaks for j, j + n, ...
        sub += [[i for s in subs[j::num_subtopics] for i in s] for j in range(num_subtopics)]
    sticker = w.add(TITLE_STICKERS.split("|"))
    return Pools(pa.array(w.words, pa.string()), _ragged(topic), _ragged(sub), _ragged(style), _ragged([generic]),
                 _ragged([sticker]))


def _words(concepts: list[str]) -> list[str]:
    """Every synonym of ``concepts`` ("zh1|zh2 / en1|en2" each)."""
    return [word for c in concepts for side in c.split("/") for word in side.strip().split("|")]


def _synthetic_topic_words(num_topics: int) -> list[list[str]]:
    # A fixed generator: topic k keeps the same tokens whatever the world's seed.
    rng = np.random.default_rng(0)
    zh = np.array([a + b for a in _ZH_CHARS for b in _ZH_CHARS if a != b])
    en = np.array([a + b for a in _EN_SYLLABLES for b in _EN_SYLLABLES if a != b])
    zh = zh[rng.permutation(len(zh))][: num_topics * (_ZH_PER_TOPIC + _EMOJI_PER_TOPIC)]
    zh = zh.reshape(num_topics, -1)
    en = en[rng.permutation(len(en))][: num_topics * _EN_PER_TOPIC].reshape(num_topics, -1)
    emoji = np.char.add(np.char.add("[", zh[:, _ZH_PER_TOPIC:]), "]")
    return np.concatenate([zh[:, :_ZH_PER_TOPIC], en, emoji], axis=1).tolist()


def draw(rng, pool: tuple[np.ndarray, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """One token uniformly from row ``rows[i]`` of ``pool`` for every i. [n] -> [n]."""
    ptr, flat = pool
    start, size = ptr[rows], ptr[rows + 1] - ptr[rows]
    return flat[start + (rng.random(len(rows)) * size).astype(np.int64)]


def join(words: pa.Array, tokens: np.ndarray, n_tokens: np.ndarray) -> pa.Array:
    """Texts of ``n_tokens[i]`` consecutive ``tokens`` each, joined by spaces."""
    offsets = np.zeros(len(n_tokens) + 1, np.int64)
    np.cumsum(n_tokens, out=offsets[1:])
    # Arrow joins the token lists in C++; a Python join over millions of rows is the slow part.
    lists = pa.LargeListArray.from_arrays(pa.array(offsets), words.take(pa.array(tokens)))
    return pc.binary_join(lists, " ")


def _as_matrix(pool: tuple[np.ndarray, np.ndarray]) -> np.ndarray | None:
    """``[rows, width]`` when every row of ``pool`` has one length, else None."""
    ptr, flat = pool
    sizes = np.diff(ptr)
    return flat.reshape(len(sizes), -1) if len(sizes) and (sizes == sizes[0]).all() else None


def compose(rng, pools: Pools, n_words: np.ndarray, a_pool, a_rows, b_pool, b_rows, p_a: float) -> pa.Array:
    """Texts of ``n_words[i]`` tokens each, every token drawn uniformly from row ``a_rows[i]`` of
    ``a_pool`` with probability ``p_a``, else from row ``b_rows[i]`` of ``b_pool``.

    Pools of equal-length rows draw column indices with ``rng.integers`` (the draws of the world
    before real words, so ``mechanisms=false`` reproduces it bit for bit); ragged ones with :func:`draw`.
    """
    row = np.repeat(np.arange(len(n_words)), n_words)
    t = len(row)
    take_a = rng.random(t) < p_a
    a, b = _as_matrix(a_pool), _as_matrix(b_pool)
    if a is not None and b is not None:
        tok = np.where(take_a, a[a_rows[row], rng.integers(0, a.shape[1], t)],
                       b[b_rows[row], rng.integers(0, b.shape[1], t)])
    else:
        tok = np.where(take_a, draw(rng, a_pool, a_rows[row]), draw(rng, b_pool, b_rows[row]))
    return join(pools.words, tok, n_words)


def compose_titles(rng, pools: Pools, n_words: np.ndarray, topic: np.ndarray, subtopic: np.ndarray,
                   p_topic: float, p_subtopic: float, p_sticker: float, num_subtopics: int) -> pa.Array:
    """Real-word titles: each token a topic word with probability ``p_topic`` (of those, a word of
    the video's sub-interest with probability ``p_subtopic``), else a generic word; then a sticker
    with probability ``p_sticker``."""
    row = np.repeat(np.arange(len(n_words)), n_words)
    t = len(row)
    kind = rng.random(t)
    sub_rows = (topic * num_subtopics + subtopic)[row]
    tok = np.where(kind < p_topic * p_subtopic, draw(rng, pools.subtopic, sub_rows),
                   np.where(kind < p_topic, draw(rng, pools.topic, topic[row]),
                            draw(rng, pools.generic, np.zeros(t, np.int64))))
    sticker = rng.random(len(n_words)) < p_sticker
    # the sticker goes after the title's last token
    ends = np.cumsum(n_words) - 1
    extra = draw(rng, pools.sticker, np.zeros(int(sticker.sum()), np.int64))
    tok = np.insert(tok, ends[sticker] + 1, extra)
    return join(pools.words, tok, n_words + sticker)
