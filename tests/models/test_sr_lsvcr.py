import math
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lsvcr.data.batch import HistoryBatch, sorted_random_positions
from lsvcr.errors import ConfigError
from lsvcr.losses.recommend import comm_rank_loss, id_text_loss, rec_loss_full, rec_loss_sampled
from lsvcr.models.sr.inputs import SRInputs, lookup_inputs
from lsvcr.models.sr.layers import TransformerEncoder
from lsvcr.models.sr.lsvcr import LSVCR
from lsvcr.tasks import task_named

V, C, E, D = 12, 30, 8, 8


def tables(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(V + 1, E, generator=g)
    comment = torch.randn(C + 1, E, generator=g)
    video[0] = 0
    comment[0] = 0
    return video, comment


def make_batch() -> HistoryBatch:
    # sample 0: 3 videos, 2 comment-history videos (slot 0: comments 4, 5; slot 1: comment 6)
    # sample 1: 1 video, no comment history at all
    return HistoryBatch(
        v_video=torch.tensor([[1, 2, 3], [4, 0, 0]]),
        v_comment=torch.tensor([[1, 2, 0], [3, 0, 0]]),
        c_video=torch.tensor([[5, 6], [0, 0]]),
        c_comment=torch.tensor([4, 5, 6]),
        c_slot=torch.tensor([0, 0, 1]),
        target=torch.tensor([7, 8]),
    )


def make_model(**kw) -> LSVCR:
    torch.manual_seed(0)
    args = dict(llm_emb_size=E, hidden_size=D, num_heads=2, inner_size=16, max_position=10)
    args.update(kw)
    return LSVCR(V, **args).eval()


@pytest.fixture
def inputs() -> SRInputs:
    return lookup_inputs(make_batch(), *tables())


def all_outputs(model: LSVCR, inp: SRInputs) -> list[torch.Tensor]:
    r = model.readouts(inp)
    outs = [model.video_user(inp), model.comment_user(inp), r.video_pool, r.video_query]
    return outs + [x for x in (r.comment_pool, r.comment_query) if x is not None]


def test_lookup_inputs_gathers_and_averages_comments():
    video, comment = tables()
    batch = make_batch()
    # a padding entry (comment 0) in slot 2 must not count
    batch = replace(batch, c_comment=torch.tensor([4, 5, 6, 0]), c_slot=torch.tensor([0, 0, 1, 2]))
    inp = lookup_inputs(batch, video, comment)
    assert inp.v_title.shape == (2, 3, E) and inp.c_comment.shape == (2, 2, E)
    assert torch.equal(inp.v_title[0, 1], video[2])
    assert torch.equal(inp.v_comment[1, 0], comment[3])
    assert torch.allclose(inp.c_comment[0, 0], (comment[4] + comment[5]) / 2)
    assert torch.allclose(inp.c_comment[0, 1], comment[6])
    assert torch.equal(inp.c_comment[1], torch.zeros(2, E))
    assert torch.equal(inp.target_title[1], video[8])
    assert inp.c_mask.tolist() == [[True, True], [False, False]]


def test_lookup_inputs_projects_each_comment_before_the_mean():
    wide_video, wide_comment = torch.randn(V + 1, 2 * E), torch.randn(C + 1, 2 * E)
    proj = nn.Sequential(nn.Linear(2 * E, E), nn.ReLU())
    inp = lookup_inputs(make_batch(), wide_video, wide_comment, projection=proj)
    assert inp.v_title.shape == (2, 3, E)
    expected = (proj(wide_comment[4]) + proj(wide_comment[5])) / 2
    assert torch.allclose(inp.c_comment[0, 0], expected)


def test_forward_shapes_and_norms(inputs):
    model = make_model()
    for u in (model.video_user(inputs), model.comment_user(inputs)):
        assert u.shape == (2, D)
        assert torch.allclose(u.norm(dim=-1), torch.ones(2), atol=1e-5)
    r = model.readouts(inputs)
    for x in (r.video_pool, r.video_query, r.comment_pool, r.comment_query):
        assert x.shape == (2, D)
    assert model.video_table_repr(tables()[0]).shape == (V + 1, D)
    assert model.tasks == ("rec", "comm_rank")
    with pytest.raises(ConfigError, match="cannot do task=comm_rank"):  # an LSVCR without text: rec only
        task_named("comm_rank").check_sr(make_model(use_ids=True, use_text=False), "lsvcr")


def test_gate_init_one_and_candidate_formulas(inputs):
    model = make_model()
    assert model.gate.item() == 1.0
    with torch.no_grad():
        model.gate.fill_(2.0)
    ids, title = torch.tensor([3, 5]), torch.randn(2, E)
    expected = F.normalize(2.0 * model.id_embedding(ids) + model.adapter(title), dim=-1)
    assert torch.allclose(model.video_repr(ids, title), expected)
    assert torch.allclose(model.comment_repr(title), F.normalize(model.adapter(title), dim=-1))
    no_ids = make_model(use_ids=False)
    assert not hasattr(no_ids, "id_embedding")
    assert torch.allclose(no_ids.video_repr(None, title), F.normalize(no_ids.adapter(title), dim=-1))


def test_padding_never_leaks(inputs):
    model = make_model()
    ref = all_outputs(model, inputs)
    # new values at padded positions
    noisy = replace(
        inputs,
        v_title=torch.where(inputs.v_mask[..., None], inputs.v_title, torch.randn_like(inputs.v_title)),
        v_comment=torch.where(inputs.v_mask[..., None], inputs.v_comment, torch.randn_like(inputs.v_comment)),
        c_title=torch.where(inputs.c_mask[..., None], inputs.c_title, torch.randn_like(inputs.c_title)),
        c_comment=torch.where(inputs.c_mask[..., None], inputs.c_comment, torch.randn_like(inputs.c_comment)),
    )
    for a, b in zip(ref, all_outputs(model, noisy)):
        assert torch.allclose(a, b, atol=1e-6)

    # extra padding columns (with garbage embeddings) on both streams
    def pad(x, n, fill=None):
        extra = torch.randn(x.shape[0], n, *x.shape[2:]) if fill is None else torch.full((x.shape[0], n), fill)
        return torch.cat([x, extra.to(x.dtype)], dim=1)

    longer = replace(
        inputs,
        v_title=pad(inputs.v_title, 2), v_comment=pad(inputs.v_comment, 2),
        v_ids=pad(inputs.v_ids, 2, 0), v_mask=pad(inputs.v_mask, 2, False),
        c_title=pad(inputs.c_title, 3), c_comment=pad(inputs.c_comment, 3),
        c_ids=pad(inputs.c_ids, 3, 0), c_mask=pad(inputs.c_mask, 3, False),
    )
    for a, b in zip(ref, all_outputs(model, longer)):
        assert torch.allclose(a, b, atol=1e-5)


def test_encoder_is_causal():
    torch.manual_seed(0)
    enc = TransformerEncoder(2, D, 2, 16, 0.0, 0.0, 1e-8).eval()
    x = torch.randn(2, 5, D)
    mask = torch.ones(2, 5, dtype=torch.bool)
    changed = x.clone()
    changed[:, 3] = torch.randn(2, D)
    a, b = enc(x, mask, causal=True), enc(changed, mask, causal=True)
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6)
    assert not torch.allclose(a[:, 3], b[:, 3], atol=1e-3)
    # without the causal mask the change reaches earlier positions
    assert not torch.allclose(enc(x, mask)[:, :3], enc(changed, mask)[:, :3], atol=1e-3)


