"""Builders for the LLM side: a Hugging Face causal LM (or an encoder-only text model) plus its tokenizer.

``conf/model/llm/*.yaml`` instantiate one of these builders (each node carries ``_target_``); a
stage then calls ``build`` with the dataset's texts and its working directory::

    spec = hydra.utils.instantiate(cfg.model.llm)
    bundle = spec.build(texts=lambda: iter_titles_and_comments(), workdir=run_dir / "llm")
    bundle.model, bundle.tokenizer, bundle.lora.to_peft()

- :class:`TinyCausalLM`: a randomly initialised (seeded) Llama- or Qwen2-style LM whose tokenizer is
  trained on the dataset's texts; for tests and CPU smoke runs.
- :class:`PretrainedCausalLM`: any ``AutoModelForCausalLM`` checkpoint, local directory or hub id.
- :class:`TinyEncoder`, :class:`PretrainedEncoder`: the same for encoder-only models (BERT, MiniLM)
  loaded with ``AutoModel``. They serve ``stage=embed`` only (mean-pooled last hidden state, as
  sentence-transformers pools all-MiniLM-L6-v2); ``stage=align`` needs a causal LM and refuses
  them (``causal = False``).

The builders only carry the LoRA / gradient-checkpointing settings; applying them is the alignment
stage's job (the embedding stage of an un-aligned baseline wants the bare model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    BertConfig,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from lsvcr.errors import ConfigError
from lsvcr.models.llm.tokenizer import BPETokenizerTrainer

TextsFn = Callable[[], Iterable[str]]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LLAMA_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraSettings:
    """LoRA hyper-parameters for the alignment stage (paper: r 8, alpha 32, dropout 0.1)."""

    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    target_modules: Sequence[str] = LLAMA_LORA_MODULES

    def __post_init__(self) -> None:
        self.target_modules = [str(m) for m in self.target_modules]

    def to_peft(self):
        """The equivalent ``peft.LoraConfig`` for a causal LM."""
        from peft import LoraConfig, TaskType

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            task_type=TaskType.CAUSAL_LM,
        )


@dataclass
class LLMBundle:
    """A built LLM: model (eval mode, on CPU), tokenizer (with a pad token) and the run settings.

    ``name`` is the short label of the preset; ``source`` says where the weights came from (the
    checkpoint path or hub id, or the random-init recipe) and belongs in manifests. ``causal`` is
    False for an encoder-only model (no LM head; it can encode texts but not be aligned).
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    source: str
    lora: LoraSettings = field(default_factory=LoraSettings)
    gradient_checkpointing: bool = False
    causal: bool = True

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)


def _lora(lora: LoraSettings | Mapping | None) -> LoraSettings:
    if lora is None:
        return LoraSettings()
    if isinstance(lora, LoraSettings):
        return lora
    return LoraSettings(**{k: v for k, v in dict(lora).items() if k != "_target_"})


def _check_padding_side(padding_side: str) -> str:
    if padding_side not in ("left", "right"):
        raise ConfigError(f"model.llm.padding_side: expected 'left' or 'right', got {padding_side!r}")
    return padding_side


def _torch_dtype(dtype: str, allow_auto: bool = True):
    if dtype == "auto" and allow_auto:
        return "auto"
    if dtype not in DTYPES:
        choices = sorted(DTYPES) + (["auto"] if allow_auto else [])
        raise ConfigError(f"model.llm.dtype: expected one of {choices}, got {dtype!r}")
    return DTYPES[dtype]


