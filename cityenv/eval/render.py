"""Ground-truth renders for evaluation: a registry of renderers that a simulator package fills.

Two parts of the bench need frames that no recorded clip holds: prompt adherence (the same
trajectory under several conditions: clear noon, sunset, night, overcast, wet, fog) and long
1 km routes. Only a simulator can render them, and the library never imports one, so a
simulator package registers a renderer factory in :data:`GROUND_TRUTH_RENDERERS`:

- ``town``, the built-in procedural town, comes from ``carla_tools.eval_render`` through the
  entry point ``[project.entry-points."cityenv.renderers"]``; its ``spec`` is the town
  database's :class:`~cityenv.envs.town.TownSpec` (seed, blocks), so the ground truth shows the
  same town the CityDB was captured from.

A factory is ``factory(spec) -> renderer``; a renderer has
``render(trajectory, camera, *, time, weather) -> (frames, dynamic)`` and ``close()``
(:class:`GroundTruthRenderer`). :data:`CONDITIONS` names the conditions of the adherence test,
each with its UTC time, weather and the caption a prompt would use (the wording of the clip
captions the generator writes).

Example:
    >>> with contextlib.closing(open_renderer("town", TownSpec(seed=0, blocks=[2, 2]))) as renderer:
    ...     frames, dynamic = render_condition(renderer, trajectory, camera, "night")
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

from cityenv.errors import ShapeMismatchError, check_name
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Trajectory
from cityenv.registry import Registry
from cityenv.worldmodel.truth import RENDERERS

__all__ = [
    "CONDITIONS",
    "GROUND_TRUTH_RENDERERS",
    "Condition",
    "GroundTruthRenderer",
    "RendererFactory",
    "check_render",
    "get_condition",
    "open_renderer",
    "render_condition",
]


class GroundTruthRenderer(Protocol):
    """Renders a camera trajectory through a simulated world at a time and weather."""

    def render(
        self, trajectory: Trajectory, camera: PinholeCamera, *, time: datetime, weather: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Frames of every pose, the world clock at ``time`` plus each pose's timestamp offset.

        Args:
            trajectory: ``T`` camera-to-world poses (ENU world, OpenCV camera) with timestamps.
            camera: Intrinsics of every frame.
            time: World time (UTC) of the first frame: it sets the sun and the traffic.
            weather: A weather name the simulator knows (``clear``, ``overcast``, ``wet``,
                ``fog`` for the town).

        Returns:
            ``(frames, dynamic)``: uint8 ``(T, H, W, 3)`` and bool ``(T, H, W)``, true on
            moving objects (vehicles, pedestrians).
        """
        ...

    def close(self) -> None:
        """Release the simulator."""
        ...


class RendererFactory(Protocol):
    """Opens a ground-truth renderer of a world described by ``spec``."""

    def __call__(self, spec: Any = None) -> GroundTruthRenderer:
        """The renderer (close it when done).

        Args:
            spec: The world's options (a :class:`~cityenv.envs.town.TownSpec` or its mapping
                for ``town``); ``None`` = the world's defaults.
        """
        ...


# The library's registry (cityenv.worldmodel.truth), so CityWorld-TownTrue-v0 and the bench share
# one registry: a renderer registered for one is seen by the other.
GROUND_TRUTH_RENDERERS: Registry[RendererFactory] = RENDERERS
"""Renderer name -> ``factory(spec) -> GroundTruthRenderer`` (group ``cityenv.renderers``)."""


def open_renderer(name: str, spec: Any = None) -> GroundTruthRenderer:
    """Open the ground-truth renderer registered as ``name``.

    Args:
        name: A registered renderer (``"town"``).
        spec: The world's options, handed to the factory.

    Raises:
        UnknownNameError: If no renderer has that name ("Did you mean ...?").
    """
    return GROUND_TRUTH_RENDERERS.get(name)(spec)


