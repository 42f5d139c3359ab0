"""Held-out evaluation of ``stage=align``: the alignment losses and diagnostics on validation samples
the run never trains on (``align.eval_samples``, ``align.eval_every``, ``align.eval_initial``,
``align.collapse_cosine``).

The samples are a fixed subset of the prepared dataset's *val* split of the run's tasks, drawn once
from ``seed`` in random order (so a joint batch mixes both tasks): the largest multiple of one global
micro-batch (``align.micro_batch_size`` x processes) that is at most ``align.eval_samples``. The
batches come from the evaluation collator (template 0, the hottest comment, the first positive, the
most recent comments of an item, no two-view augmentation, no random positions: the SR in eval mode
numbers positions as fine-tuning does), so every evaluation reads the same batches. Global batch
``b`` is ``items[b * m * w : (b + 1) * m * w]`` and rank ``r`` takes its ``r``-th slice, as in
training: every batch has ``m * w`` in-batch candidates whatever the process count, which makes the
in-batch top-1's chance level ``1 / (m * w)``, logged beside it.

One evaluation runs the model in eval mode without gradients (:meth:`Engine.evaluating`, which also
restores the random number generators, so the training trajectory is that of a run without it),
averages every loss and diagnostic over the micro-batches and the ranks, and writes ``val/<key>`` to
the logger, a line to ``<run>/align_eval.jsonl`` and to the log. A val ``llm_cosine`` or
``sr_cosine`` above ``align.collapse_cosine`` is a warning (and a ``collapse`` entry of align.json).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from lsvcr.data.align_batch import AlignBatch, AlignCollator
from lsvcr.errors import ConfigError, checked_bool, checked_int
from lsvcr.losses.align import DIAGNOSTIC_KEYS, LOSS_KEYS
from lsvcr.pipelines.align_engine import Engine
from lsvcr.utils.loggers import is_rank_zero

log = logging.getLogger("lsvcr")

EVAL_FILE, TABLE_FILE = "align_eval.jsonl", "align_eval.md"
KEYS = (*LOSS_KEYS, *DIAGNOSTIC_KEYS)
TOP1_KEYS = ("rec_top1", "llm_sr_top1")  # in-batch retrieval: chance = 1 / in-batch candidates
COSINE_KEYS = {"llm_cosine": "LLM", "sr_cosine": "SR"}  # the collapse checks: metric -> whose representation
_SUBSET_STREAM = 0x5EED_0E7A  # the subset's random stream: apart from the epochs' [seed, epoch] orders


@dataclass(frozen=True)
class EvalSettings:
    """``align.eval_*`` and ``align.collapse_cosine``, checked."""

    samples: int  # at most this many val samples; 0 = no held-out evaluation
    every: int | None  # optimizer steps between evaluations; None = only at the end
    initial: bool  # also at step 0, before training
    collapse_cosine: float | None  # warn above this val cosine; None = never


def eval_settings(a: DictConfig) -> EvalSettings:
    """The held-out evaluation keys of the ``align`` node; a ConfigError names a bad one."""
    samples, every = a.get("eval_samples"), a.get("eval_every")
    initial, threshold = a.get("eval_initial", False), a.get("collapse_cosine")
    samples = int(checked_int(samples, "align.eval_samples", 0,
                              "a number of val samples >= 0 (0 or null = no held-out evaluation)") or 0)
    checked_int(every, "align.eval_every", 1, "a number of optimizer steps >= 1, or null (evaluate only at the end)")
    checked_bool(initial, "align.eval_initial")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not -1.0 <= threshold <= 1.0):
        raise ConfigError(f"align.collapse_cosine={threshold}: expected a cosine in [-1, 1], or null (never warn)")
    if samples == 0 and (every is not None or initial):
        raise ConfigError(f"align.eval_every={every}, align.eval_initial={initial}: these schedule the held-out "
                          "evaluation, which align.eval_samples=0 (or null) switches off; set align.eval_samples")
    return EvalSettings(samples, every, initial, None if threshold is None else float(threshold))


def heldout_items(items: np.ndarray, cap: int, batch: int, seed: int) -> np.ndarray:
    """A fixed subset of ``items [N, 2]`` in seeded random order: ``min(cap, N)`` rounded down to a
    multiple of ``batch`` rows (every evaluation batch then has ``batch`` in-batch candidates)."""
    n = min(cap, len(items)) // batch * batch
    return items[np.random.default_rng([seed, _SUBSET_STREAM]).choice(len(items), n, replace=False)]


class HeldOut:
    """This rank's evaluation batches of the held-out ``items``: global batch ``b`` is
    ``items[b * micro * world : (b + 1) * micro * world]``, this rank its ``rank``-th slice.

    ``collator`` must be an evaluation collator (``train=False``) over the split ``items`` index;
    its batches are deterministic, so they are built once, on first use, and kept.
    """

    def __init__(self, items: np.ndarray, collator: AlignCollator, micro_batch_size: int, world: int, rank: int):
        if collator.train:
            raise ValueError("HeldOut needs an evaluation collator (train=False): no augmentation, no random draws")
        self.items, self.collator = items, collator
        self.micro, self.world, self.rank = micro_batch_size, world, rank
        self._batches: list[AlignBatch] | None = None

    @property
    def candidates(self) -> int:
        """In-batch candidates of every evaluation batch (all ranks' rows)."""
        return self.micro * self.world

    def __len__(self) -> int:
        return len(self.items) // self.candidates

    def batches(self) -> list[AlignBatch]:
        if self._batches is None:
            starts = [(b * self.world + self.rank) * self.micro for b in range(len(self))]
            self._batches = [self.collator(self.items[s:s + self.micro]) for s in starts]
        return self._batches


def build_heldout(settings: EvalSettings, items: np.ndarray, collator: AlignCollator, micro_batch_size: int,
                  world: int, rank: int, seed: int, tasks: list[str]) -> HeldOut | None:
    """The held-out set of ``items`` (the val split's), or None (switched off, or too few val samples:
    a warning says so)."""
    if settings.samples == 0:
        return None
    batch = micro_batch_size * world
    chosen = heldout_items(items, settings.samples, batch, seed)
    if len(chosen) == 0:
        log.warning("align.eval_samples=%d: the val split holds %d %s samples, fewer than one evaluation batch "
                    "(%d = align.micro_batch_size x %d processes): no held-out evaluation", settings.samples,
                    len(items), "+".join(tasks), batch, world)
        return None
    log.info("held-out evaluation: %d of %d val %s samples (align.eval_samples=%d) in %d batches of %d; every %s "
             "optimizer steps%s", len(chosen), len(items), "+".join(tasks), settings.samples, len(chosen) // batch,
             batch, settings.every or "(only at the end)", ", and before the first" if settings.initial else "")
    return HeldOut(chosen, collator, micro_batch_size, world, rank)


def evaluate(engine: Engine, heldout: HeldOut) -> dict[str, float]:
    """Every loss and diagnostic averaged over the held-out micro-batches and the ranks (each rank's
    value of a micro-batch is already its share of the global mean, see :mod:`lsvcr.losses.align`),
    plus the chance level of each in-batch top-1 (``<key>_chance``). Every rank calls it."""
    sums = defaultdict(float)
    batches = heldout.batches()
    with engine.evaluating():
        for batch in batches:
            out = engine.eval_step(batch)
            for k in KEYS:
                sums[k] += float(out[k])
    means = torch.tensor([sums[k] / len(batches) for k in KEYS], dtype=torch.float64, device=engine.device)
    values = dict(zip(KEYS, engine.mean(means).tolist()))
    return values | {f"{k}_chance": 1.0 / heldout.candidates for k in TOP1_KEYS}


def collapses(entry: dict, threshold: float | None) -> list[dict]:
    """The collapsed representations of one evaluation: ``{"step", "metric", "value"}`` for each val
    cosine above ``threshold`` (none when it is None)."""
    if threshold is None:
        return []
    return [{"step": entry["step"], "metric": k, "value": entry[k]} for k in COSINE_KEYS if entry[k] > threshold]


def record(values: dict[str, float], step: int, total_steps: int, heldout: HeldOut, settings: EvalSettings,
           path: Path, logger) -> dict:
    """One evaluation's entry: to the logger (``val/<key>``), ``<path>/align_eval.jsonl`` and the log,
    with a warning per collapsed representation. Returns the entry (values rounded like the losses)."""
    entry = {"step": step, "samples": len(heldout.items)} | {k: round(v, 6) for k, v in values.items()}
    logger.log({f"val/{k}": v for k, v in entry.items() if k != "step"}, step=step)
    if is_rank_zero():
        with (path / EVAL_FILE).open("a") as f:
            f.write(json.dumps(entry) + "\n")
    shown = [f"{k} {entry[k]:.4f}" + (f" (chance {entry[k + '_chance']:.4f})" if k in TOP1_KEYS else "") for k in KEYS]
    log.info("val at step %d/%d (%d samples): %s", step, total_steps, entry["samples"], ", ".join(shown))
    for c in collapses(entry, settings.collapse_cosine):
        if is_rank_zero():  # every rank has the same values; one warning
            log.warning("collapse: val %s %.4f > align.collapse_cosine=%s at step %d: the %s user representations "
                        "of different samples point the same way", c["metric"], c["value"], settings.collapse_cosine,
                        step, COSINE_KEYS[c["metric"]])
    return entry


def restart_file(path: Path, entries: list[dict]) -> None:
    """``<path>/align_eval.jsonl`` holding ``entries`` (a resumed run's evaluations up to its checkpoint)."""
    if is_rank_zero():
        (path / EVAL_FILE).write_text("".join(json.dumps(e) + "\n" for e in entries))


def eval_table(entries: list[dict]) -> str:
    """The evaluations as a Markdown table: one row per evaluation, every loss and diagnostic."""
    head = ["step", "samples", *KEYS, "top1 chance"]
    rows = [[str(e["step"]), str(e["samples"]), *(f"{e[k]:.4f}" for k in KEYS), f"{e['rec_top1_chance']:.4f}"]
            for e in entries]
    lines = [head, ["---:"] * len(head), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines) + "\n"


def write_table(path: Path, entries: list[dict]) -> None:
    """The table of :func:`eval_table` to ``<path>/align_eval.md`` and the log."""
    table = eval_table(entries)
    log.info("held-out evaluation (val split, %d samples):\n%s", entries[-1]["samples"], table)
    if is_rank_zero():
        (path / TABLE_FILE).write_text(f"# Held-out alignment evaluation\n\nval split samples never trained on; "
                                       f"top-1 chance = 1 / in-batch candidates.\n\n{table}")
