"""The built-in town's ground-truth renderer for evaluation (the ``town`` renderer of cityenv).

cityenv's bench renders what no recorded clip holds (one trajectory under several conditions,
long routes) through :data:`cityenv.eval.render.GROUND_TRUTH_RENDERERS`; this module fills its
``town`` entry through the entry point
``[project.entry-points."cityenv.renderers"] town = "carla_tools.eval_render:town_renderer"``.
The library never imports it.

The town is opened with the seed and blocks of a :class:`~cityenv.envs.town.TownSpec`, the
options the town's CityDB is built from (:mod:`carla_tools.town_db`), so the ground truth shows
the streets the references were captured in.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from carla_tools.backends import make_simulator
from carla_tools.sim import Simulator
from cityenv.envs.town import TownSpec
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Trajectory

__all__ = ["TownGroundTruth", "town_renderer"]


class TownGroundTruth:
    """Renders trajectories through the procedural town (a :class:`GroundTruthRenderer`).

    Args:
        spec: The town (seed, blocks); ``None`` = the default :class:`TownSpec`, the one
            ``CityWorld-Town-v0`` uses.
    """

    def __init__(self, spec: TownSpec | None = None) -> None:
        self.spec = spec or TownSpec()
        self._sim = make_simulator("town", seed=self.spec.seed, blocks=tuple(self.spec.blocks))

    @property
    def simulator(self) -> Simulator:
        """The open town (its road network plans routes to render)."""
        return self._sim

    def render(
        self, trajectory: Trajectory, camera: PinholeCamera, *, time: datetime, weather: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Frames of every pose; the world clock is ``time`` plus the pose's timestamp offset.

        Args:
            trajectory: ``T`` camera-to-world poses (ENU, OpenCV camera) with timestamps.
            camera: Intrinsics of every frame.
            time: World time of the first frame (naive = UTC): the sun and the traffic.
            weather: ``clear``, ``overcast``, ``wet`` or ``fog``.

        Returns:
            ``(frames, dynamic)``: uint8 ``(T, H, W, 3)``, bool ``(T, H, W)`` true on vehicles
            and pedestrians.

        Raises:
            UnknownNameError: For an unknown weather ("Did you mean ...?").
        """
        self._sim.set_weather(weather)
        start = trajectory.timestamps[0]
        frames = np.empty((len(trajectory), camera.height, camera.width, 3), np.uint8)
        dynamic = np.empty((len(trajectory), camera.height, camera.width), bool)
        for i, pose in enumerate(trajectory):
            # each frame's clock from the start, not by advance(): no rounding drift on 1 km
            self._sim.set_time(time + timedelta(seconds=float(trajectory.timestamps[i] - start)))
            view = self._sim.render(camera, pose)
            frames[i], dynamic[i] = view.rgb, view.dynamic
        return frames, dynamic

    def close(self) -> None:
        """Release the town's GL context."""
        self._sim.close()

    def __enter__(self) -> TownGroundTruth:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def town_renderer(spec: TownSpec | Mapping[str, Any] | None = None) -> TownGroundTruth:
    """The ``town`` renderer factory: the procedural town of ``spec``.

    Args:
        spec: A :class:`TownSpec`, a mapping of its options (``{"seed": 0, "blocks": [2, 2]}``)
            or ``None`` for the defaults.

    Raises:
        ConfigError: If a mapping holds an unknown option or a bad value ("Did you mean ...?").
    """
    return TownGroundTruth(TownSpec.from_options(spec))
