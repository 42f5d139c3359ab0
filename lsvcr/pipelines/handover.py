"""The hand-over from an alignment run to the later stages: :func:`load_aligned_llm` (the aligned LLM
and text encoder, for ``stage=embed``) and :func:`load_aligned_sr` (the aligned SR and
``llm_emb_mlp``, for ``stage=finetune``), both given ``init_from``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lsvcr.errors import ConfigError
from lsvcr.models.align import (
    META_FILE,
    MODULES_FILE,
    load_alignment,
    load_sr_for_finetune,
)
from lsvcr.models.llm.loader import LLMBundle
from lsvcr.models.llm.text_encoder import LLMTextEncoder, Standardizer, llm_emb_mlp
from lsvcr.models.sr.lsvcr import LSVCR

log = logging.getLogger("lsvcr")

CKPT_DIR = "align"  # an alignment run's final checkpoint: <run>/align/


def alignment_checkpoint(init_from) -> Path:
    """The checkpoint of ``init_from``: ``<run>/align/``, or a checkpoint directory itself."""
    path = Path(str(init_from)).expanduser().resolve()
    for ckpt in (path / CKPT_DIR, path):
        if (ckpt / META_FILE).exists() and (ckpt / MODULES_FILE).exists():
            return ckpt
    raise ConfigError(f"init_from={path}: no alignment checkpoint in {path / CKPT_DIR} (or {path}); "
                      "give a run directory written by stage=align")


def load_aligned_llm(cfg: DictConfig, init_from) -> tuple[LLMBundle, LLMTextEncoder]:
    """The aligned LLM (base model of the run's ``model/llm``, its tokenizer, LoRA merged in) and its
    text encoder with the trained ``llm_emb_mlp``, in eval mode."""
    ckpt = alignment_checkpoint(init_from)
    saved = OmegaConf.load(ckpt / "config.yaml").model.llm
    given, used = OmegaConf.to_container(cfg.model.llm, resolve=True), OmegaConf.to_container(saved, resolve=True)
    if given != used:
        differ = ", ".join(f"{k}={used.get(k)!r} (not {given.get(k)!r})" for k in sorted(set(given) | set(used))
                           if given.get(k) != used.get(k))
        log.warning("init_from=%s was aligned with a different model/llm; using the aligned one: %s",
                    ckpt.parent, differ)
    bundle = instantiate(saved).build(None, ckpt)  # the tiny LM reloads the run's tokenizer from ckpt/tokenizer
    try:
        model = load_alignment(ckpt, bundle)
    except ValueError as e:
        raise ConfigError(f"init_from={ckpt.parent}: {e}") from None
    encoder = model.text_encoder
    encoder.llm = model.llm.merge_and_unload()  # plain weights: no LoRA detour per layer when encoding
    encoder.eval()
    bundle.model, bundle.source = encoder.llm, f"{bundle.source} + LoRA {ckpt}"
    return bundle, encoder


def load_aligned_sr(cfg: DictConfig, sr: torch.nn.Module, init_from, table_width: int | None) -> torch.nn.Module | None:
    """Load the aligned SR weights into ``sr`` (positions resized, fresh ID embeddings, exactly those
    keys missing); returns ``llm_emb_mlp`` when the tables are wider than the SR's input, else None."""
    ckpt = alignment_checkpoint(init_from)
    where = f"init_from={ckpt.parent}"
    if not isinstance(sr, LSVCR):  # the alignment trains LSVCR's SR (stage=align refuses any other)
        raise ConfigError(f"{where}: model/sr={cfg.model.sr.name} cannot start from an alignment run; "
                          "use model/sr=lsvcr")
    try:
        sr_state, mlp_state, norm_state = load_sr_for_finetune(ckpt)
        sr.load_aligned(sr_state)
    except (ValueError, RuntimeError) as e:
        aligned = json.loads((ckpt / META_FILE).read_text())["sr_config"]
        raise ConfigError(f"{where}: its SR does not fit model/sr={cfg.model.sr.name} ({str(e).splitlines()[0]}); "
                          f"it was aligned with {aligned}") from None
    log.info("fine-tuning starts from the aligned SR of %s", ckpt)
    if table_width is None or table_width == sr.adapter.in_features:
        return None
    mlp = _mlp(mlp_state)
    if mlp[0].in_features != table_width or mlp[-1].out_features != sr.adapter.in_features:
        raise ConfigError(f"{where}: its llm_emb_mlp maps {mlp[0].in_features} -> {mlp[-1].out_features}, but the "
                          f"tables are {table_width} wide and the SR reads {sr.adapter.in_features}")
    if norm_state is None:
        return mlp
    norm = Standardizer(table_width)  # the run standardised the pooled states before its llm_emb_mlp
    norm.load_state_dict(norm_state)
    return torch.nn.Sequential(norm, *mlp)


def _mlp(state: dict[str, torch.Tensor]) -> torch.nn.Sequential:
    """``llm_emb_mlp`` rebuilt from its saved weights."""
    inner, hidden = state["0.weight"].shape
    mlp = llm_emb_mlp(hidden, state["2.weight"].shape[0], inner)
    mlp.load_state_dict(state)
    return mlp