class TinyCausalLM:
    """A small random causal LM (seeded) with a BPE tokenizer trained on the dataset's texts.

    Args:
        vocab_size: BPE vocabulary budget; the model's embedding has ``len(tokenizer)`` rows
            (the budget plus the sticker tokens, or fewer on a small corpus).
        arch: ``"llama"`` or ``"qwen2"`` (which HF config class builds the model).
        tokenizer: tokenizer training settings.
        seed: seed of the weight initialisation; the same seed and tokenizer give the same weights.
        name: label recorded in manifests and run names (default ``tiny-<arch>``).
    """

    causal = True

    def __init__(
        self,
        vocab_size: int = 4000,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        intermediate_size: int = 128,
        max_position_embeddings: int = 2048,
        arch: str = "llama",
        num_kv_heads: int | None = None,
        tokenizer: BPETokenizerTrainer | Mapping | None = None,
        dtype: str = "float32",
        seed: int = 0,
        padding_side: str = "left",
        lora: LoraSettings | Mapping | None = None,
        gradient_checkpointing: bool = False,
        name: str | None = None,
    ):
        if arch not in ("llama", "qwen2"):
            raise ConfigError(f"model.llm.arch: expected 'llama' or 'qwen2', got {arch!r}")
        if hidden_size % num_heads:
            raise ConfigError(f"model.llm: hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.vocab_size, self.arch, self.seed = vocab_size, arch, seed
        self.name = name or f"tiny-{arch}"
        self.dims = dict(
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads or num_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings,
        )
        if tokenizer is None or isinstance(tokenizer, BPETokenizerTrainer):
            self.tokenizer = tokenizer or BPETokenizerTrainer()
        else:
            self.tokenizer = BPETokenizerTrainer(**{k: v for k, v in dict(tokenizer).items() if k != "_target_"})
        self.dtype = _torch_dtype(dtype, allow_auto=False)
        self.padding_side = _check_padding_side(padding_side)
        self.lora = _lora(lora)
        self.gradient_checkpointing = gradient_checkpointing

    def build(self, texts: TextsFn | None, workdir: Path) -> LLMBundle:
        """Train (or reload from ``workdir``) the tokenizer, then build the seeded random model."""
        tokenizer = self.tokenizer.load_or_train(texts, Path(workdir), self.vocab_size, self.padding_side)
        config_cls = LlamaConfig if self.arch == "llama" else Qwen2Config
        config = config_cls(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
            tie_word_embeddings=True,
            **self.dims,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = AutoModelForCausalLM.from_config(config)
        model.to(self.dtype).eval()
        source = f"random init ({self.arch}, seed {self.seed}, hidden {self.dims['hidden_size']})"
        return LLMBundle(model, tokenizer, self.name, source, self.lora, self.gradient_checkpointing)


class PretrainedCausalLM:
    """Any Hugging Face causal LM checkpoint (a local directory or a hub id).

    Args:
        name_or_path: local directory or hub id (hub ids need the files in the local HF cache when
            the machine is offline).
        dtype: ``"bfloat16"``, ``"float16"``, ``"float32"`` or ``"auto"`` (the checkpoint's own).
        trust_remote_code: needed by checkpoints with their own modelling code (ChatGLM3).
        attn_implementation: e.g. ``"sdpa"`` or ``"flash_attention_2"``; ``None`` = library default.
        name: label recorded in manifests and run names (default ``name_or_path``).
    """

    causal = True
    auto_class = AutoModelForCausalLM
    kind = "causal LM"

    def __init__(
        self,
        name_or_path: str,
        dtype: str = "bfloat16",
        trust_remote_code: bool = False,
        padding_side: str = "left",
        revision: str | None = None,
        attn_implementation: str | None = None,
        lora: LoraSettings | Mapping | None = None,
        gradient_checkpointing: bool = True,
        name: str | None = None,
    ):
        self.name_or_path = str(name_or_path)
        self.name = name or self.name_or_path
        self.dtype = _torch_dtype(dtype)
        self.trust_remote_code = trust_remote_code
        self.padding_side = _check_padding_side(padding_side)
        self.revision = revision
        self.attn_implementation = attn_implementation
        self.lora = _lora(lora)
        self.gradient_checkpointing = gradient_checkpointing

    def build(self, texts: TextsFn | None = None, workdir: Path | None = None) -> LLMBundle:
        """Load tokenizer and model; ``texts`` and ``workdir`` are unused (the checkpoint has its tokenizer).

        Raises:
            ConfigError: the directory does not exist, or the checkpoint cannot be found or read.
        """
        self._check_local_path()
        common = dict(trust_remote_code=self.trust_remote_code, revision=self.revision)
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.name_or_path, padding_side=self.padding_side, **common)
            extra = {"attn_implementation": self.attn_implementation} if self.attn_implementation else {}
            model = self.auto_class.from_pretrained(self.name_or_path, dtype=self.dtype, **common, **extra)
        except (OSError, ValueError) as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"model.llm.name_or_path={self.name_or_path!r}: cannot load this checkpoint ({first_line}). "
                f"Give a local directory holding a Hugging Face {self.kind}, or a hub id already in the local cache"
            ) from None
        tokenizer.padding_side = self.padding_side
        if tokenizer.pad_token is None:
            # Llama-style checkpoints ship without a pad token; pads are masked, so EOS is a safe stand-in.
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        model.eval()
        return LLMBundle(model, tokenizer, self.name, self.name_or_path, self.lora, self.gradient_checkpointing,
                         causal=self.causal)

    def _check_local_path(self) -> None:
        """Fail early and plainly on a path that is clearly local (``/``, ``./``, ``../``, ``~``) but absent."""
        value = self.name_or_path
        if Path(value).expanduser().exists():
            return
        if value.startswith(("/", "./", "../", "~")) or value in (".", ".."):
            raise ConfigError(f"model.llm.name_or_path={value!r}: no such directory")


