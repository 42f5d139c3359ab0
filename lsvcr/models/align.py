"""The alignment model (DESIGN section 4): LoRA LLM + LLM text encoder + SR, trained together.

One forward pass over an :class:`~lsvcr.data.align_batch.AlignBatch`:

1. the LoRA LLM reads the prompts: LM loss on the response tokens, and the hidden state of the last
   prompt token through ``contrast_adapter`` is the LLM user representation;
2. the same LoRA LLM encodes the batch's unique texts (mean pool + ``llm_emb_mlp``) into a
   batch-local table, so the SR's gradients reach the LoRA weights (or, with
   ``text_table_refresh``, the pooled states come from a :class:`PooledTextTable` of the LLM,
   refreshed every N optimizer steps, and only ``llm_emb_mlp`` learns through them);
3. the SR (no ID embeddings, random positions) reads both histories from that table;
4. ``loss = lm_loss + rec_weight * rec_loss + contrast_weight * contrast_loss``: the objective
   passed into :meth:`AlignmentModel.forward` (:class:`lsvcr.losses.align.AlignmentLoss`) computes
   it from :meth:`AlignmentModel.representations`, with the model's weights and temperature (saved
   with its checkpoint, and what a loss warm-up changes).

With ``standardize`` (``align.standardize``; not in the paper) the pooled text states and the
last-prompt-token states pass a :class:`Standardizer` each (``text_norm``, ``prompt_norm``) before
``llm_emb_mlp`` and ``contrast_adapter``; :meth:`AlignmentModel.fit_standardizers` sets their
statistics once, from the base LLM, before training.

Checkpoints keep the LLM apart from the small modules::

    out_dir/lora/                 PEFT adapter (save_pretrained)
    out_dir/modules.safetensors   sr.*, llm_emb_mlp.*, contrast_adapter.* (and text_norm.*, prompt_norm.*)
    out_dir/tokenizer/            the tokenizer (save_pretrained)
    out_dir/alignment.json        SR settings, loss weights, temperature, base LLM

Loading checks that exactly the expected keys are present (nothing missing, nothing extra) and
raises ``ValueError`` naming the difference otherwise.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from torch import Tensor

from lsvcr.data.align_batch import AlignBatch
from lsvcr.models.llm.text_encoder import LLMTextEncoder, Standardizer, decoder_hidden_states, unwrap_peft
from lsvcr.models.llm.text_table import PooledTextTable
from lsvcr.models.sr.inputs import lookup_inputs
from lsvcr.models.sr.layers import Dropout, init_weights
from lsvcr.models.sr.lsvcr import LSVCR, SRReadouts

if TYPE_CHECKING:  # transformers is imported by whoever builds the bundle, not by this module
    from lsvcr.models.llm.loader import LLMBundle

log = logging.getLogger(__name__)

MODULE_PREFIXES = ("sr.", "llm_emb_mlp.", "contrast_adapter.")
NORM_PREFIXES = ("text_norm.", "prompt_norm.")  # present when the run standardised (align.standardize)
MODULES_FILE, META_FILE, LORA_DIR, TOKENIZER_DIR = "modules.safetensors", "alignment.json", "lora", "tokenizer"
#: settings the alignment fixes whatever the SR config says (no IDs; robust random positions)
ALIGN_SR_MODE = {"use_ids": False, "random_positions": True}


def _cheap_lora_dropout(llm: nn.Module) -> int:
    """Swap PEFT's LoRA-input ``nn.Dropout`` modules for :class:`~lsvcr.models.sr.layers.Dropout`
    (same ``p``, same inverted-dropout distribution, no state): on the CPU its mask costs ~5x less
    than ``bernoulli_``, which took a quarter of a SmolLM2 alignment step (7 LoRA targets x 30
    layers x every prompt and text token). Returns how many were swapped."""
    swapped = 0
    for module in llm.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, d in list(dropouts.items()):
            if type(d) is nn.Dropout:
                dropouts[name] = Dropout(d.p)
                swapped += 1
    return swapped


def _enable_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing of every decoder layer (transformers 5 renamed the
    switch; older remote-code models only have the old name)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _last_prompt_state(hidden: Tensor, last_prompt_index: Tensor) -> Tensor:
    """``hidden [B, T, H]`` at each row's last prompt token -> ``[B, H]``."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_prompt_index]


