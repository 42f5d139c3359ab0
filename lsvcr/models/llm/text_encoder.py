"""The LLM text encoder (DESIGN section 4): an item's text -> mean-pooled LLM state -> ``llm_emb_mlp``.

The same module serves the alignment stage (inside the training step, so gradients reach the LoRA
weights through the SR) and the embedding stage (once per title and comment, under inference mode).
Tokenisation goes through :func:`lsvcr.data.tokens.encode_texts` in both, so the two see identical token ids.

An encoder-only model (BERT, all-MiniLM-L6-v2, loaded with ``AutoModel``) works the same way for
``stage=embed``: its last hidden state, mean-pooled over the attention mask, is exactly
sentence-transformers' pooling for all-MiniLM-L6-v2 (before its optional normalisation, which is
not applied here: ``llm_emb_mlp`` follows).

Pooling runs the LM's decoder only (no LM head: a 150k-word vocabulary would cost ``N x T x V``
logits for nothing) with position ids counted over real tokens, so an item's embedding does not
depend on the padding side or on how much padding its batch needed.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_OUT_DIM = 256


def unwrap_peft(llm: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(llm, "get_base_model", None)
    return get_base() if callable(get_base) else llm


def decoder_hidden_states(llm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last hidden state (after the final norm) of a causal LM's decoder, ``[N, T, H]``.

    ``llm`` is a transformers causal LM, possibly PEFT-wrapped, or a bare encoder (``AutoModel``,
    e.g. BERT), which is its own ``base_model``. Position ids count real tokens
    (``cumsum(mask) - 1``), so left and right padding give the same states at real tokens.
    ChatGLM's decoder returns ``[T, N, H]``; it is transposed back.
    """
    model = unwrap_peft(llm)
    decoder = model.base_model  # under a causal LM's head; a bare AutoModel is its own base model
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    hidden = out[0]  # last_hidden_state, for ModelOutput and tuple returns alike
    if getattr(model.config, "model_type", None) == "chatglm":
        hidden = hidden.transpose(0, 1)
    return hidden


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden [N, T, H]`` over positions where ``attention_mask [N, T]`` is 1 -> ``[N, H]`` float32.

    Padded positions are selected away (not multiplied by 0), so a non-finite state at a pad
    cannot leak into the mean.
    """
    keep = attention_mask.bool().unsqueeze(-1)
    total = torch.where(keep, hidden.float(), 0.0).sum(dim=1)
    return total / keep.sum(dim=1).clamp(min=1)


def llm_emb_mlp(hidden_size: int, out_dim: int, inner: int | None = None) -> nn.Sequential:
    """``llm_emb_mlp``: hidden -> inner (default hidden/4) -> GELU -> out_dim."""
    inner = max(1, hidden_size // 4) if inner is None else inner
    return nn.Sequential(nn.Linear(hidden_size, inner), nn.GELU(), nn.Linear(inner, out_dim))


class Standardizer(nn.Module):
    """``x -> (x - mean) / std`` per feature, with fixed statistics (buffers: saved, never trained).

    A pretrained LM's pooled and last-token states are anisotropic: a few features carry a large
    common offset (SmolLM2-135M's mean-pooled ml-100k titles: feature means up to 27 against a median
    spread of 0.35, mean pairwise cosine 0.90, and still 0.90 after a randomly initialised
    ``llm_emb_mlp``), so every text and every user looks alike to what reads them. Standardising with
    statistics of the data removes the offset (cosine -0.003 on those titles). Computed in float32
    whatever the input's precision. Before :meth:`fit` it is the identity.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = float(eps)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @staticmethod
    def moments(x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``x [N, dim]`` -> ``[2 * dim + 1]`` float64: the sums of ``x`` and ``x**2`` and the row count
        (each row counted ``weights [N]`` times, if given), which add up over batches and processes
        (:meth:`fit` takes their total)."""
        x = x.detach().double()
        w = x.new_ones(x.shape[0]) if weights is None else weights.detach().to(x)
        return torch.cat([w @ x, w @ x.square(), w.sum().reshape(1)])

    @torch.no_grad()
    def fit(self, moments: torch.Tensor) -> None:
        """Set mean and std (floored at ``eps``) from summed :meth:`moments`."""
        dim = self.mean.numel()
        count = float(moments[-1])
        if count < 2:
            raise ValueError(f"standardising needs at least 2 rows, got {count:.0f}")
        mean = moments[:dim] / count
        var = (moments[dim:2 * dim] / count - mean.square()).clamp(min=0.0)
        self.mean.copy_(mean.to(self.mean))
        self.std.copy_(var.sqrt().clamp(min=self.eps).to(self.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - self.mean.float()) / self.std.float()).to(x.dtype)


def length_buckets(lengths: torch.Tensor, max_tokens: int | None) -> list[torch.Tensor]:
    """Row indices of ``lengths [N]`` in chunks of similar length, each padding to at most ``max_tokens``.

    Rows are sorted by length (stable) and cut greedily: a chunk grows while ``rows x its longest``
    stays within ``max_tokens`` (a row longer than the budget is a chunk alone). So a chunk's padding
    is only the difference to its longest row, where one ``[N, T]`` batch pads every row to the
    longest of all. ``max_tokens=None`` = one chunk of every row, in their order.
    """
    n = int(lengths.numel())
    if max_tokens is None or n == 0:
        return [torch.arange(n, device=lengths.device)]
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens}: expected a positive token budget (or None)")
    ordered = torch.sort(lengths.cpu(), stable=True)
    order, sorted_len = ordered.indices, ordered.values.tolist()
    chunks, start = [], 0
    for i in range(1, n + 1):
        # close the chunk [start, i) when row i would push rows x longest over the budget
        if i == n or (i + 1 - start) * max(sorted_len[i], 1) > max_tokens:
            chunks.append(order[start:i].to(lengths.device))
            start = i
    return chunks


class LLMTextEncoder(nn.Module):
    """Causal LM (possibly LoRA-wrapped) or encoder + ``llm_emb_mlp`` (hidden -> hidden/4 -> GELU -> out_dim).

    Args:
        llm: a transformers causal LM (or its PEFT wrapper), or an encoder-only ``AutoModel``.
        out_dim: embedding size handed to the SR (``llm_emb_size``, 256 in the paper).
        hidden_size: the LM's hidden size; read from ``llm.config`` when omitted.
        bucket_tokens: :meth:`pooled` runs the LM on length buckets of at most this many (padded)
            tokens instead of one batch padded to its longest text (:func:`length_buckets`); None =
            one batch. The values agree to float rounding; only the padding the LM computes on changes.
        standardize: a :class:`Standardizer` (``text_norm``) between the pooled state and
            ``llm_emb_mlp`` (``align.standardize``; the paper has none).
    """

    def __init__(self, llm: nn.Module, out_dim: int = DEFAULT_OUT_DIM, hidden_size: int | None = None,
                 bucket_tokens: int | None = None, standardize: bool = False):
        super().__init__()
        self.llm = llm
        self.hidden_size = int(hidden_size or llm.config.hidden_size)
        self.out_dim = int(out_dim)
        self.llm_emb_mlp = llm_emb_mlp(self.hidden_size, self.out_dim)
        self.text_norm = Standardizer(self.hidden_size) if standardize else None
        self.bucket_tokens = None if bucket_tokens is None else int(bucket_tokens)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean over real tokens of the LM's last hidden state: ``[N, T]`` -> ``[N, hidden]`` float32.

        With ``bucket_tokens`` each length bucket is cut to the columns where it has real tokens
        (every row is padded on the same side, so these are contiguous) and run alone.
        """
        chunks = length_buckets(attention_mask.sum(dim=1), self.bucket_tokens)
        if len(chunks) == 1:
            return masked_mean(decoder_hidden_states(self.llm, input_ids, attention_mask), attention_mask)
        parts = []
        for rows in chunks:
            mask = attention_mask[rows]
            cols = mask.any(dim=0)
            if not bool(cols.any()):  # rows without a real token pool to 0 (masked_mean) whatever runs
                cols[-1] = True
            ids, mask = input_ids[rows][:, cols], mask[:, cols]
            parts.append(masked_mean(decoder_hidden_states(self.llm, ids, mask), mask))
        out = torch.cat(parts)
        # back to the input's row order: out[k] is row order[k]
        return out[torch.argsort(torch.cat(chunks))]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_hidden: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``input_ids``, ``attention_mask`` ``[N, T]`` -> embeddings ``[N, out_dim]``.

        With ``return_hidden`` also the mean-pooled LM state ``[N, hidden]`` (float32).
        """
        hidden = self.pooled(input_ids, attention_mask)
        emb = self.project(hidden)
        return (emb, hidden) if return_hidden else emb

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Pooled LM states ``[N, hidden]`` -> embeddings ``[N, out_dim]`` (``text_norm``, if any, then ``llm_emb_mlp``)."""
        if self.text_norm is not None:
            hidden = self.text_norm(hidden)
        return self.llm_emb_mlp(hidden.to(self.llm_emb_mlp[0].weight.dtype))