class PretrainedEncoder(PretrainedCausalLM):
    """An encoder-only Hugging Face checkpoint (BERT, MiniLM) loaded with ``AutoModel``; for ``stage=embed``.

    Same arguments as :class:`PretrainedCausalLM`; ``lora`` and ``gradient_checkpointing`` are
    accepted (one config schema) but unused: such a model is never trained here. sentence-transformers
    pads on the right; position ids count real tokens either way, so the side does not change a row.
    """

    causal = False
    auto_class = AutoModel
    kind = "encoder-only model (AutoModel)"

    def __init__(self, name_or_path: str, dtype: str = "float32", padding_side: str = "right",
                 gradient_checkpointing: bool = False, **kwargs):
        super().__init__(name_or_path, dtype=dtype, padding_side=padding_side,
                         gradient_checkpointing=gradient_checkpointing, **kwargs)


class TinyEncoder:
    """A small random BERT encoder (seeded) with a BPE tokenizer trained on the dataset's texts.

    The encoder-only counterpart of :class:`TinyCausalLM`, for tests and CPU smoke runs of
    ``stage=embed`` with an encoder; ``stage=align`` refuses it (``causal = False``).
    """

    causal = False

    def __init__(
        self,
        vocab_size: int = 2000,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        intermediate_size: int = 128,
        max_position_embeddings: int = 512,
        tokenizer: BPETokenizerTrainer | Mapping | None = None,
        dtype: str = "float32",
        seed: int = 0,
        padding_side: str = "right",
        name: str | None = None,
    ):
        if hidden_size % num_heads:
            raise ConfigError(f"model.llm: hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.vocab_size, self.seed, self.name = vocab_size, seed, name or "tiny-bert"
        self.dims = dict(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                         intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings)
        if tokenizer is None or isinstance(tokenizer, BPETokenizerTrainer):
            self.tokenizer = tokenizer or BPETokenizerTrainer()
        else:
            self.tokenizer = BPETokenizerTrainer(**{k: v for k, v in dict(tokenizer).items() if k != "_target_"})
        self.dtype = _torch_dtype(dtype, allow_auto=False)
        self.padding_side = _check_padding_side(padding_side)

    def build(self, texts: TextsFn | None, workdir: Path) -> LLMBundle:
        """Train (or reload from ``workdir``) the tokenizer, then build the seeded random BERT."""
        tokenizer = self.tokenizer.load_or_train(texts, Path(workdir), self.vocab_size, self.padding_side)
        config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **self.dims)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = AutoModel.from_config(config)
        model.to(self.dtype).eval()
        source = f"random init (bert, seed {self.seed}, hidden {self.dims['hidden_size']})"
        return LLMBundle(model, tokenizer, self.name, source, causal=False)
