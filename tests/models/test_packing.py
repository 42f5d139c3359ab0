"""Row packing of padded histories and the CPU dropout: exact round trips, the layout attention
relies on, and dropout's keep rate, scaling, gradient and seeding."""

from __future__ import annotations

import pytest
import torch

from lsvcr.models.sr.layers import Dropout, dropout, dropout_keep_mask
from lsvcr.models.sr.packing import Packing


def _mask(batch: int, length: int, seed: int) -> torch.Tensor:
    """Right-padded ``[B, L]`` mask with lengths 0..L (an empty history included)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, length + 1, (batch,), generator=g)
    lengths[0] = 0
    return torch.arange(length) < lengths[:, None]


@pytest.mark.parametrize("group_size", [None, 1, 3, 64])
def test_pack_unpack_round_trip_in_any_order_and_grouping(group_size):
    mask = _mask(7, 5, seed=1)
    x = torch.randn(7, 5, 4)
    order = torch.argsort(mask.sum(1), stable=True)
    pack = Packing.of(mask, order, group_size)
    rows = pack.pack(x)
    assert rows.shape == (int(mask.sum()), 4)  # padding is never stored
    assert torch.equal(pack.unpack(rows), x * mask[..., None])
    # rows run sample by sample in the given order, positions ascending; batch names each row's sample
    expected = torch.cat([x[b, mask[b]] for b in order.tolist()])
    assert torch.equal(rows, expected)
    assert torch.equal(pack.batch, torch.cat([torch.full((int(mask[b].sum()),), b) for b in order.tolist()]))
    # groups cover every sample once, in order, each as wide as its longest member
    assert torch.equal(torch.cat([g.samples for g in pack.grids]), order)
    for g in pack.grids:
        assert g.width == int(mask[g.samples].sum(1).max())


def test_unpacked_packing_is_the_identity_layout():
    x = torch.randn(3, 4, 2)
    pack = Packing(3, 4)
    assert torch.equal(pack.pack(x), x.reshape(12, 2)) and torch.equal(pack.unpack(pack.pack(x)), x)


@pytest.mark.parametrize("num_heads", [1, 2, 4])
def test_grid_heads_place_rows_at_their_positions_and_round_trip(num_heads):
    mask = _mask(9, 6, seed=2)
    order = torch.argsort(mask.sum(1), stable=True)
    pack = Packing.of(mask, order, group_size=4)
    d, dh = 8, 8 // num_heads
    rows = torch.randn(int(mask.sum()), d)
    dense = pack.unpack(rows)  # [B, L, d]
    for g in pack.grids:
        heads = g.heads(rows[g.rows], num_heads)
        assert heads.shape == (g.size * num_heads, g.width, dh)
        # the head grid is the dense [group, width] block, split into heads, zeros at padding
        block = dense[g.samples, : g.width].reshape(g.size, g.width, num_heads, dh).transpose(1, 2)
        assert torch.equal(heads, block.reshape(g.size * num_heads, g.width, dh))
        assert torch.equal(g.unheads(heads), rows[g.rows])
    like = pack.like(_mask(9, 3, seed=3))  # another stream in the same order and groups
    assert [g.samples.tolist() for g in like.grids] == [g.samples.tolist() for g in pack.grids]


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keep_rate_scaling_and_gradient(p):
    torch.manual_seed(0)
    n = 400_000
    keep = dropout_keep_mask((n,), p)
    assert keep.dtype == torch.bool
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(keep.float().mean().item() - (1 - p)) < 5 * sd  # 5 sigma: never a flaky failure
    x = torch.ones(n, requires_grad=True)
    y = dropout(x, p, training=True)
    kept = y != 0
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * sd
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(x * scale)/dx = scale, the same mask as forward


def test_dropout_is_seeded_and_off_in_eval():
    x = torch.randn(64, 32)
    torch.manual_seed(3)
    a = dropout(x, 0.3, training=True)
    torch.manual_seed(3)
    b = dropout(x, 0.3, training=True)
    assert torch.equal(a, b) and not torch.equal(a, x)
    layer = Dropout(0.3).eval()
    assert torch.equal(layer(x), x) and torch.equal(dropout(x, 0.0, training=True), x)
    # float masks equal the bool mask for the same draws
    torch.manual_seed(5)
    as_bool = dropout_keep_mask((10, 7), 0.4)
    torch.manual_seed(5)
    assert torch.equal(dropout_keep_mask((10, 7), 0.4, torch.float32), as_bool.float())
