"""Rows of a right-padded ``[B, L]`` grid: :class:`Packing` keeps only the stored positions as
rows, and :class:`Grid` lays one group of samples out again for the attention product.

Position-wise layers (projections, feed-forward, LayerNorm, dropout) work on the rows, so they
skip padding; attention sees one grid per group of similar-length samples, as wide as its
longest sample. Round trips are exact: ``unpack(pack(x))`` is ``x`` at stored positions and zero
elsewhere, and ``unheads(heads(rows))`` is ``rows``.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Grid:
    """One group of samples laid out for attention: ``size`` samples x ``width`` positions. Its
    rows are the slice ``rows`` of the packing's rows, at flat grid positions ``local``
    (``i * width + l`` for the group's i-th sample; None = every position, in order); ``samples``
    are the group's sample ids (None = all, in order)."""

    def __init__(self, rows: slice, samples: Tensor | None, size: int, width: int, local: Tensor | None):
        self.rows, self.samples, self.size, self.width, self.local = rows, samples, size, width, local
        self._head_index: dict[int, Tensor] = {}

    @property
    def num_rows(self) -> int:
        return self.rows.stop - self.rows.start

    def heads(self, rows: Tensor, num_heads: int) -> Tensor:
        """``[N_g, H * dh]`` -> ``[size * H, width, dh]`` (head-major, zeros where nothing is stored)."""
        n, d = rows.shape
        b, width, dh = self.size, self.width, d // num_heads
        if self.local is None:
            return rows.view(b, width, num_heads, dh).transpose(1, 2).reshape(b * num_heads, width, dh)
        out = rows.new_zeros(b * num_heads * width, dh)
        out.index_copy_(0, self._heads_index(num_heads), rows.reshape(n * num_heads, dh))
        return out.view(b * num_heads, width, dh)

    def unheads(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`heads`: ``[size * H, width, dh]`` -> ``[N_g, H * dh]``."""
        bh, width, dh = x.shape
        h = bh // max(self.size, 1)
        if self.local is None:
            return x.view(self.size, h, width, dh).transpose(1, 2).reshape(self.size * width, h * dh)
        return x.reshape(bh * width, dh).index_select(0, self._heads_index(h)).view(-1, h * dh)

    def _heads_index(self, num_heads: int) -> Tensor:
        """``[N_g * H]``: (row n, head j) -> flat position ``(i * H + j) * width + l`` of the head grid."""
        if num_heads not in self._head_index:
            i = torch.div(self.local, max(self.width, 1), rounding_mode="floor")
            pos = self.local - i * self.width
            heads = torch.arange(num_heads, device=self.local.device)
            idx = (i.unsqueeze(1) * num_heads + heads) * self.width + pos.unsqueeze(1)
            self._head_index[num_heads] = idx.reshape(-1)
        return self._head_index[num_heads]


class Packing:
    """The stored positions of a ``[B, L]`` grid as rows.

    ``index [N]`` holds the flat ``b * L + l`` of each row; rows run sample by sample in a given
    sample order, positions ascending within a sample (``index`` None: every position, natural
    order). The samples are cut into :class:`Grid` groups of consecutive samples in that order;
    attention lays each group out as its own grid, as wide as its longest sample, so ordering
    samples by length keeps the grids (and the quadratic attention work) small.
    """

    def __init__(self, size: int, length: int, index: Tensor | None = None, grids: list[Grid] | None = None,
                 device=None, order: Tensor | None = None, group_size: int | None = None):
        self.size, self.length, self.index = size, length, index
        self.order, self.group_size = order, group_size
        self.device = index.device if index is not None else device
        n = size * length if index is None else index.numel()
        self.grids = grids if grids is not None else [Grid(slice(0, n), None, size, length, None)]

    @classmethod
    def of(cls, mask: Tensor, order: Tensor | None = None, group_size: int | None = None) -> Packing:
        """The True positions of ``mask [B, L]``, samples in ``order [B]`` (default: natural),
        grouped ``group_size`` samples at a time (default: one group)."""
        b, length = mask.shape
        order = torch.arange(b, device=mask.device) if order is None else order
        m = mask.index_select(0, order)
        flat = m.reshape(-1).nonzero().squeeze(1)
        rank = torch.div(flat, max(length, 1), rounding_mode="floor")
        pos = flat - rank * length
        # per sample (in order): rows stored, and the grid width it needs (last stored position + 1)
        ends = torch.zeros(b + 1, dtype=torch.long, device=mask.device)
        torch.cumsum(m.sum(1), 0, out=ends[1:])
        widths = torch.where(m, torch.arange(1, length + 1, device=mask.device), 0).amax(1) if length else ends[1:] * 0
        ends, widths = ends.tolist(), widths.tolist()  # one host transfer for every group's bounds
        step = max(group_size or b, 1)
        grids = []
        for s0 in range(0, max(b, 1), step):
            s1 = min(s0 + step, b)
            r0, r1, width = ends[s0], ends[s1], max(widths[s0:s1], default=0)
            local = (rank[r0:r1] - s0) * width + pos[r0:r1]
            grids.append(Grid(slice(r0, r1), order[s0:s1], s1 - s0, width, local))
        return cls(b, length, order[rank] * length + pos, grids, order=order, group_size=group_size)

    def like(self, mask: Tensor) -> Packing:
        """The True positions of another ``mask [B, L']`` in this packing's sample order and groups
        (so attention can pair the two packings group by group)."""
        return Packing.of(mask, self.order, self.group_size)

    @property
    def batch(self) -> Tensor:
        """``[N]`` the sample of each row."""
        if self.index is None:
            return torch.arange(self.size, device=self.device).repeat_interleave(self.length)
        return torch.div(self.index, max(self.length, 1), rounding_mode="floor")

    def pack(self, x: Tensor) -> Tensor:
        """``[B, L, ...]`` -> the stored rows ``[N, ...]``."""
        flat = x.reshape(self.size * self.length, *x.shape[2:])
        return flat if self.index is None else flat.index_select(0, self.index)

    def unpack(self, rows: Tensor) -> Tensor:
        """``[N, ...]`` -> ``[B, L, ...]``, zeros where nothing is stored."""
        shape = (self.size, self.length, *rows.shape[1:])
        if self.index is None:
            return rows.reshape(shape)
        out = rows.new_zeros(self.size * self.length, *rows.shape[1:])
        return out.index_copy_(0, self.index, rows).view(shape)
