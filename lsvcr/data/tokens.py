"""Token ids for the LLM side: a text's ids (truncated, never empty) and padded id tensors.

The alignment batches, the prompts and the text encoder of both LLM stages tokenise through these,
so every path sees identical token ids for the same text.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def tokenize_texts(tokenizer, texts: Sequence[str | None], max_length: int) -> list[list[int]]:
    """Token ids of each text, truncated to ``max_length`` (the tokenizer's own special tokens included).

    A text with no tokens (empty or ``None``) becomes the single EOS token: every item gets a
    defined embedding, and an all-padding row (which would pool to 0/0) cannot occur.
    """
    ids = tokenizer([t or "" for t in texts], truncation=True, max_length=max_length)["input_ids"]
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    return [list(row) if len(row) else [eos] for row in ids]


def pad_ids(ids: Sequence[Sequence[int]], pad_id: int, padding_side: str = "left") -> dict[str, torch.Tensor]:
    """Pad token-id lists into ``input_ids`` / ``attention_mask`` tensors, both ``[N, T]`` (T = longest)."""
    width = max((len(row) for row in ids), default=0)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        if not len(row):
            continue
        cols = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        input_ids[i, cols] = torch.as_tensor(row, dtype=torch.long)
        mask[i, cols] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def encode_texts(tokenizer, texts: Sequence[str | None], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise and pad (on the tokenizer's ``padding_side``): ``input_ids``, ``attention_mask`` ``[N, T]``."""
    ids = tokenize_texts(tokenizer, texts, max_length)
    return pad_ids(ids, tokenizer.pad_token_id, getattr(tokenizer, "padding_side", "right"))