@dataclass
class AlignRepresentations:
    """One batch through the alignment model: the LLM's hidden states over the prompts and its LM
    head (for the response tokens' LM loss), the LLM user representation (``contrast_adapter`` of the
    last prompt token; detached under ``llm_stop_gradient``), the SR's four read-outs over the
    batch-local text table, and each sample's target key (rec: the target title; comm_rank: the
    positive comment)."""

    hidden: Tensor             # [B, T, H]
    lm_head: nn.Module
    llm_repr: Tensor           # [B, d]
    readouts: SRReadouts
    target_key: Tensor         # [B, d]


class AlignmentModel(nn.Module):
    """LoRA causal LM + :class:`LLMTextEncoder` (sharing it) + :class:`LSVCR` + ``contrast_adapter``.

    Args:
        llm: the causal LM already wrapped with PEFT LoRA (see :meth:`from_bundle`).
        tokenizer: its tokenizer (saved with the checkpoint).
        sr_config: :class:`LSVCR` keyword arguments; ``use_ids`` and ``random_positions`` are set
            to the alignment mode (False, True) whatever they say.
        rec_weight, contrast_weight, temperature: loss weights and temperature (paper: 1.0, 0.5, 0.07).
        gradient_checkpointing: recompute the LLM's layers in backward (non-reentrant, so the
            frozen embedding output needs no ``requires_grad``).
        llm_info: where the base LLM came from (name, source), recorded in checkpoints.
        text_bucket_tokens: the text encoder's length buckets (:class:`LLMTextEncoder`
            ``bucket_tokens``; ``align.text_bucket_tokens``): a speed setting, not saved.
        text_table_refresh: None (the paper's step) or N: in training the SR reads the texts'
            pooled states from a :class:`PooledTextTable` emptied every N optimizer steps
            (``align.text_table_refresh``); evaluation always encodes them live.
        standardize: :class:`Standardizer` modules on the pooled text states and the last prompt
            token's state (identity until :meth:`fit_standardizers`); saved with the checkpoint.
        llm_stop_gradient: the contrast losses see the LLM user representation detached
            (``align.llm_stop_gradient``): they pull the SR towards the LLM and never the LLM (nor
            ``contrast_adapter``, which then keeps its initial weights) towards the SR; the LoRA
            weights learn from the LM loss and, through the texts, from the SR's losses.
    """

    def __init__(
        self,
        llm: nn.Module,
        tokenizer,
        sr_config: Mapping[str, Any],
        rec_weight: float = 1.0,
        contrast_weight: float = 0.5,
        temperature: float = 0.07,
        gradient_checkpointing: bool = False,
        llm_info: Mapping[str, str] | None = None,
        text_bucket_tokens: int | None = None,
        text_table_refresh: int | None = None,
        standardize: bool = False,
        llm_stop_gradient: bool = False,
    ):
        super().__init__()
        self.sr_config = {k: v for k, v in dict(sr_config).items() if k not in ALIGN_SR_MODE}
        self.sr = LSVCR(**self.sr_config, **ALIGN_SR_MODE)
        hidden = int(unwrap_peft(llm).config.hidden_size)
        _cheap_lora_dropout(llm)
        self.text_encoder = LLMTextEncoder(llm, out_dim=self.sr.adapter.in_features, hidden_size=hidden,
                                          bucket_tokens=text_bucket_tokens, standardize=standardize)
        self.prompt_norm = Standardizer(hidden) if standardize else None
        self.contrast_adapter = nn.Linear(hidden, self.sr.adapter.out_features)
        init_weights(self.contrast_adapter)
        self.tokenizer = tokenizer
        self.rec_weight, self.contrast_weight, self.temperature = rec_weight, contrast_weight, temperature
        self.llm_stop_gradient = bool(llm_stop_gradient)
        self.llm_info = dict(llm_info or {})
        self.text_table = None if text_table_refresh is None else PooledTextTable(text_table_refresh)
        if gradient_checkpointing:
            _enable_checkpointing(unwrap_peft(llm))

    @classmethod
    def from_bundle(cls, bundle: LLMBundle, sr_config: Mapping[str, Any], **kwargs) -> "AlignmentModel":
        """Wrap ``bundle.model`` with LoRA (``bundle.lora``; in place) and build the model.
        ``gradient_checkpointing`` defaults to the bundle's setting."""
        from peft import get_peft_model

        kwargs.setdefault("gradient_checkpointing", bundle.gradient_checkpointing)
        llm = get_peft_model(bundle.model, bundle.lora.to_peft())
        return cls(llm, bundle.tokenizer, sr_config, llm_info={"name": bundle.name, "source": bundle.source}, **kwargs)

    @property
    def llm(self) -> nn.Module:
        """The PEFT-wrapped causal LM."""
        return self.text_encoder.llm

    @property
    def llm_emb_mlp(self) -> nn.Module:
        return self.text_encoder.llm_emb_mlp

    def encode_items(self, item_ids: Tensor, item_mask: Tensor, item_keys: Tensor | None = None) -> Tensor:
        """``[N, S]`` texts (global keys ``item_keys [N]``) -> local table ``[N + 1, E]`` whose row 0 is
        the zero padding row. In training with a text table the pooled states are the table's."""
        if self.text_table is not None and self.training:
            if item_keys is None:
                raise ValueError("align.text_table_refresh needs the batch's item_keys (global text keys)")
            emb = self.text_encoder.project(self._table_rows(item_ids, item_mask, item_keys))
        else:
            emb = self.text_encoder(item_ids, item_mask)
        return torch.cat([emb.new_zeros(1, emb.shape[-1]), emb])

    def _table_rows(self, item_ids: Tensor, item_mask: Tensor, item_keys: Tensor) -> Tensor:
        """``[N, hidden]`` pooled states of the batch's texts from the table, after computing the
        ones it lacks (no gradients, eval mode) and exchanging them with the other processes."""
        table, encoder = self.text_table, self.text_encoder
        todo = table.missing(item_keys)
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        # ZeRO-3 gathers the LLM's weights in every process's forward together: a process with
        # nothing new still runs one text, and discards it
        run = todo if todo.numel() or world == 1 else todo.new_zeros(1)
        pooled = item_mask.new_zeros(0, encoder.hidden_size, dtype=torch.float32)
        if run.numel():
            llm, was = encoder.llm, encoder.llm.training
            llm.train(False)
            try:
                with torch.no_grad():
                    pooled = encoder.pooled(item_ids[run], item_mask[run])
            finally:
                llm.train(was)
            pooled = pooled[: todo.numel()]
        keys, pooled = table.exchange(item_keys[todo], pooled)
        table.add(keys, pooled)
        return table.lookup(item_keys, item_mask.device)

    def llm_repr(self, hidden: Tensor, last_prompt_index: Tensor) -> Tensor:
        """``hidden [B, T, H]`` at each row's last prompt token, through ``contrast_adapter`` -> ``[B, d]``."""
        last = _last_prompt_state(hidden, last_prompt_index)
        if self.prompt_norm is not None:
            last = self.prompt_norm(last)
        return self.contrast_adapter(last.to(self.contrast_adapter.weight.dtype))

    @property
    def standardize(self) -> bool:
        return self.prompt_norm is not None

    @torch.no_grad()
    def standardizer_moments(self, batch: AlignBatch) -> Tensor:
        """``[2, 2 * hidden + 1]`` float64 :meth:`Standardizer.moments` of one batch: row 0 of its
        prompts' last-token states, row 1 of its texts' pooled states, each text counted as often as
        the batch's samples read it (history items, hot comments, targets). So the totals over batches
        and processes do not depend on how the samples were split into batches (a batch holds each
        text once). Hand the total to :meth:`fit_standardizers`. Call in eval mode (no dropout)."""
        hidden = decoder_hidden_states(self.llm, batch.input_ids, batch.attention_mask)
        last = _last_prompt_state(hidden, batch.last_prompt_index)
        pooled = self.text_encoder.pooled(batch.item_ids, batch.item_mask)
        h = batch.history
        refs = torch.cat([t.reshape(-1) for t in (h.v_video, h.v_comment, h.c_video, h.c_comment, h.target,
                                                   batch.target_row)])
        uses = torch.bincount(refs, minlength=pooled.shape[0] + 1)[1:]  # local index 0 is padding
        return torch.stack([Standardizer.moments(last), Standardizer.moments(pooled, uses)])

    def fit_standardizers(self, moments: Tensor) -> None:
        """Statistics of ``prompt_norm`` and ``text_norm`` from summed :meth:`standardizer_moments`."""
        if not self.standardize:
            raise ValueError("this alignment model was built without standardize=True")
        self.prompt_norm.fit(moments[0])
        self.text_encoder.text_norm.fit(moments[1])

    def representations(self, batch: AlignBatch) -> AlignRepresentations:
        """What the alignment losses of ``batch`` are computed from (:class:`AlignRepresentations`)."""
        hidden = decoder_hidden_states(self.llm, batch.input_ids, batch.attention_mask)  # [B, T, H]
        head = unwrap_peft(self.llm).get_output_embeddings()
        if head is None:
            raise ValueError("this causal LM exposes no output embeddings (get_output_embeddings() is None)")
        llm_repr = self.llm_repr(hidden, batch.last_prompt_index)
        table = self.encode_items(batch.item_ids, batch.item_mask, batch.item_keys)  # [N + 1, E]
        readouts = self.sr.readouts(lookup_inputs(batch.history, table, table))
        # Without IDs a video candidate and a comment candidate are both normalize(adapter(text)).
        target_key = self.sr.comment_repr(table[batch.target_row])
        if self.llm_stop_gradient:
            llm_repr = llm_repr.detach()
        return AlignRepresentations(hidden, head, llm_repr, readouts, target_key)

    def forward(self, batch: AlignBatch, objective: Callable[..., dict[str, Tensor]] | None = None,
                moments: bool = False) -> dict[str, Tensor] | Tensor:
        """``objective(self, batch)``: the scalar losses of a batch, e.g.
        :class:`lsvcr.losses.align.AlignmentLoss` (``loss``, ``lm_loss``, ``rec_loss``,
        ``contrast_loss``, ``behaviour_loss``, ``llm_sr_loss`` and diagnostics); with ``moments``,
        :meth:`standardizer_moments` instead. (A forward, not a helper method, so that it runs
        through the engine's wrapper: DDP's gradient hooks, ZeRO-3's weight gathering.)"""
        if moments:
            return self.standardizer_moments(batch)
        if objective is None:
            raise ValueError("AlignmentModel.forward needs the objective, e.g. lsvcr.losses.align.AlignmentLoss()")
        return objective(self, batch)

    def module_state_dict(self) -> dict[str, Tensor]:
        """The non-LLM weights, keys prefixed ``sr.``, ``llm_emb_mlp.``, ``contrast_adapter.`` (and the
        standardisers' statistics, ``text_norm.`` and ``prompt_norm.``)."""
        parts = {"sr.": self.sr, "llm_emb_mlp.": self.llm_emb_mlp, "contrast_adapter.": self.contrast_adapter}
        if self.standardize:
            parts.update({"text_norm.": self.text_encoder.text_norm, "prompt_norm.": self.prompt_norm})
        return {p + k: v for p, m in parts.items() for k, v in m.state_dict().items()}

    def load_module_state_dict(self, state: Mapping[str, Tensor], where: str = "state") -> None:
        """Load :meth:`module_state_dict` output; every key must match exactly (ValueError otherwise)."""
        expected = self.module_state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
        if missing or unexpected or wrong:
            raise ValueError(f"{where}: does not fit this alignment model: missing {missing}, unexpected {unexpected}, "
                             f"wrong shape {wrong}")
        with torch.no_grad():
            for k, v in expected.items():
                v.copy_(state[k])

    def metadata(self) -> dict[str, Any]:
        return {"sr_config": self.sr_config, "rec_weight": self.rec_weight, "contrast_weight": self.contrast_weight,
                "temperature": self.temperature, "llm": self.llm_info, "standardize": self.standardize,
                "llm_hidden_size": self.contrast_adapter.in_features}


