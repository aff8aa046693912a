"""A "world model" that is the world: the simulator's true renders of the camera's poses.

An agent trained in a world model should work in the world it models. The built-in town can
render the ground truth of any camera pose, so ``CityWorld-TownTrue-v0`` (the same task, spaces
and reward as ``CityWorld-Town-v0``) puts :class:`TrueRenderWorldModel` where the world model
was: train in one, evaluate in the other, and the gap in success says whether the world model is
good enough to train agents in (``python -m policies.transfer``, docs/agents.md).

Renderers come from simulator packages, which the library never imports, through the registry
:data:`RENDERERS` (entry-point group ``cityenv.renderers``; ``town`` =
``carla_tools.eval_render:town_renderer``). A renderer has ``render(trajectory, camera, *,
time, weather) -> (frames, dynamic)`` and ``close()``; a factory is ``factory(spec) ->
renderer`` (:mod:`cityenv.eval.render` describes the protocol; the evaluation's registry is this
one).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from cityenv.errors import ConfigError, ShapeMismatchError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose, Trajectory
from cityenv.registry import Registry
from cityenv.worldmodel.base import ChunkOutput, ChunkReferences, WorldModel

__all__ = ["DEFAULT_TIME", "RENDERERS", "TrueRenderWorldModel"]

RENDERERS: Registry[Any] = Registry(
    "ground-truth renderer",
    "cityenv.renderers",
    advice=(
        "Renderers come from installed packages (entry-point group 'cityenv.renderers'; the "
        "built-in 'town' from carla_tools: pip install -e . in a checkout), or register one "
        "with RENDERERS.register(name, factory)."
    ),
)
"""Renderer name -> ``factory(spec) -> renderer`` (group ``cityenv.renderers``)."""

DEFAULT_TIME = datetime(2024, 5, 1, 3, 0, tzinfo=timezone.utc)
"""World time of an episode's first frame: midday at the built-in town's anchor (clear noon)."""


class TrueRenderWorldModel(WorldModel):
    """The true frames of each chunk, rendered by a simulator; references are ignored.

    Args:
        renderer: An open renderer (``render(trajectory, camera, *, time, weather)``,
            ``close()``).
        time: World time (UTC) of each episode's first frame; chunks follow the episode's clock.
        weather: The simulator's weather name (``clear``, ``overcast``, ``wet``, ``fog`` for
            the town).
    """

    def __init__(
        self, renderer: Any, *, time: datetime = DEFAULT_TIME, weather: str = "clear"
    ) -> None:
        self.renderer, self.time, self.weather = renderer, time, weather
        self.camera: PinholeCamera | None = None

    @classmethod
    def create(
        cls,
        renderer: str = "town",
        spec: Any = None,
        time: str | datetime | None = None,
        weather: str = "clear",
    ) -> TrueRenderWorldModel:
        """The environment's factory (``world_model="truth"``).

        Args:
            renderer: A name of :data:`RENDERERS`.
            spec: The world's options for the factory (the town's
                :class:`~cityenv.envs.town.TownSpec` or its mapping; the env passes its own).
            time: ISO time (``"2024-05-01T03:00:00+00:00"``) or a datetime; ``None`` =
                :data:`DEFAULT_TIME`.
            weather: The simulator's weather name.

        Raises:
            UnknownNameError: If no renderer has that name ("Did you mean ...?").
            ConfigError: If ``time`` is not an ISO time.
        """
        return cls(RENDERERS.get(renderer)(spec), time=_time(time), weather=weather)

    # --- WorldModel API -------------------------------------------------------------------------
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
        """The true frame at ``pose`` (``start_image``, ``prompt`` and ``generator`` unused:
        the world is what it is)."""
        self.camera, self.prompt = camera, prompt
        return self._render(Trajectory.from_poses([pose]))[0]

    def generate(self, trajectory: Trajectory, references: ChunkReferences) -> ChunkOutput:
        """The true frames of the chunk's poses, uint8 ``(L, H, W, 3)``."""
        if self.camera is None:
            raise RuntimeError("reset() must be called before generate(); env.reset() does it.")
        frames = self._render(trajectory)
        return ChunkOutput(
            frames, None, None, references, {"renderer": type(self.renderer).__name__}
        )

    def close(self) -> None:
        """Release the renderer (the simulator's GL context)."""
        self.renderer.close()

    def _render(self, trajectory: Trajectory) -> np.ndarray:
        assert self.camera is not None
        start = self.time + timedelta(seconds=float(trajectory.timestamps[0]))
        frames, _ = self.renderer.render(trajectory, self.camera, time=start, weather=self.weather)
        frames = np.asarray(frames)
        expected = (len(trajectory), self.camera.height, self.camera.width, 3)
        if frames.shape != expected or frames.dtype != np.uint8:
            raise ShapeMismatchError(
                f"a ground-truth renderer must return uint8 frames of shape {expected}, got "
                f"{frames.dtype} {frames.shape}; fix the renderer's render()."
            )
        return frames


def _time(value: str | datetime | None) -> datetime:
    if value is None:
        return DEFAULT_TIME
    if isinstance(value, datetime):
        return value
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(
            f"truth world model time must be an ISO time like '2024-05-01T03:00:00+00:00', "
            f"got {value!r}."
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
