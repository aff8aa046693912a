"""The synthetic data generator: street-view references (a CityDB) and target clips.

``python -m carla_tools.generate out=DIR preset=demo`` (Hydra; ``docs/generate.md``). The
Python API takes plain settings::

    from carla_tools.generate import GenerateSettings, generate
    summary = generate(GenerateSettings(out=Path("/tmp/gen")))

Modules: :mod:`~carla_tools.generate.trajectories` (vehicle, pedestrian and free-camera paths),
:mod:`~carla_tools.generate.references` (capture points), :mod:`~carla_tools.generate.clips`
(clip plans and rendering), :mod:`~carla_tools.generate.store` (the clip store writer; the
format and the reader are :mod:`cityenv.citydb.clips`, ``docs/clips.md``),
:mod:`~carla_tools.generate.split` (train / test by area),
:mod:`~carla_tools.generate.captions`, :mod:`~carla_tools.generate.settings` (typed settings,
the one source of defaults), :mod:`~carla_tools.generate.config` (their Hydra registration),
:mod:`~carla_tools.generate.pipeline` (the run).
"""

from __future__ import annotations

from carla_tools.generate.pipeline import Summary, generate, merge_shards
from carla_tools.generate.settings import (
    ClipSettings,
    GenerateSettings,
    ReferenceSettings,
    SimSettings,
)
from carla_tools.generate.split import AreaSplit, split_traversals
from carla_tools.generate.store import ClipStoreWriter
from carla_tools.generate.trajectories import KINDS, LaneGraph, make_trajectory

__all__ = [
    "KINDS",
    "AreaSplit",
    "ClipSettings",
    "ClipStoreWriter",
    "GenerateSettings",
    "LaneGraph",
    "ReferenceSettings",
    "SimSettings",
    "Summary",
    "generate",
    "make_trajectory",
    "merge_shards",
    "split_traversals",
]
