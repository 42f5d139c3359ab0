"""The DeepSpeed JSON of a run: `hardware.deepspeed` with its ``"auto"`` values filled in.

`conf/hardware/deepspeed_*.yaml` write ``"auto"`` (as the Hugging Face integration does) wherever a
value belongs to the training config rather than the hardware, so batch size, learning rate and
precision have one source. A training pipeline fills them with the numbers it uses::

    ds = fill_auto(OmegaConf.to_container(cfg.hardware.deepspeed),
                   TrainingNumbers(micro_batch_size=8, grad_accum=4, world_size=world,
                                   precision=cfg.hardware.precision, lr=1e-4, ...))
    engine, optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=ds)

Explicit (non-``"auto"``) values that contradict those numbers are errors, not silently kept, except
for choices such as ``optimizer.params.torch_adam`` (``"auto"``: torch's AdamW on the CPU, where
DeepSpeed's Adam kernels would first be compiled, and DeepSpeed's FusedAdam on CUDA).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

from lsvcr.errors import ConfigError
from lsvcr.utils.precision import PRECISIONS

AUTO = "auto"


@dataclass(frozen=True)
class TrainingNumbers:
    """What the training loop really uses; ``None`` = not known (an ``"auto"`` needing it is an error)."""

    micro_batch_size: int
    grad_accum: int = 1
    world_size: int = 1
    precision: str = "fp32"  # fp32 | bf16 | fp16
    lr: float | None = None
    weight_decay: float | None = None
    betas: tuple[float, float] | None = None
    eps: float | None = None
    grad_clip: float | None = None
    warmup_steps: int | None = None
    total_steps: int | None = None
    hidden_size: int | None = None  # sizes ZeRO's communication buckets, as HF does
    accelerator: str | None = None  # cpu | cuda: picks the optimizer's implementation (torch_adam)


def _betas(n: TrainingNumbers):
    return None if n.betas is None else [float(b) for b in n.betas]


def _square(n: TrainingNumbers, scale: float):
    return None if n.hidden_size is None else int(scale * n.hidden_size * n.hidden_size)


# dotted path in the DeepSpeed JSON -> its value from the training numbers
FILLS: dict[str, Callable[[TrainingNumbers], Any]] = {
    "train_micro_batch_size_per_gpu": lambda n: n.micro_batch_size,
    "gradient_accumulation_steps": lambda n: n.grad_accum,
    "train_batch_size": lambda n: n.micro_batch_size * n.grad_accum * n.world_size,
    "gradient_clipping": lambda n: n.grad_clip,
    "bf16.enabled": lambda n: n.precision == "bf16",
    "fp16.enabled": lambda n: n.precision == "fp16",
    "optimizer.params.lr": lambda n: n.lr,
    "optimizer.params.betas": _betas,
    "optimizer.params.eps": lambda n: n.eps,
    "optimizer.params.weight_decay": lambda n: n.weight_decay,
    "scheduler.params.warmup_min_lr": lambda n: 0.0,
    "scheduler.params.warmup_max_lr": lambda n: n.lr,
    "scheduler.params.warmup_num_steps": lambda n: n.warmup_steps,
    "scheduler.params.total_num_steps": lambda n: n.total_steps,
    # torch's AdamW on the CPU (DeepSpeed's CPU Adam ops need a C++ build), its fused Adam on CUDA
    "optimizer.params.torch_adam": lambda n: None if n.accelerator is None else n.accelerator == "cpu",
    "zero_optimization.reduce_bucket_size": lambda n: _square(n, 1.0),
    "zero_optimization.stage3_prefetch_bucket_size": lambda n: _square(n, 0.9),
    "zero_optimization.stage3_param_persistence_threshold": lambda n: None if n.hidden_size is None
    else 10 * n.hidden_size,
}
# tuning knobs: without a hidden size (or device), dropping them leaves DeepSpeed's own defaults
_OPTIONAL = {"zero_optimization.reduce_bucket_size", "zero_optimization.stage3_prefetch_bucket_size",
             "zero_optimization.stage3_param_persistence_threshold", "optimizer.params.torch_adam"}
# choices, not facts: an explicit value is kept even where "auto" would pick the other
_CHOICES = {"optimizer.params.torch_adam"}


def fill_auto(config: dict, numbers: TrainingNumbers, prefix: str = "hardware.deepspeed") -> dict:
    """A copy of ``config`` with every ``"auto"`` replaced by its value from ``numbers``.

    Raises :class:`ConfigError` (naming ``prefix.<key>``) for an ``"auto"`` no number fills, and for
    an explicit value that disagrees with ``numbers`` (e.g. ``bf16.enabled: true`` with fp32).
    """
    if numbers.precision not in PRECISIONS:
        raise ConfigError(f"precision must be fp32, bf16 or fp16, got {numbers.precision!r}")
    out = copy.deepcopy(config)
    for path, parent, key in list(_leaves(out)):
        value, fill = parent[key], FILLS.get(path)
        wanted = fill(numbers) if fill else None
        if value != AUTO:
            if wanted is not None and value != wanted and path not in _CHOICES:
                raise ConfigError(f"{prefix}.{path} is {value!r} but the training config gives {wanted!r}; "
                                  f"set it to \"auto\" or make the two agree")
        elif wanted is not None:
            parent[key] = wanted
        elif path in _OPTIONAL:
            del parent[key]
        else:
            why = "nothing fills it" if fill is None else "the training config gives no value for it"
            raise ConfigError(f"{prefix}.{path} is \"auto\" but {why}")
    return out


def _leaves(node: dict, prefix: str = ""):
    """``(dotted path, parent dict, key)`` of every non-dict value under ``node``."""
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _leaves(value, path + ".")
        else:
            yield path, node, key