@pytest.mark.parametrize("lc", [2, 0])
def test_empty_comment_history_has_no_nan(lc):
    video, comment = tables()
    batch = HistoryBatch(
        v_video=torch.tensor([[1, 2], [3, 0]]),
        v_comment=torch.tensor([[1, 0], [2, 0]]),
        c_video=torch.zeros(2, lc, dtype=torch.long),
        c_comment=torch.zeros(0, dtype=torch.long),
        c_slot=torch.zeros(0, dtype=torch.long),
        target=torch.tensor([4, 5]),
    )
    model = make_model().train()
    inp = lookup_inputs(batch, video, comment)
    r = model.readouts(inp)
    loss = sum(x.sum() for x in (r.video_pool, r.video_query, r.comment_pool, r.comment_query))
    loss = loss + model.comment_user(inp).sum() + model.video_user(inp).sum()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_random_positions_sorted_and_in_range():
    model = make_model(use_ids=False, random_positions=True, max_position=20).train()
    torch.manual_seed(1)
    pos = model._positions(torch.ones(64, 6, dtype=torch.bool))
    assert pos.shape == (64, 6)
    assert (pos[:, 1:] > pos[:, :-1]).all()
    assert pos.min() >= 0 and pos.max() < 20
    assert len({tuple(r) for r in pos.tolist()}) > 1  # drawn per sample
    with pytest.raises(ValueError, match="max_position"):
        model._positions(torch.ones(1, 21, dtype=torch.bool))


