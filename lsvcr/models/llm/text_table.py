"""A table of the current LLM's pooled text states, refreshed every N optimizer steps (``align.text_table_refresh``).

In the paper's alignment step every text of a batch (history titles and comments, the target) runs
through the LoRA LLM *with gradients*, so the SR's losses reach the LoRA weights through the item
texts. That pass holds most of a step's tokens (a 50-item history brings ~100 texts per sample
against one prompt) and, without gradient checkpointing, most of its activation memory.

:class:`PooledTextTable` is the cheaper alternative: the SR reads each text's mean-pooled LLM state
from a table filled *without gradients* (eval mode: no dropout) the first time a batch of the
current window needs the text, and emptied when the window of ``refresh`` optimizer steps ends; so
no row is older than ``refresh - 1`` steps, a text is encoded at most once per window, at half the
FLOPs of a pass with gradients and with no activations kept. ``llm_emb_mlp`` still trains on the
rows; the LoRA weights then learn from the prompt side alone (LM loss and the LLM side of the
contrast). With ``refresh=1`` each step's rows are the current LLM's: the losses equal the paper's
step (dropout off), only the LoRA gradient through the texts is gone.

Under data parallelism every process exchanges the rows it computed in a micro-step
(:meth:`PooledTextTable.exchange`), so all processes hold the same table, and a text's row is
computed at the first step the *global* batch needs it: N processes give the same rows as one
process with N times the micro-batch. The table is part of an alignment checkpoint (:meth:`save`,
:meth:`load`), so a resumed run reads the rows the uninterrupted run had.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

TABLE_FILE = "text_table.safetensors"


class PooledTextTable:
    """Pooled LLM states ``[hidden]`` (float32, on the CPU) by global text key, per window of ``refresh`` steps.

    Args:
        refresh: window length in optimizer steps (>= 1); the table empties when a step of a new
            window begins (:meth:`at_step`).
    """

    def __init__(self, refresh: int):
        if isinstance(refresh, bool) or not isinstance(refresh, int) or refresh < 1:
            raise ValueError(f"refresh={refresh!r}: expected a number of optimizer steps >= 1")
        self.refresh = refresh
        self.window = 0
        self.rows: dict[int, torch.Tensor] = {}
        self.computed = 0  # rows computed since the start (every process's, after the exchange)

    def __len__(self) -> int:
        return len(self.rows)

    def at_step(self, step: int) -> None:
        """Call before each micro-batch of optimizer step ``step`` (0-based): a new window empties the table."""
        window = int(step) // self.refresh
        if window != self.window:
            self.rows.clear()
            self.window = window

    def missing(self, keys: torch.Tensor) -> torch.Tensor:
        """Positions in ``keys [N]`` whose text has no row yet, ``[M]`` int64 (on ``keys``' device)."""
        have = self.rows
        return torch.tensor([i for i, k in enumerate(keys.tolist()) if k not in have], dtype=torch.long,
                            device=keys.device)

    def add(self, keys: torch.Tensor, pooled: torch.Tensor) -> None:
        """Store ``pooled [M, hidden]`` under ``keys [M]``; a key already present keeps its row."""
        for k, row in zip(keys.tolist(), pooled.detach().float().cpu()):
            if k not in self.rows:
                self.rows[k] = row
                self.computed += 1

    def lookup(self, keys: torch.Tensor, device) -> torch.Tensor:
        """``[N, hidden]`` rows of ``keys [N]`` (all present) on ``device``."""
        return torch.stack([self.rows[k] for k in keys.tolist()]).to(device)

    @staticmethod
    def exchange(keys: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every process's new ``keys [M]`` and rows ``[M, hidden]``, concatenated in rank order (each
        process calls it once per micro-step, with ``M = 0`` when it computed nothing; one process:
        returned as they are)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return keys, pooled
        world = dist.get_world_size()
        count = torch.tensor([keys.numel()], dtype=torch.long, device=pooled.device)
        counts = [torch.zeros_like(count) for _ in range(world)]
        dist.all_gather(counts, count)
        counts = [int(c) for c in counts]
        width = max(counts)
        if width == 0:
            return keys, pooled
        pad = width - keys.numel()
        k = torch.cat([keys.to(pooled.device), keys.new_zeros(pad, device=pooled.device)])
        p = torch.cat([pooled, pooled.new_zeros(pad, pooled.shape[1])])
        all_k = [torch.empty_like(k) for _ in range(world)]
        all_p = [torch.empty_like(p) for _ in range(world)]
        dist.all_gather(all_k, k)
        dist.all_gather(all_p, p)
        return (torch.cat([x[:n] for x, n in zip(all_k, counts)]),
                torch.cat([x[:n] for x, n in zip(all_p, counts)]))

    def save(self, out_dir: str | Path) -> Path:
        """The window and its rows into ``out_dir/text_table.safetensors``."""
        keys = sorted(self.rows)
        rows = torch.stack([self.rows[k] for k in keys]) if keys else torch.zeros(0, 0)
        path = Path(out_dir) / TABLE_FILE
        save_file({"keys": torch.tensor(keys, dtype=torch.long), "rows": rows.contiguous(),
                   "window": torch.tensor([self.window, self.refresh, self.computed], dtype=torch.long)}, str(path))
        return path

    def load(self, out_dir: str | Path) -> None:
        """The table a checkpoint saved; refuses one written with another ``refresh``."""
        path = Path(out_dir) / TABLE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the checkpoint has no text table (it was written without "
                                    "align.text_table_refresh)")
        saved = load_file(str(path))
        window, refresh, computed = (int(x) for x in saved["window"])
        if refresh != self.refresh:
            raise ValueError(f"{path}: written with align.text_table_refresh={refresh}, this run has {self.refresh}")
        self.window, self.computed = window, computed
        self.rows = {int(k): r.clone() for k, r in zip(saved["keys"].tolist(), saved["rows"])}
