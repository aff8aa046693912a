"""cityenv.worldmodel: the world-model interface and its implementations."""

from __future__ import annotations

from cityenv.worldmodel.base import (
    ChunkOutput,
    ChunkReferences,
    ReferenceLoader,
    ReferenceView,
    WorldModel,
)
from cityenv.worldmodel.warp import WarpWorldModel

__all__ = [
    "ChunkOutput",
    "ChunkReferences",
    "ReferenceLoader",
    "ReferenceView",
    "WarpWorldModel",
    "WorldModel",
]