def save_alignment(model: AlignmentModel, out_dir: str | Path) -> Path:
    """Write the checkpoint layout of the module docstring under ``out_dir`` (call on one rank)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.llm.save_pretrained(out / LORA_DIR)
    state = {k: v.detach().cpu().contiguous() for k, v in model.module_state_dict().items()}
    save_file(state, out / MODULES_FILE)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(out / TOKENIZER_DIR)
    (out / META_FILE).write_text(json.dumps(model.metadata(), indent=2, sort_keys=True))
    return out


def _require(path: Path) -> Path:
    if not path.exists():
        raise ValueError(f"{path}: missing; is {path.parent} an alignment checkpoint written by save_alignment?")
    return path


def _load_lora(out: Path, bundle: LLMBundle, trainable: bool) -> nn.Module:
    """``bundle.model`` (wrapped in place) with the saved adapter; its keys must match exactly."""
    from peft import PeftConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    config = PeftConfig.from_pretrained(str(_require(out / LORA_DIR)))
    config.inference_mode = not trainable  # save_pretrained stores True; resuming needs trainable LoRA
    llm = get_peft_model(bundle.model, config)
    saved = load_file(_require(out / LORA_DIR / "adapter_model.safetensors"))
    expected = set(get_peft_model_state_dict(llm))
    missing, unexpected = sorted(expected - set(saved)), sorted(set(saved) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{out / LORA_DIR}: adapter does not fit {bundle.name}: missing {missing}, unexpected {unexpected}"
        )
    set_peft_model_state_dict(llm, saved)
    return llm


def load_alignment(out_dir: str | Path, bundle: LLMBundle, trainable: bool = False, **kwargs) -> AlignmentModel:
    """The :class:`AlignmentModel` saved in ``out_dir``, on ``bundle``'s base LLM (wrapped in place).

    ``trainable`` keeps the LoRA weights trainable (resuming); ``kwargs`` override constructor
    arguments (e.g. ``gradient_checkpointing``). The saved tokenizer must have the bundle's vocabulary.
    """
    out = Path(out_dir)
    meta = json.loads(_require(out / META_FILE).read_text())
    if meta["llm_hidden_size"] != bundle.hidden_size:
        raise ValueError(f"{out}: aligned on an LLM with hidden size {meta['llm_hidden_size']}, "
                         f"{bundle.name} has {bundle.hidden_size}")
    if meta["llm"].get("name") not in (None, bundle.name):
        log.warning("%s was aligned on %s, loading it on %s", out, meta["llm"].get("name"), bundle.name)
    tok_dir = out / TOKENIZER_DIR
    if tok_dir.exists():
        from transformers import AutoTokenizer

        if AutoTokenizer.from_pretrained(tok_dir).get_vocab() != bundle.tokenizer.get_vocab():
            raise ValueError(f"{tok_dir}: the saved tokenizer's vocabulary differs from {bundle.name}'s tokenizer")
    llm = _load_lora(out, bundle, trainable)
    args = {k: meta[k] for k in ("rec_weight", "contrast_weight", "temperature")}
    args["standardize"] = bool(meta.get("standardize", False))
    args.update(kwargs)
    model = AlignmentModel(llm, bundle.tokenizer, meta["sr_config"], llm_info=meta["llm"], **args)
    model.load_module_state_dict(load_file(_require(out / MODULES_FILE)), where=str(out / MODULES_FILE))
    return model


def load_sr_for_finetune(
    out_dir: str | Path,
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor] | None]:
    """``(sr_state_dict, llm_emb_mlp_state_dict, text_norm_state_dict or None)`` of an alignment
    checkpoint, prefixes stripped.

    The file must hold exactly the ``sr.``, ``llm_emb_mlp.`` and ``contrast_adapter.`` modules (the
    adapter is dropped: fine-tuning has no LLM representation), and both standardisers or neither
    (``prompt_norm`` is dropped with the adapter; ``text_norm`` comes before ``llm_emb_mlp``). Feed
    the SR state to :meth:`LSVCR.load_aligned`, which checks its keys against the fine-tuning SR.
    """
    path = _require(Path(out_dir) / MODULES_FILE)
    state = load_file(path)
    stray = sorted(k for k in state if not k.startswith(MODULE_PREFIXES + NORM_PREFIXES))
    empty = [p for p in MODULE_PREFIXES if not any(k.startswith(p) for k in state)]
    norms = [p for p in NORM_PREFIXES if any(k.startswith(p) for k in state)]
    if stray or empty or len(norms) == 1:
        raise ValueError(f"{path}: unexpected keys {stray}, no weights for {empty}"
                         + (f", {norms[0]} without {set(NORM_PREFIXES) - set(norms)}" if len(norms) == 1 else ""))

    def part(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    return part("sr."), part("llm_emb_mlp."), part("text_norm.") if norms else None
