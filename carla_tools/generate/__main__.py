"""``python -m carla_tools.generate out=DIR [preset=demo] [key=value ...]`` (Hydra).

Examples::

    python -m carla_tools.generate preset=demo out=/tmp/demo_gen
    python -m carla_tools.generate out=data/town clips.count=1000 workers=8
    # a cluster: one job per shard (hydra-submitit-launcher), then merge the CityDB shards
    python -m carla_tools.generate -m out=data/town shard=0,1,2,3 num_shards=4 \\
        hydra/launcher=submitit_slurm
    python -m carla_tools.generate out=data/town stage=merge

Every key is a field of :class:`carla_tools.generate.GenerateSettings` (defaults there;
``--cfg job`` prints the resolved config); see ``docs/generate.md``.
"""

from __future__ import annotations

import logging
import warnings

import hydra
from omegaconf import DictConfig

from carla_tools.generate.config import register, settings_from_config
from carla_tools.generate.pipeline import generate, merge_shards, summary_json
from cityenv.config import config_dir

# The preset group lives in configs/generate/ and is added with hydra.searchpath; Hydra warns
# that a package without __init__.py "is not available" although it loads from it fine.
warnings.filterwarnings("ignore", message=r"provider=hydra\.searchpath.*cityenv.*not available")

log = logging.getLogger("carla_tools.generate")

register()  # the schema must be in the ConfigStore before Hydra composes generate.yaml


@hydra.main(version_base=None, config_path=str(config_dir()), config_name="generate")
def main(cfg: DictConfig) -> None:
    """Generate (or resume) one shard, or merge the shards' CityDBs (``stage=merge``)."""
    try:
        settings = settings_from_config(cfg)
    except ValueError as error:  # a value out of range or an unknown name: no traceback needed
        raise SystemExit(f"python -m carla_tools.generate: {error}") from None
    if settings.stage == "merge":
        added = merge_shards(settings.out, settings.city, settings.progress)
        log.info("merged %d panoramas into %s", added, settings.out / "citydb")
        return
    summary = generate(settings)
    log.info("done: %s", summary_json(summary))


if __name__ == "__main__":
    main()
