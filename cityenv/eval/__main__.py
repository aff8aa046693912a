"""``python -m cityenv.eval [key=value ...]``: see ``docs/benchmark.md``.

Examples::

    python -m cityenv.eval bench=town                                   # the warp row
    python -m cityenv.eval bench=town model.preset=tiny ablations=[no_sink]
    python -m cityenv.eval bench=town model.path=runs/tiny/world_model out=runs/eval-tiny
    python -m cityenv.eval bench.root=/data/mycity bench.name=mycity   # your own city
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from cityenv.config import config_dir
from cityenv.errors import CityEnvError
from cityenv.eval.app import EvalConfig, register_configs

log = logging.getLogger("cityenv.eval")

register_configs()


@hydra.main(version_base=None, config_path=str(config_dir()), config_name="eval")
def main(cfg: DictConfig) -> None:
    """Evaluate and log where the report went."""
    from cityenv.eval.app import perceptual_metrics, run

    config: EvalConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    try:
        result = run(config, row_metrics=[perceptual_metrics(config)])
    except CityEnvError as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s: %s", type(error).__name__, error)
        sys.exit(2)
    log.info("report: %s", result.report)


if __name__ == "__main__":
    main()
