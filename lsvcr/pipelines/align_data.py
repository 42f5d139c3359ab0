"""stage=align's data side: the step plan, one rank's micro-batches of an epoch, the collator of the
config, and the per-micro-batch dropout seed (:mod:`lsvcr.pipelines.align` trains on them)."""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from lsvcr.data.align_batch import AlignCollator, AugmentConfig, SampleRandom
from lsvcr.data.history import HistoryGatherer
from lsvcr.data.prompts import PromptBuilder
from lsvcr.errors import ConfigError
from lsvcr.pipelines.align_engine import Plan


def plan_steps(cfg: DictConfig, samples: int, world: int) -> Plan:
    """The batch arithmetic of ``align.*`` over ``samples`` on ``world`` processes (bad values: one error)."""
    a = cfg.align
    micro, accum = int(a.micro_batch_size), int(a.grad_accum)
    if min(micro, accum, int(a.epochs), int(a.log_every), int(a.save_every or 1)) < 1:
        raise ConfigError("align.micro_batch_size, grad_accum, epochs, log_every and save_every must be positive")
    per_epoch = samples // (micro * accum * world)  # the incomplete last step of an epoch is dropped
    if per_epoch == 0:
        raise ConfigError(f"align: {samples} training samples are fewer than one optimizer step takes "
                          f"({micro} x {accum} x {world} processes); lower align.micro_batch_size or align.grad_accum")
    total = per_epoch * int(a.epochs)
    if a.max_steps is not None:
        total = min(total, int(a.max_steps))
    return Plan(micro, accum, world, samples, per_epoch, total)


class AlignEpoch(Dataset):
    """One rank's micro-batches of one epoch: item ``b`` is micro-batch ``b`` as an ``AlignBatch``.

    Global micro-batch ``b`` is ``order[b * micro * world : (b + 1) * micro * world]`` and rank ``r``
    takes its ``r``-th slice, so the samples of an optimizer step do not depend on the process count.
    Each sample's random draws come from ``(seed, epoch, its position in the order)``
    (:class:`SampleRandom`), so any batch can be built alone and the process count changes none.
    """

    def __init__(self, items: np.ndarray, collator: AlignCollator, plan: Plan, rank: int, seed: int, epoch: int):
        self.items, self.collator, self.plan = items, collator, plan
        self.rank, self.seed, self.epoch = rank, seed, epoch
        self.order = np.random.default_rng([seed, epoch]).permutation(len(items))

    def __len__(self) -> int:
        return self.plan.steps_per_epoch * self.plan.grad_accum

    def __getitem__(self, b: int):
        p = self.plan
        start = (b * p.world + self.rank) * p.micro_batch_size
        rng = SampleRandom([[self.seed, self.epoch, i] for i in range(start, start + p.micro_batch_size)])
        items = self.items[self.order[start:start + p.micro_batch_size]]
        return self.collator.encode(self.collator.views(items, rng), rng)


def unbatched(x):
    """The DataLoader's ``collate_fn``: an :class:`AlignEpoch` item is a whole micro-batch already."""
    return x


def collator(cfg: DictConfig, ds, tokenizer, split: str = "train", train: bool = True) -> AlignCollator:
    """The training collator, or (``train=False``) the deterministic one of the held-out evaluation."""
    a = cfg.align
    try:
        prompts = PromptBuilder(OmegaConf.to_container(cfg.prompts, resolve=True), tokenizer,
                                a.max_prompt_tokens, a.max_response_tokens)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    gatherer = HistoryGatherer(ds, cfg.data.max_phis_len, cfg.data.max_chis_len)
    aug = AugmentConfig(**OmegaConf.to_container(a.augment, resolve=True))
    return AlignCollator(ds, gatherer, prompts, cfg.embed.max_length, aug, seed=int(cfg.seed), split=split,
                         train=train, max_item_comments=int(a.max_item_comments),
                         max_position=int(cfg.model.sr.max_position))


def seed_step(seed: int, epoch: int, micro: int, rank: int) -> None:
    """Dropout of one micro-batch: the same in a resumed run."""
    torch.manual_seed(int(np.random.SeedSequence([seed, epoch, micro, rank]).generate_state(1)[0]))
