"""``python -m cityenv.train [key=value ...]`` (and under ``torchrun``): see ``docs/train.md``.

Examples::

    python -m cityenv.train data.root=/data/town model=tiny optim.steps=200 out=runs/tiny
    python -m cityenv.train out=runs/tiny resume=latest optim.steps=400
    torchrun --nproc_per_node=8 -m cityenv.train data.root=/data/town model=swm-sf \\
        parallel.strategy=fsdp out=runs/sf
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from cityenv.cli import take_verbose_flag, typed_errors
from cityenv.config import config_dir
from cityenv.train.config import TrainConfig, register_configs

log = logging.getLogger("cityenv.train")

register_configs()


@hydra.main(version_base=None, config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> None:
    """Train and log where the run went."""
    from cityenv.train.app import run

    config: TrainConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    with typed_errors():  # message and exit status 2; traceback with --verbose
        result = run(config)
    log.info(
        "%d steps done in %.1f s; last checkpoint %s",
        result.step,
        result.seconds,
        result.checkpoint,
    )


def _quiet_other_ranks() -> None:
    """Only rank 0 writes Hydra's files and logs into the (shared) run folder."""
    if int(os.environ.get("RANK", "0")) > 0:
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled"]


if __name__ == "__main__":
    take_verbose_flag()
    _quiet_other_ranks()
    main()