def test_positions_align_to_start_or_end():
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    start = make_model(position_align="start", max_position=6).eval()
    assert start._positions(mask).tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    end = make_model(position_align="end", max_position=6).eval()
    # the most recent real item always sits at max_position - 1
    assert end._positions(mask)[:, :3].tolist() == [[3, 4, 5], [5, 5, 5]][:1] + [[5, 5, 5]]
    assert end._positions(mask)[0, :3].tolist() == [3, 4, 5] and end._positions(mask)[1, 0].item() == 5


def test_without_comment_history(inputs):
    model = make_model(use_comment_history=False)
    assert not hasattr(model, "comment_encoder") and not hasattr(model, "video_mix")
    r = model.readouts(inputs)
    assert r.comment_pool is None and r.comment_query is None
    assert torch.allclose(model.comment_user(inputs), F.normalize(r.video_query, dim=-1))
    # the comment history is ignored entirely
    other = replace(inputs, c_title=torch.randn_like(inputs.c_title))
    assert torch.allclose(model.video_user(other), model.video_user(inputs))


def test_without_text_reads_only_ids():
    model = make_model(use_text=False)
    assert not model.use_text and not hasattr(model, "adapter")
    ids_only = lookup_inputs(make_batch(), None, None)  # no tables, as the Recommender passes them
    with_text = lookup_inputs(make_batch(), *tables())
    user = model.video_user(ids_only)
    assert user.shape == (2, D) and torch.isfinite(user).all()
    assert torch.equal(user, model.video_user(with_text))  # any text is ignored
    # other history videos change the representation: it does read the ids
    other = replace(ids_only, v_ids=torch.where(ids_only.v_mask, 11 - ids_only.v_ids, 0))
    assert not torch.allclose(model.video_user(other), user)
    table = model.video_table_repr(None)
    assert torch.allclose(table, F.normalize(model.id_embedding.weight, dim=-1))
    with pytest.raises(ValueError, match="cannot rank comments"):
        model.comment_repr(torch.randn(2, E))
    with pytest.raises(ValueError, match="use_ids or use_text"):
        make_model(use_text=False, use_ids=False)


def test_rec_and_comm_losses_hand_computed():
    model = make_model(temperature=0.5)
    user = torch.tensor([[1.0, 0.0]])
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # row 0 (pad) would win if not masked
    loss = rec_loss_full(model, user, table, torch.tensor([1]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(2)), abs=1e-5)  # logits [pad, 0, 2]
    loss = rec_loss_sampled(model, user, torch.tensor([[1.0, 0.0]]), torch.tensor([[[0.0, 1.0], [-1.0, 0.0]]]))
    assert loss.item() == pytest.approx(math.log(1 + 1 / math.e**2 + 1 / math.e**4), abs=1e-5)  # [2, 0, -2]
    cands = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]])
    labels = torch.tensor([[True, False, False]])
    mask = torch.tensor([[True, True, False]])
    expected = math.log(1 + math.exp(2))  # [0, 2], third candidate padded
    assert comm_rank_loss(model, user, cands, labels, mask).item() == pytest.approx(expected, abs=1e-5)
    assert comm_rank_loss(model, user, cands, None, mask).item() == pytest.approx(expected, abs=1e-5)


