"""The built-in procedural town: a seeded street world rendered with moderngl (headless EGL)."""

from __future__ import annotations

from carla_tools.conditions import WEATHERS
from carla_tools.town.sky import Lighting
from carla_tools.town.town import SEOUL, STREET_VIEW_HEADINGS, ProceduralTown, RoadNetwork

__all__ = ["SEOUL", "STREET_VIEW_HEADINGS", "WEATHERS", "Lighting", "ProceduralTown", "RoadNetwork"]
