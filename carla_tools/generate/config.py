"""The Hydra schema of ``python -m carla_tools.generate``: the settings dataclasses, registered.

:func:`register` stores :class:`GenerateConfig` (the run's :class:`GenerateSettings` plus the
stage to run) in Hydra's ConfigStore as ``generate_schema``; ``configs/generate.yaml`` lists it
first in its defaults and sets only values that differ from the dataclasses' defaults. So every
key of the command line is a field of the settings (``clips.count``, ``sim.options.seed``,
``cell_m``), typed: Hydra refuses a value of the wrong type and a key the schema lacks, naming
it, and the dataclasses check values and names when the config becomes settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from carla_tools.generate.settings import GenerateSettings
from cityenv.errors import check_name

__all__ = ["SCHEMA_NAME", "STAGES", "GenerateConfig", "register", "settings_from_config"]

SCHEMA_NAME = "generate_schema"
"""Name of the schema in Hydra's ConfigStore (the first entry of ``generate.yaml``'s defaults)."""

STAGES = ("generate", "merge")
"""What a run does: render (or resume) one shard, or merge the shards' CityDBs."""


@dataclass
class GenerateConfig(GenerateSettings):
    """The command line's config: a :class:`GenerateSettings` and the stage to run.

    Attributes:
        stage: ``generate`` (render or resume one shard) or ``merge`` (merge the per-shard
            CityDBs of a sharded run into ``out/citydb``).
    """

    stage: str = "generate"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.stage = check_name("stage", self.stage, STAGES)


def register(store: ConfigStore | None = None) -> None:
    """Store :class:`GenerateConfig` as :data:`SCHEMA_NAME` in Hydra's ConfigStore."""
    (store or ConfigStore.instance()).store(name=SCHEMA_NAME, node=GenerateConfig)


def settings_from_config(cfg: DictConfig | Mapping[str, Any]) -> GenerateConfig:
    """Typed settings from a composed config (or a plain nested mapping of overrides).

    The config is merged onto the schema, so a plain mapping is checked like the command line.

    Raises:
        omegaconf.errors.ValidationError: For a value of the wrong type.
        omegaconf.errors.ConfigKeyError: For a key the schema lacks (the message names it).
        omegaconf.errors.MissingMandatoryValue: If ``out`` is not given.
        ValueError: For a value out of range or an unknown name (``UnknownNameError`` says
            "Did you mean ...?").
    """
    merged = OmegaConf.merge(OmegaConf.structured(GenerateConfig), cfg)
    return OmegaConf.to_object(merged)
