"""The `lsvcr` command: compose the Hydra config, run the chosen stage's pipeline.

    lsvcr                                    # prepare the embedded world, evaluate popularity
    lsvcr stage=prepare data.num_users=5000  # another world size
    lsvcr -m stage=evaluate task=rec,comm_rank model/sr=popularity,random
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.utils import get_method
from omegaconf import DictConfig

from lsvcr.errors import UserError
from lsvcr.launch import maybe_launch

log = logging.getLogger("lsvcr")


def _user_error(e: BaseException) -> UserError | None:
    """The :class:`UserError` behind ``e`` (Hydra's instantiate wraps what a ``_target_`` raises)."""
    while e is not None:
        if isinstance(e, UserError):
            return e
        e = e.__cause__ or e.__context__
    return None


def run(cfg: DictConfig):
    """Run ``cfg.stage``'s pipeline, here or in the ranks ``cfg.hardware`` asks for (`lsvcr.launch`);
    a user error becomes one message and exit status 2."""
    try:
        if maybe_launch(cfg):
            return None
        return get_method(cfg.stage._target_)(cfg)
    except Exception as e:
        err = _user_error(e)
        if err is None:
            raise
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


@hydra.main(version_base="1.3", config_path="pkg://lsvcr.conf", config_name="config")
def main(cfg: DictConfig):
    return run(cfg)


if __name__ == "__main__":
    main()
