import math

import pytest
import torch

from lsvcr.data.batch import HistoryBatch
from lsvcr.errors import ConfigError
from lsvcr.losses.recommend import rec_loss_full, rec_loss_sampled
from lsvcr.models.sr.inputs import lookup_inputs
from lsvcr.models.sr.sasrec import SASRec
from lsvcr.tasks import task_named

V, D = 10, 8


def make_model(**kw) -> SASRec:
    torch.manual_seed(0)
    args = dict(hidden_size=D, num_heads=2, inner_size=16, max_position=6)
    args.update(kw)
    return SASRec(V, **args).eval()


def history(v_video: list[list[int]], target: list[int]) -> HistoryBatch:
    v = torch.tensor(v_video)
    b = v.shape[0]
    return HistoryBatch(
        v_video=v,
        v_comment=torch.zeros_like(v),
        c_video=torch.zeros(b, 1, dtype=torch.long),
        c_comment=torch.zeros(0, dtype=torch.long),
        c_slot=torch.zeros(0, dtype=torch.long),
        target=torch.tensor(target),
    )


def test_defaults_and_shapes():
    model = SASRec(V)
    assert model.dropout.p == 0.2 and model.encoder.layers[0].attention.attn_dropout.p == 0.2
    assert len(model.encoder.layers) == 2 and model.item_embedding.embedding_dim == 64
    model = make_model()
    inp = lookup_inputs(history([[1, 2, 3], [4, 0, 0]], [5, 6]), None, None)
    assert inp.v_title is None
    assert model.video_user(inp).shape == (2, D)
    assert model.video_table_repr() is model.item_embedding.weight
    assert torch.equal(model.video_repr(torch.tensor([2])), model.item_embedding.weight[[2]])


def test_reads_the_last_real_position_and_ignores_padding():
    model = make_model()
    short = model.video_user(lookup_inputs(history([[1, 2, 0, 0]], [5]), None, None))
    # the state at position 1 of the longer sequence equals the short one's read-out (causal)
    longer = model.video_user(lookup_inputs(history([[1, 2, 0, 0, 0, 0]], [5]), None, None))
    assert torch.allclose(short, longer, atol=1e-6)
    extended = model.video_user(lookup_inputs(history([[1, 2, 3, 0]], [5]), None, None))
    assert not torch.allclose(short, extended, atol=1e-4)


def test_empty_history_has_no_nan():
    model = make_model().train()
    user = model.video_user(lookup_inputs(history([[0, 0], [1, 0]], [2, 3]), None, None))
    loss = rec_loss_full(model, user, model.video_table_repr(), torch.tensor([2, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_comment_ranking_is_refused():
    model = make_model()
    with pytest.raises(ConfigError, match="task=rec"):
        task_named("comm_rank").check_sr(model, "sasrec")
    with pytest.raises(ValueError, match="task=rec"):
        model.comment_repr(torch.zeros(1, 3, D))
    assert not model.has_id_text  # so FinetuneLoss leaves the ID-text term out


def test_losses_use_raw_dot_products():
    model = make_model()
    user = torch.tensor([[2.0, 0.0]])
    table = torch.tensor([[5.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # pad row would win if not masked
    # logits [pad, 2, 0], target 2
    assert rec_loss_full(model, user, table, torch.tensor([2])).item() == pytest.approx(math.log(1 + math.exp(2)), abs=1e-5)
    loss = rec_loss_sampled(model, user, torch.tensor([[1.0, 0.0]]), torch.tensor([[[0.0, 1.0]]]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-5)  # [2, 0]


def test_training_learns_a_planted_successor_rule():
    # the next video is last % V + 1
    torch.manual_seed(0)
    last = torch.arange(1, V + 1)
    batch = history(torch.stack([torch.randint(1, V + 1, (V,)), last], dim=1).tolist(), (last % V + 1).tolist())
    inp = lookup_inputs(batch, None, None)
    model = make_model(dropout=0.0, attn_dropout=0.0).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)

    def loss_fn():
        return rec_loss_full(model, model.video_user(inp), model.video_table_repr(), batch.target)

    first = loss_fn().item()
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first, (first, loss.item())
    model.eval()
    logits = model.scores(model.video_user(inp), model.video_table_repr())
    assert (logits[:, 1:].argmax(-1) + 1 == batch.target).float().mean() > 0.8
