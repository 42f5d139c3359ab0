import math

import pytest
import torch

from conftest import spawn_workers
import torch.distributed as dist
import torch.nn.functional as F

from lsvcr.losses.contrastive import (
    batch_info_nce,
    behaviour_contrast,
    gather_with_grad,
    info_nce,
    info_nce_sampled,
    multi_positive_ce,
    sample_other_indices,
    symmetric_info_nce,
)


def test_info_nce_hand_computed_and_scale_invariant():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = info_nce(torch.tensor([[3.0, 0.0]]), keys, torch.tensor([0]), temperature=0.5)
    # logits [1/0.5, 0] -> -log(e^2 / (e^2 + 1))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)
    loss = info_nce(torch.tensor([[3.0, 0.0]]), keys * 7, torch.tensor([1]), temperature=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(2)), abs=1e-6)


def test_info_nce_sampled_hand_computed():
    q = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[0.0, 2.0]])
    neg = torch.tensor([[[1.0, 0.0], [-5.0, 0.0]]])
    loss = info_nce_sampled(q, pos, neg, temperature=1.0)
    # logits [0, 1, -1], positive first
    assert loss.item() == pytest.approx(math.log(1 + math.e + math.exp(-1)), abs=1e-6)


def test_symmetric_info_nce_single_process():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    loss = symmetric_info_nce(a, b, temperature=1.0)
    a2b = math.log(2)  # both rows: logits tie
    b2a = (math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2
    assert loss.item() == pytest.approx((a2b + b2a) / 2, abs=1e-6)
    assert batch_info_nce(a, b, 1.0).item() == pytest.approx(a2b, abs=1e-6)


def test_behaviour_contrast_hand_computed():
    anchor = torch.tensor([[2.0, 0.0]])
    near, far = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    assert behaviour_contrast(anchor, near, far, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)
    assert behaviour_contrast(anchor, far, near, 0.5).item() == pytest.approx(math.log(1 + math.exp(2)), abs=1e-6)


def test_multi_positive_ce_hand_computed():
    logits = torch.tensor([[2.0, 1.0, 0.0, 5.0], [0.0, 0.0, 0.0, 0.0]])
    labels = torch.tensor([[True, True, False, False], [False, False, False, False]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    # row 0: positives 2 and 1 each against the single valid negative 0 (5.0 is padding);
    # row 1 has no positive and is left out
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert multi_positive_ce(logits, labels, mask).item() == pytest.approx(expected, abs=1e-6)


def test_multi_positive_ce_single_positive_is_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(4, 6)
    labels = torch.zeros(4, 6, dtype=torch.bool)
    labels[:, 0] = True
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 4:] = False
    expected = F.cross_entropy(logits.masked_fill(~mask, -1e9), torch.zeros(4, dtype=torch.long))
    assert multi_positive_ce(logits, labels, mask).item() == pytest.approx(expected.item(), abs=1e-5)


def test_sample_other_indices_never_self():
    g = torch.Generator().manual_seed(0)
    idx = sample_other_indices(50, 7, generator=g)
    assert idx.shape == (50, 7)
    assert (idx != torch.arange(50).unsqueeze(1)).all()
    assert ((idx >= 0) & (idx < 50)).all()
    # fewer others than asked for: every other index exactly once
    idx = sample_other_indices(4, 99)
    assert idx.shape == (4, 3)
    for i, row in enumerate(idx.tolist()):
        assert sorted(row) == [j for j in range(4) if j != i]
    assert sample_other_indices(1, 5).shape == (1, 0)


def test_gather_with_grad_is_identity_without_process_group():
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x


# ---------------------------------------------------------------- 2-process gloo check

SIZES = (3, 2)  # unequal shards on purpose


def _full_batch():
    g = torch.Generator().manual_seed(1)
    n = sum(SIZES)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randn(n, 4, generator=g, dtype=torch.float64)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        a, b = _full_batch()
        start = sum(SIZES[:rank])
        a = a[start : start + SIZES[rank]].clone().requires_grad_()
        b = b[start : start + SIZES[rank]].clone().requires_grad_()
        loss = symmetric_info_nce(a, b, temperature=0.1)
        loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        torch.save({"mean_loss": total / world, "a_grad": a.grad, "b_grad": b.grad}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_symmetric_info_nce_matches_single_process(tmp_path):
    world = len(SIZES)
    spawn_workers(_worker, (world, str(tmp_path / "init"), str(tmp_path)), world)

    a, b = _full_batch()
    a.requires_grad_()
    b.requires_grad_()
    single = symmetric_info_nce(a, b, temperature=0.1)
    single.backward()
    for rank in range(world):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        start = sum(SIZES[:rank])
        rows = slice(start, start + SIZES[rank])
        assert abs(out["mean_loss"].item() - single.item()) < 1e-6
        # DDP averages gradients over ranks, so each rank holds world x the global gradient
        assert (out["a_grad"] / world - a.grad[rows]).abs().max() < 1e-6
        assert (out["b_grad"] / world - b.grad[rows]).abs().max() < 1e-6


def test_loss_warmup_ramps_temperature_geometrically_and_contrast_linearly():
    from lsvcr.losses.warmup import LossWarmup

    w = LossWarmup(steps=4, temperature=0.07, contrast_weight=0.5, temperature_start=1.0, contrast_from_zero=True)
    temps, weights = zip(*(w.at(s) for s in range(7)))
    assert temps[0] == pytest.approx(1.0) and weights[0] == 0.0  # before the first step
    assert temps[2] == pytest.approx(math.sqrt(0.07)) and weights[2] == pytest.approx(0.25)  # half-way
    assert temps[4:] == pytest.approx((0.07,) * 3) and weights[4:] == pytest.approx((0.5,) * 3)  # then fixed
    ratios = [b / a for a, b in zip(temps[:4], temps[1:5])]
    assert ratios == pytest.approx([0.07 ** 0.25] * 4)  # equal ratios per step
    # either part alone leaves the other at its final value
    assert LossWarmup(4, 0.07, 0.5, temperature_start=1.0).at(1)[1] == 0.5
    assert LossWarmup(4, 0.07, 0.5, contrast_from_zero=True).at(1) == (0.07, 0.125)

    class Model:
        temperature, contrast_weight = 0.07, 0.5

    model = Model()
    w.apply(model, 1)
    ramp = (model.temperature, model.contrast_weight)
    assert ramp == w.at(1)
    with w.final(model):  # held-out evaluation and saving see the final values, then the ramp goes on
        assert (model.temperature, model.contrast_weight) == (0.07, 0.5)
    assert (model.temperature, model.contrast_weight) == ramp
    with pytest.raises(ValueError, match="at least one optimizer step"):
        LossWarmup(0, 0.07, 0.5, temperature_start=1.0)
    with pytest.raises(ValueError, match="temperature_start=0.0"):
        LossWarmup(3, 0.07, 0.5, temperature_start=0.0)
