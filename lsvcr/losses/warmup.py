"""A warm-up of the alignment losses' temperature and contrast weight over the first optimizer steps.

At the paper's temperature (0.07) the in-batch InfoNCE terms of a randomly initialised SR start far
from chance: a cosine spread of 0.3 becomes logits ~4 apart, and the loss starts above
ln(candidates) (held-out rec_loss 2.17 and 2.65 at step 0 in the two SmolLM2 runs, ln 4 = 1.39). Before the SR can tell a target from the other
candidates, the quickest way down is to make every user representation alike (all logits equal,
the loss at chance): the collapse the held-out ``sr_cosine`` showed with SmolLM2 on ml-100k
(0.783 at step 0, 0.975 at step 24 with ``align.standardize``). A warm-up starts
from a softer temperature (logits close together, so the gradient that reaches the SR is the
discriminative one rather than "shrink the spread") and/or without the contrast terms, and reaches
the paper's values after ``steps`` optimizer steps:

- temperature: geometric from ``temperature_start`` to ``temperature`` (equal ratios per step, the
  natural scale of a temperature);
- contrast weight: linear from 0 to ``contrast_weight``.

Held-out evaluations and checkpoints always see the final values, so their losses compare across
steps and a checkpoint's ``alignment.json`` holds the run's settings, not a point of the ramp.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class LossWarmup:
    """Temperature and contrast weight as functions of the number of optimizer steps done.

    Args:
        steps: optimizer steps of the warm-up (>= 1); from then on the final values hold.
        temperature, contrast_weight: the final (paper's) values.
        temperature_start: the temperature before the first step; None = ``temperature`` throughout.
        contrast_from_zero: the contrast weight starts at 0 (else ``contrast_weight`` throughout).
    """

    steps: int
    temperature: float
    contrast_weight: float
    temperature_start: float | None = None
    contrast_from_zero: bool = False

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps={self.steps}: a warm-up lasts at least one optimizer step")
        for name in ("temperature", "temperature_start"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value}: a temperature is a finite number > 0")

    def at(self, step: int) -> tuple[float, float]:
        """``(temperature, contrast weight)`` for the micro-batches of the optimizer step after ``step`` done."""
        f = min(max(step, 0) / self.steps, 1.0)
        t = self.temperature
        if self.temperature_start is not None:
            t = self.temperature_start * (self.temperature / self.temperature_start) ** f
        return t, self.contrast_weight * (f if self.contrast_from_zero else 1.0)

    def apply(self, model: nn.Module, step: int) -> None:
        """Set ``model.temperature`` and ``model.contrast_weight`` (an :class:`AlignmentModel`) for ``step``."""
        model.temperature, model.contrast_weight = self.at(step)

    @contextlib.contextmanager
    def final(self, model: nn.Module) -> Iterator[None]:
        """The final values on ``model`` inside the block (held-out evaluation, saving); then the ramp's again."""
        ramp = model.temperature, model.contrast_weight
        model.temperature, model.contrast_weight = self.temperature, self.contrast_weight
        try:
            yield
        finally:
            model.temperature, model.contrast_weight = ramp