def test_id_text_loss_dedups_and_uses_other_videos(inputs):
    model = make_model(temperature=1.0)
    # two unique videos (1 and 2), repeated across both streams -> one negative each, the other
    inp = replace(
        inputs,
        v_ids=torch.tensor([[1, 2, 1], [2, 0, 0]]),
        c_ids=torch.tensor([[2, 1], [0, 0]]),
    )
    video = tables()[0]
    inp = replace(
        inp,
        v_title=video[inp.v_ids],
        c_title=video[inp.c_ids],
    )
    ids = F.normalize(model.id_embedding(torch.tensor([1, 2])), dim=-1)
    txt = F.normalize(model.adapter(video[[1, 2]]), dim=-1)

    def one_way(q, k):
        pos, neg = (q * k).sum(-1), (q * k.flip(0)).sum(-1)
        return F.softplus(neg - pos).mean()

    expected = (one_way(ids, txt) + one_way(txt, ids)) / 2
    assert id_text_loss(model, inp).item() == pytest.approx(expected.item(), abs=1e-6)
    with pytest.raises(ValueError, match="ID embeddings"):
        id_text_loss(make_model(use_ids=False), inp)


def test_load_aligned_resizes_positions_and_adds_ids():
    aligned = make_model(use_ids=False, max_position=4)
    fine = make_model(use_ids=True, max_position=6)
    fine.load_aligned(aligned.state_dict())
    old = aligned.v_position.weight
    assert torch.equal(fine.v_position.weight[:4], old)
    assert torch.allclose(fine.v_position.weight[4:], old.mean(0).expand(2, -1))
    assert torch.equal(fine.adapter.weight, aligned.adapter.weight)
    bad = dict(aligned.state_dict())
    del bad["merge.weight"]
    with pytest.raises(ValueError, match="merge.weight"):
        fine.load_aligned(bad)


def test_training_reduces_loss_on_planted_problem():
    # the next video is determined by the last history video: v -> v % V + 1
    torch.manual_seed(0)
    video, comment = tables()
    last = torch.arange(1, V + 1)
    batch = HistoryBatch(
        v_video=torch.stack([torch.randint(1, V + 1, (V,)), last], dim=1),
        v_comment=torch.randint(1, C + 1, (V, 2)),
        c_video=torch.randint(0, V + 1, (V, 2)),
        c_comment=torch.randint(1, C + 1, (V,)),
        c_slot=torch.arange(V) * 2,
        target=last % V + 1,
    )
    inp = lookup_inputs(batch, video, comment)
    model = make_model(dropout=0.0, attn_dropout=0.0).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_fn():
        user = model.video_user(inp)
        return rec_loss_full(model, user, model.video_table_repr(video), batch.target) + 0.1 * id_text_loss(model, inp)

    first = loss_fn().item()
    for _ in range(25):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first, (first, loss.item())


def test_random_positions_of_a_sample_do_not_depend_on_the_batch_width():
    mask = torch.tensor([[True, True, False], [True, True, True]])
    noise = torch.rand(2, 10)
    pos = sorted_random_positions(noise, mask)
    assert (pos[:, 1] > pos[:, 0]).all() and pos[1, 2] > pos[1, 1] and pos[0, 2] == 0  # padding: 0
    wider = sorted_random_positions(noise, torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], dim=1))
    assert torch.equal(wider[:, :3], pos) and (wider[:, 3:] == 0).all()
    # the alignment's collator draws them per sample; the SR then uses the batch's
    model = make_model(use_ids=False, random_positions=True, max_position=10).train()
    assert torch.equal(model._positions(mask, pos), pos)
