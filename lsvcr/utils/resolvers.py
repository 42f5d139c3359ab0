"""OmegaConf resolvers the configs use; registered when `lsvcr` is imported."""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def register() -> None:
    # ${cwd:} instead of ${hydra:runtime.cwd}: it also resolves where Hydra's runtime config does
    # not exist yet (the multirun sweeper reads hydra.sweep.dir first) or at all (launched ranks).
    if not OmegaConf.has_resolver("cwd"):
        OmegaConf.register_new_resolver("cwd", os.getcwd)
