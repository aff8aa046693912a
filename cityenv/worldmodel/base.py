"""The world-model interface: a chunk of camera poses + retrieved references -> video frames.

The environment turns an action into a trajectory chunk, retrieves street-view references for it
(:class:`cityenv.citydb.Retriever`), loads them
(:class:`~cityenv.worldmodel.referencing.ReferenceLoader`) and asks the world model for the chunk's
frames. Implementations: :class:`~cityenv.worldmodel.warp.WarpWorldModel` (non-learned retrieval +
forward splatting) and :class:`~cityenv.worldmodel.diffusion.DiffusionWorldModel` (SWM), both
behind this interface. This module holds the interface and the chunk value types only; it imports
no database code. Frames: ENU world, OpenCV cameras, camera-to-world poses, metric z-depth
(0 = none).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose, Trajectory

if TYPE_CHECKING:
    from cityenv.worldmodel.referencing import ReferenceView

__all__ = ["ChunkOutput", "ChunkReferences", "WorldModel"]


@dataclass(eq=False)
class ChunkReferences:
    """The references of one chunk of ``L`` frames, loaded.

    Attributes:
        views: Up to ``K`` references, best first.
        per_frame: int ``(L,)``: index into ``views`` of each frame's nearest reference (the one to
            forward-splat), -1 where there is none.
        sink: The lookahead-sink reference near the chunk's endpoint, or ``None``.
    """

    views: list[ReferenceView]
    per_frame: np.ndarray
    sink: ReferenceView | None = None

    @classmethod
    def none(cls, num_frames: int) -> ChunkReferences:
        """No references for a chunk of ``num_frames`` frames."""
        return cls([], np.full(int(num_frames), -1, np.int64), None)

    @property
    def empty(self) -> bool:
        """True when the chunk has neither references nor a sink."""
        return not self.views and self.sink is None


@dataclass(eq=False)
class ChunkOutput:
    """What a world model generated for one chunk of ``L`` frames, and what it used.

    Attributes:
        frames: uint8 ``(L, H, W, 3)``.
        warps: The geometric-referencing input: each frame's nearest reference forward-splatted
            into it, uint8 ``(L, H, W, 3)``, or ``None`` if the model uses none.
        masks: bool ``(L, H, W)``, true where ``warps`` holds a splatted pixel, or ``None``.
        references: The references the model was given.
        info: Model-specific figures (timings, fill fractions, ...), JSON-serialisable values.
    """

    frames: np.ndarray
    warps: np.ndarray | None
    masks: np.ndarray | None
    references: ChunkReferences
    info: dict[str, Any] = field(default_factory=dict)


class WorldModel(ABC):
    """Generates the video of a camera moving through a city, grounded in retrieved references.

    Usage: :meth:`reset` once per episode, then :meth:`generate` once per trajectory chunk.
    """

    @abstractmethod
    def reset(
        self,
        *,
        pose: Pose,
        camera: PinholeCamera,
        references: ChunkReferences,
        start_image: np.ndarray | None = None,
        prompt: str | None = None,
        generator: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Start an episode at ``pose``.

        Args:
            pose: The first frame's camera-to-world pose (ENU).
            camera: Intrinsics of the frames to generate (their size too).
            references: References retrieved for the first frame (a chunk of one frame).
            start_image: A start image, uint8 ``(H, W, 3)``, taken at ``pose``: its weather and
                cars carry on. ``None`` lets the model make the first frame from the references.
            prompt: Text that shapes the scene ("golden sunset"); models may ignore it.
            generator: Source of randomness (``env.np_random``); deterministic models ignore it.

        Returns:
            The first frame, uint8 ``(H, W, 3)``.
        """

    @abstractmethod
    def generate(self, trajectory: Trajectory, references: ChunkReferences) -> ChunkOutput:
        """Generate the frames of one chunk.

        Args:
            trajectory: The chunk's ``L`` camera-to-world poses (ENU) and timestamps.
            references: The chunk's loaded references (possibly none).

        Returns:
            The frames and what the model used.
        """

    def check_settings(self, camera: PinholeCamera, chunk_length: int) -> None:  # noqa: B027
        """Raise early if the model cannot generate chunks of ``chunk_length`` frames of
        ``camera``'s size (a clear error at construction rather than at the first step).

        The default accepts everything.
        """

    @property
    def native_size(self) -> tuple[int, int] | None:
        """``(width, height)`` of the frames this model is made for, or ``None`` when any size
        does (the environment then uses its default, 256 x 256). A trained model returns the
        size it was trained on: the environment's ``width=None``/``height=None`` take it."""
        return None

    def set_prompt(self, prompt: str | None) -> None:
        """Change the text prompt from the next chunk on (models that ignore prompts keep it)."""
        self.prompt = prompt

    prompt: str | None = None
