"""Alignment batches: batch-local text table, both tasks mixed, the two augmentation views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsvcr.data.align_batch import AlignCollator, AlignSamples, AugmentConfig, SampleRandom, align_items
from lsvcr.data.builder import write_dataset
from lsvcr.data.history import HistoryGatherer
from lsvcr.data.prompts import PromptBuilder
from lsvcr.data.samples import SplitConfig
from lsvcr.data.store import PreparedDataset
from lsvcr.data.synthetic import SyntheticConfig, generate
from lsvcr.models.llm.tokenizer import BPETokenizerTrainer

from conftest import TEST_TEMPLATES

TEMPLATES = TEST_TEMPLATES


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    raw, _ = generate(SyntheticConfig(num_users=30, num_videos=40, seed=3, mechanisms=False))
    ds = PreparedDataset(write_dataset(raw, tmp_path_factory.mktemp("align") / "ds", SplitConfig("loo")))
    texts = ds.video_titles().to_pylist() + ds.comment_texts().to_pylist()
    tok = BPETokenizerTrainer(min_frequency=1).train(texts, vocab_size=500, padding_side="left")
    return ds, tok


def collator(world, train=True, aug=AugmentConfig(0.0, 0.0), seed=0, max_item_comments=50,
             max_position=None) -> AlignCollator:
    ds, tok = world
    pb = PromptBuilder(TEMPLATES, tok, max_prompt_tokens=4096, max_response_tokens=64)
    return AlignCollator(ds, HistoryGatherer(ds, 6, 6), pb, text_max_length=256, aug=aug, seed=seed,
                         train=train, max_item_comments=max_item_comments, max_position=max_position)


def mixed_items(ds, n=6) -> np.ndarray:
    items = align_items(ds, ["rec", "comm_rank"])
    rec, comm = items[items[:, 0] == 0], items[items[:, 0] == 1]
    # comm_rank rows whose users have a comment history, interleaved with rec rows
    return np.concatenate([rec[-n // 2:], comm[-n // 2:]])[[0, 3, 1, 4, 2, 5]]


def decode_table(batch, tok) -> list[str]:
    """Local index -> text (index 0 = padding = '')."""
    return [""] + [tok.decode(ids[m.bool()]) for ids, m in zip(batch.item_ids, batch.item_mask)]


def test_dataset_lists_both_tasks(world):
    ds, _ = world
    joint = AlignSamples(ds, ["rec", "comm_rank"])
    assert len(joint) == len(ds.samples("rec", "train")) + len(ds.samples("comm_rank", "train"))
    assert joint[0] == (0, 0) and joint[len(joint) - 1] == (1, len(ds.samples("comm_rank", "train")) - 1)
    with pytest.raises(Exception, match="alignment tasks"):
        AlignSamples(ds, ["ranking"])


def test_local_indices_point_at_the_right_texts(world):
    ds, tok = world
    items = mixed_items(ds)
    batch = collator(world, train=False)(items)
    titles, comments = [""] + ds.video_titles().to_pylist(), [""] + ds.comment_texts().to_pylist()
    text = decode_table(batch, tok)
    # reference: the global-index gather of the same rows, per task
    for k, (task, row) in enumerate(items):
        task_name = ("rec", "comm_rank")[task]
        ref = HistoryGatherer(ds, 6, 6)(ds.samples(task_name, "train"), np.array([row]))
        h = batch.history
        lv = int(ref.v_mask.sum())
        assert [text[i] for i in h.v_video[k, :lv]] == [titles[i] for i in ref.v_video[0, :lv]]
        assert (h.v_video[k, lv:] == 0).all()
        assert [text[i] for i in h.v_comment[k, :lv]] == [comments[i] for i in ref.v_comment[0, :lv]]  # hottest
        lc = h.c_video.shape[1]
        assert [text[i] for i in h.c_video[k]] == [titles[i] for i in ref.c_video[0]] + [""] * (lc - ref.c_video.shape[1])
        mine = sorted(text[i] for i in h.c_comment[(h.c_slot // lc) == k])
        pairs = dict.fromkeys(zip(ref.c_slot.tolist(), ref.c_comment.tolist()))  # repeats merged
        assert mine == sorted(comments[c] for _, c in pairs)
        assert text[h.target[k]] == titles[ds.samples(task_name, "train").target[row]]
        s = ds.samples(task_name, "train")
        want = titles[s.target[row]] if task == 0 else comments[s.positives(row)[0]]
        assert text[batch.target_row[k]] == want
        # the LM response is the same text, followed by EOS
        resp = batch.labels[k][batch.labels[k] != -100]
        assert resp[-1] == tok.eos_token_id and tok.decode(resp[:-1]) == want
    assert batch.task.tolist() == items[:, 0].tolist()
    assert batch.has_comment_history.any() and (batch.history.v_comment > 0).any()
    moved = batch.to("cpu")
    assert torch.equal(moved.history.c_slot, batch.history.c_slot) and torch.equal(moved.labels, batch.labels)


def test_prompts_show_the_llm_view(world):
    ds, tok = world
    col = collator(world, aug=AugmentConfig(1.0, 1.0), seed=1)
    items = mixed_items(ds)
    rng = np.random.default_rng(0)
    views = col.views(items, rng)
    batch = col.encode(views, rng)
    comments = [""] + ds.comment_texts().to_pylist()
    for k in range(len(items)):
        cols = slice(0, batch.last_prompt_index[k] + 1)
        prompt = tok.decode(batch.input_ids[k, cols][batch.attention_mask[k, cols].bool()])
        for c in views.v_comment_llm[k][views.v_comment_llm[k] > 0]:
            assert comments[c] in prompt
        lc = views.history.c_video.shape[1]
        for c in views.c_comment_llm[views.c_slot_llm // lc == k]:
            assert comments[c] in prompt


def test_no_augmentation_at_prob_zero_gives_identical_views(world):
    ds, _ = world
    col = collator(world, aug=AugmentConfig(0.0, 0.0))
    v = col.views(mixed_items(ds), np.random.default_rng(0))
    assert np.array_equal(v.v_comment_llm, v.history.v_comment.numpy())
    llm = sorted(zip(v.c_slot_llm.tolist(), v.c_comment_llm.tolist()))
    sr = sorted(zip(v.history.c_slot.tolist(), v.history.c_comment.tolist()))
    assert llm == sr and len(llm) > 0


def test_augmentation_at_prob_one_gives_different_views(world):
    ds, _ = world
    col = collator(world, aug=AugmentConfig(1.0, 1.0), max_item_comments=3)
    v = col.views(mixed_items(ds), np.random.default_rng(0))
    ptr = np.asarray(ds.video_comment_ptr)
    v_video = v.history.v_video.numpy()
    n_comments = np.where(v_video > 0, ptr[v_video + 1] - ptr[v_video], 0)
    two = n_comments >= 2
    assert two.sum() > 3
    assert (v.v_comment_llm[two] != v.history.v_comment.numpy()[two]).all()
    # a video with a single comment keeps it in both views (over enough rows to hold such videos)
    many = col.views(align_items(ds, ["rec"])[:64], np.random.default_rng(1))
    m_video = many.history.v_video.numpy()
    one = (m_video > 0) & (np.where(m_video > 0, ptr[m_video + 1] - ptr[m_video], 0) == 1)
    assert one.any()
    assert (many.v_comment_llm[one] == many.history.v_comment.numpy()[one]).all()
    for view in (v.v_comment_llm, v.history.v_comment.numpy()):  # both come from the top 3
        for video, c in zip(v_video[v_video > 0], view[v_video > 0]):
            assert c == 0 or c in ds.comments_of(int(video))[:3]
    # comment history: each item's n kept comments + n others of the video are dealt n / n
    plain = collator(world, train=False, max_item_comments=3).views(mixed_items(ds), None)
    c_video = v.history.c_video.numpy().reshape(-1)
    changed = 0
    for s in np.unique(plain.history.c_slot.numpy()):
        user = set(plain.history.c_comment.numpy()[plain.history.c_slot.numpy() == s].tolist())
        llm = v.c_comment_llm[v.c_slot_llm == s].tolist()
        sr = v.history.c_comment.numpy()[v.history.c_slot.numpy() == s].tolist()
        assert len(llm) == len(sr) == len(user)
        others = [c for c in llm + sr if c not in user]
        assert len(others) >= len(user)  # the user's own n are at most n of the 2n
        popular = set(ds.comments_of(int(c_video[s]))[:10].tolist()) - user
        if popular:
            assert set(others) <= popular
        changed += sorted(llm) != sorted(sr)
    assert changed > 0


def test_seeded_and_deterministic(world):
    ds, _ = world
    items = mixed_items(ds)
    a = collator(world, aug=AugmentConfig(0.5, 0.5), seed=5)
    b = collator(world, aug=AugmentConfig(0.5, 0.5), seed=5)
    x, y = a(items), b(items)
    assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.item_ids, y.item_ids)
    e1, e2 = collator(world, train=False)(items), collator(world, train=False)(items)
    assert torch.equal(e1.input_ids, e2.input_ids) and torch.equal(e1.history.v_comment, e2.history.v_comment)
    c = collator(world, aug=AugmentConfig(0.5, 0.5), seed=5)
    c.set_epoch(1)
    runs = [c(items) for _ in range(3)]
    assert any(r.input_ids.shape != x.input_ids.shape or not torch.equal(r.input_ids, x.input_ids) for r in runs)


def _sample(batch, k: int, tok) -> tuple:
    """Everything sample ``k`` of ``batch`` shows the LLM and the SR, as text and positions."""
    table = decode_table(batch, tok)
    h, lc = batch.history, batch.history.c_video.shape[1]
    slots = h.c_slot.numpy()
    prompt = tok.decode(batch.input_ids[k][batch.attention_mask[k].bool()])
    videos = [(table[v], table[c]) for v, c in zip(h.v_video[k], h.v_comment[k]) if v > 0]
    comments = [(table[h.c_video[k, j]], sorted(table[c] for c in h.c_comment.numpy()[slots == k * lc + j]))
                for j in range(lc) if h.c_video[k, j] > 0]
    n_v, n_c = int(h.v_mask[k].sum()), int(h.c_mask[k].sum())
    return (prompt, videos, comments, table[batch.target_row[k]], h.v_position[k, :n_v].tolist(),
            h.c_position[k, :n_c].tolist())


def test_per_sample_draws_do_not_depend_on_the_rest_of_the_batch(world):
    """With SampleRandom every draw (hot comment, augmentation, kept comments, response, template,
    random positions) is the sample's own: 8 samples in one batch, in two batches of 4 or alone
    (other history widths) give the same prompts, SR inputs and positions; what 2 processes with
    micro-batch m then see is what 1 process with 2m sees."""
    ds, tok = world
    col = collator(world, aug=AugmentConfig(0.5, 0.5), max_item_comments=2, max_position=10)
    items = align_items(ds, ["rec", "comm_rank"])
    items = items[np.random.default_rng(0).permutation(len(items))[:8]]
    keys = [[1, 0, i] for i in range(8)]

    def batch(part: slice):
        return col.encode(col.views(items[part], SampleRandom(keys[part])), SampleRandom(keys[part]))

    full = batch(slice(0, 8))
    pos = full.history.v_position[full.history.v_mask]
    assert pos.min() >= 0 and pos.max() < 10 and full.history.c_position.shape == full.history.c_video.shape
    halves, singles = [batch(slice(i, i + 4)) for i in (0, 4)], [batch(slice(i, i + 1)) for i in range(8)]
    assert len({s.history.v_video.shape[1] for s in singles}) > 1  # the widths differ
    for k in range(8):
        want = _sample(full, k, tok)
        assert _sample(halves[k // 4], k % 4, tok) == want and _sample(singles[k], 0, tok) == want, k
    other = col.encode(col.views(items, SampleRandom([[2, 0, i] for i in range(8)])), None)
    assert any(_sample(other, k, tok)[4] != _sample(full, k, tok)[4] for k in range(8))  # the key matters