# --- the conditions of the prompt-adherence test ---------------------------------------------
@dataclass(frozen=True)
class Condition:
    """A world condition of the prompt-adherence test.

    Attributes:
        name: Short name (``"night"``).
        time: UTC time of the first frame. The times are chosen for the built-in town's anchor
            (central Seoul, local solar time = UTC + 8.47 h) on 1 May 2024; a world anchored
            elsewhere gets another light at the same UTC time.
        weather: Weather name (``clear``, ``overcast``, ``wet``, ``fog``).
        phrase: The light and weather words of a clip caption (``"at night under a clear
            sky"``), as ``carla_tools.generate.captions.caption`` writes them for this time and
            weather.
        caption: The prompt of a car clip under the condition (the clip captions' wording,
            without the heading the trajectory adds).
    """

    name: str
    time: datetime
    weather: str
    phrase: str

    @property
    def caption(self) -> str:
        """``"a car drives along a city street <phrase>"``."""
        return f"a car drives along a city street {self.phrase}"


def _at(hour: int, minute: int = 0) -> datetime:
    return datetime(2024, 5, 1, hour, minute, tzinfo=timezone.utc)


# sun elevations at the town's anchor: 03:00 UTC 67 degrees (solar 11:28, "at midday"),
# 10:00 UTC 3 degrees (solar 18:28, "at dusk"), 15:00 UTC -37 degrees (solar 23:28, "at night")
CONDITIONS: Mapping[str, Condition] = MappingProxyType(
    {
        c.name: c
        for c in (
            Condition("clear_noon", _at(3), "clear", "at midday under a clear sky"),
            Condition("sunset", _at(10), "clear", "at dusk under a clear sky"),
            Condition("night", _at(15), "clear", "at night under a clear sky"),
            Condition("overcast", _at(3), "overcast", "at midday under an overcast sky"),
            Condition("wet", _at(3), "wet", "at midday on wet roads after rain"),
            Condition("fog", _at(3), "fog", "at midday in thick fog"),
        )
    }
)
"""Condition name -> :class:`Condition`: clear noon, sunset, night, overcast, wet, fog."""


def get_condition(name: str) -> Condition:
    """The condition called ``name``.

    Raises:
        UnknownNameError: If it is not one of :data:`CONDITIONS` ("Did you mean ...?").
    """
    return CONDITIONS[check_name("condition", name, CONDITIONS)]


def render_condition(
    renderer: GroundTruthRenderer,
    trajectory: Trajectory,
    camera: PinholeCamera,
    condition: str | Condition,
) -> tuple[np.ndarray, np.ndarray]:
    """Render a trajectory under one of :data:`CONDITIONS` and check what came back.

    Args:
        renderer: An open renderer (:func:`open_renderer`).
        trajectory: ``T`` camera-to-world poses.
        camera: Intrinsics.
        condition: A condition name or :class:`Condition`.

    Returns:
        ``(frames, dynamic)``: uint8 ``(T, H, W, 3)``, bool ``(T, H, W)``.

    Raises:
        UnknownNameError: For an unknown condition name ("Did you mean ...?").
        ShapeMismatchError: If the renderer returned arrays of the wrong shape or type.
    """
    cond = condition if isinstance(condition, Condition) else get_condition(condition)
    frames, dynamic = renderer.render(trajectory, camera, time=cond.time, weather=cond.weather)
    return check_render(frames, dynamic, len(trajectory), camera)


def check_render(
    frames: np.ndarray, dynamic: np.ndarray, count: int, camera: PinholeCamera
) -> tuple[np.ndarray, np.ndarray]:
    """``(frames, dynamic)`` if they are uint8 ``(T, H, W, 3)`` and bool ``(T, H, W)``.

    Raises:
        ShapeMismatchError: Otherwise (a renderer plug-in broke the protocol).
    """
    frames, dynamic = np.asarray(frames), np.asarray(dynamic)
    shape = (count, camera.height, camera.width)
    if frames.shape != (*shape, 3) or frames.dtype != np.uint8:
        raise ShapeMismatchError(
            f"a ground-truth renderer must return uint8 frames of shape {(*shape, 3)}, got "
            f"{frames.dtype} {frames.shape}; fix the renderer's render()."
        )
    if dynamic.shape != shape or dynamic.dtype != np.bool_:
        raise ShapeMismatchError(
            f"a ground-truth renderer must return a bool dynamic mask of shape {shape}, got "
            f"{dynamic.dtype} {dynamic.shape}; fix the renderer's render()."
        )
    return frames, dynamic
