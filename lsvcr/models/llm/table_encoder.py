"""Encoding text tables (DESIGN section 5): every title and comment through the text encoder once.

Texts are encoded in batches after sorting by token length (longest first, so an out-of-memory
batch shows up at once), which keeps padding small; rows are written back at their own index into
a table of :mod:`lsvcr.data.table_files`' format. A NaN or Inf embedding raises
:class:`~lsvcr.errors.DataError` naming the item; it is never zeroed (the official code's
``nan_to_num`` hid such rows).

Several processes split the work with ``shard=(rank, world)``: the length-sorted batches are dealt
round-robin (rank r encodes batches ``r, r + world, ...``, so every rank gets a similar mix of
lengths and each batch is exactly the single-process one) into a partial file, which
:func:`lsvcr.data.table_files.merge_shards` assembles.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn
from tqdm.auto import tqdm

from lsvcr.data.table_files import incomplete_path, shard_paths
from lsvcr.data.tokens import encode_texts, tokenize_texts
from lsvcr.errors import ConfigError, DataError


class _Texts:
    """Uniform access to a ``pyarrow`` string array or a Python sequence of texts (``None`` allowed)."""

    def __init__(self, texts: pa.Array | pa.ChunkedArray | Sequence[str | None]):
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        self.arrow = isinstance(texts, pa.Array)
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def slice(self, start: int, stop: int) -> list[str | None]:
        if self.arrow:
            return self.texts.slice(start, stop - start).to_pylist()
        return list(self.texts[start:stop])

    def take(self, idx: np.ndarray) -> list[str | None]:
        if self.arrow:
            return self.texts.take(pa.array(idx, type=pa.int64())).to_pylist()
        return [self.texts[i] for i in idx]


def token_lengths(tokenizer, texts: _Texts, max_length: int, chunk: int = 8192) -> np.ndarray:
    """Token count of every text after truncation, ``int32 [N]`` (tokenised ``chunk`` texts at a time)."""
    out = np.empty(len(texts), dtype=np.int32)
    for start in range(0, len(texts), chunk):
        stop = min(start + chunk, len(texts))
        out[start:stop] = [len(row) for row in tokenize_texts(tokenizer, texts.slice(start, stop), max_length)]
    return out


def _check_args(shard: tuple[int, int], dtype) -> tuple[int, int, np.dtype]:
    rank, world = int(shard[0]), int(shard[1])
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"embedding shard {shard}: need world >= 1 and 0 <= rank < world")
    np_dtype = np.dtype(dtype)
    if np_dtype not in (np.float32, np.float16):
        raise ConfigError(f"embedding dtype {np_dtype}: only float32 and float16 tables are supported")
    return rank, world, np_dtype


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _check_finite(rows: np.ndarray, items: np.ndarray, texts: list[str | None], desc: str, what: str) -> None:
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    if len(bad):
        j = int(bad[0])
        prefix = (texts[j] or "")[:40]
        raise DataError(
            f"{desc}: item {int(items[j]) + 1} has a non-finite {what} (NaN or Inf, {rows.dtype}); "
            f"text starts {prefix!r} ({len(bad)} such item(s) in its batch)"
        )


def encode_table(
    encoder: nn.Module,
    tokenizer,
    texts: pa.Array | pa.ChunkedArray | Sequence[str | None],
    out_path: Path,
    *,
    batch_size: int = 64,
    max_length: int = 64,
    dtype=np.float32,
    desc: str = "texts",
    shard: tuple[int, int] = (0, 1),
    hidden_path: Path | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Encode every text into a table at ``out_path`` (and the raw pooled states at ``hidden_path``).

    Args:
        encoder: an :class:`~lsvcr.models.llm.text_encoder.LLMTextEncoder` (``out_dim``, ``hidden_size``,
            ``forward(input_ids, attention_mask, return_hidden=True)``); used in eval mode.
        texts: text ``i`` becomes row ``i+1``; ``None``/empty texts are encoded as the EOS token.
        shard: ``(rank, world)``; with ``world > 1`` only this rank's rows are written, to
            :func:`~lsvcr.data.table_files.shard_paths`, and :func:`~lsvcr.data.table_files.merge_shards`
            assembles the table.

    Returns:
        The written table, memory-mapped read-only: ``[N+1, out_dim]``, or ``[n_rank, out_dim]`` for a shard.

    Raises:
        DataError: an item's embedding is NaN or Inf (message names its 1-based index and text).
    """
    rank, world, np_dtype = _check_args(shard, dtype)
    src = _Texts(texts)
    order = np.argsort(-token_lengths(tokenizer, src, max_length), kind="stable")
    # Whole batches go round-robin to the ranks: every batch, hence every row, is bit-identical
    # to the single-process run, and each rank still gets a similar mix of lengths.
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)][rank::world]
    mine = np.concatenate(batches) if batches else np.zeros(0, np.int64)
    outputs = [(Path(out_path), encoder.out_dim, "embedding")]
    if hidden_path is not None:
        outputs.append((Path(hidden_path), encoder.hidden_size, "pooled LLM state"))
    finals = [p if world == 1 else shard_paths(p, rank, world)[0] for p, _, _ in outputs]
    n_rows = len(src) + 1 if world == 1 else len(mine)
    for path in finals:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmps = [incomplete_path(p) for p in finals]
    tables = [
        (np.lib.format.open_memmap(t, "w+", np_dtype, (n_rows, dim)), what)
        for t, (_, dim, what) in zip(tmps, outputs)
    ]
    try:
        _encode_into(encoder, tokenizer, src, batches, tables, world == 1, max_length, desc, progress)
    except BaseException:
        tables.clear()
        for t in tmps:
            t.unlink(missing_ok=True)
        raise
    for table, _ in tables:
        table.flush()
    tables.clear()
    for t, path in zip(tmps, finals):
        os.replace(t, path)
    if world > 1:
        for path, _, _ in outputs:
            np.save(shard_paths(path, rank, world)[1], mine.astype(np.int64))
    return np.load(finals[0], mmap_mode="r")


def _encode_into(
    encoder: nn.Module,
    tokenizer,
    src: _Texts,
    batches: list[np.ndarray],
    tables: list[tuple[np.ndarray, str]],
    full: bool,
    max_length: int,
    desc: str,
    progress: bool,
) -> None:
    """Encode ``batches`` (arrays of text indices) into ``tables``: the full table, or a shard in batch order.

    ``tables`` pairs each output file with what it holds: the embedding, then optionally the pooled state.
    """
    device = next(encoder.parameters()).device
    if full:
        for table, _ in tables:
            table[0] = 0
    bar = tqdm(total=sum(len(b) for b in batches), desc=desc, unit="text", disable=not progress)
    with _eval_mode(encoder), torch.inference_mode(), bar:
        start = 0
        for idx in batches:
            batch_texts = src.take(idx)
            batch = {k: v.to(device) for k, v in encode_texts(tokenizer, batch_texts, max_length).items()}
            outs = encoder(**batch, return_hidden=True)
            rows = idx + 1 if full else np.arange(start, start + len(idx))
            for (table, name), out in zip(tables, outs):
                values = out.float().cpu().numpy().astype(table.dtype)
                _check_finite(values, idx, batch_texts, desc, name)
                table[rows] = values
            start += len(idx)
            bar.update(len(idx))
