"""``python -m carla_tools.generate out=DIR [preset=demo] [key=value ...]`` (Hydra).

Examples::

    python -m carla_tools.generate preset=demo out=/tmp/demo_gen
    python -m carla_tools.generate out=data/town clips.count=1000 workers=8
    # a cluster: one job per shard (hydra-submitit-launcher), then merge the CityDB shards
    python -m carla_tools.generate -m out=data/town shard=0,1,2,3 num_shards=4 \\
        hydra/launcher=submitit_slurm
    python -m carla_tools.generate out=data/town stage=merge

See ``docs/generate.md``.
"""

from __future__ import annotations

import logging
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from carla_tools.generate.pipeline import (
    ClipSettings,
    GenerateSettings,
    ReferenceSettings,
    SimSettings,
    generate,
    merge_shards,
    summary_json,
)
from cityenv.config import config_dir

# The preset group lives in configs/generate/ and is added with hydra.searchpath; Hydra warns
# that a package without __init__.py "is not available" although it loads from it fine.
warnings.filterwarnings("ignore", message=r"provider=hydra\.searchpath.*cityenv.*not available")

log = logging.getLogger("carla_tools.generate")


def _time(text: str) -> datetime:
    """An ISO 8601 time as an aware UTC datetime (``Z`` and naive mean UTC)."""
    when = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return (
        when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    )


def settings_from_config(cfg: DictConfig | dict[str, Any]) -> GenerateSettings:
    """Typed settings from the Hydra config (the only place that reads it)."""
    c: dict[str, Any] = (
        OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    )
    ref, clips = dict(c["references"]), dict(c["clips"])
    ref["times"] = tuple(_time(t) for t in ref["times"])
    clips["times"] = tuple(_time(t) for t in clips["times"])
    clips["kinds"], clips["weathers"] = tuple(clips["kinds"]), tuple(clips["weathers"])
    return GenerateSettings(
        out=Path(c["out"]),
        sim=SimSettings(c["sim"]["backend"], dict(c["sim"].get("options") or {})),
        references=ReferenceSettings(**ref),
        clips=ClipSettings(**clips),
        cell_m=float(c["split"]["cell_m"]),
        test_fraction=float(c["split"]["test_fraction"]),
        seed=int(c["seed"]),
        workers=int(c["workers"]),
        shard=int(c["shard"]),
        num_shards=int(c["num_shards"]),
        city=str(c["city"]),
        progress=bool(c["progress"]),
    )


@hydra.main(version_base=None, config_path=str(config_dir()), config_name="generate")
def main(cfg: DictConfig) -> None:
    """Generate (or resume) one shard, or merge the shards' CityDBs (``stage=merge``)."""
    settings = settings_from_config(cfg)
    if cfg.stage == "merge":
        added = merge_shards(settings.out, settings.city, settings.progress)
        log.info("merged %d panoramas into %s", added, settings.out / "citydb")
        return
    if cfg.stage != "generate":
        raise ValueError(f"stage must be 'generate' or 'merge', got {cfg.stage!r}.")
    summary = generate(settings)
    log.info("done: %s", summary_json(summary))


if __name__ == "__main__":
    main()
