"""The simulator interface: what the data generator needs from a world.

Two backends implement it: the built-in procedural town (:mod:`carla_tools.town`, no server, no
GPU) and a real CARLA server (:mod:`carla_tools.carla_backend`, the ``carla`` extra). Everything is
expressed in cityenv's conventions: the world's ENU frame (x east, y north, z up, metres)
anchored at a geodetic origin, OpenCV cameras (x right, y down, z forward), camera-to-world poses,
metric z-depth with 0 = none.

This module knows no backend: open one by name with :func:`carla_tools.backends.make_simulator`
(``"town"`` or ``"carla"``). What backends share (time, the sun, weather names, traffic
densities) is in :mod:`carla_tools.conditions`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Protocol

import numpy as np

from carla_tools.conditions import WEATHERS
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.geodesy import LocalFrame
from cityenv.geometry.pose import Pose

__all__ = [
    "WEATHERS",
    "IntersectionLike",
    "LaneLike",
    "Render",
    "RoadNetwork",
    "Simulator",
]


class LaneLike(Protocol):
    """What a backend's lane exposes.

    Attributes:
        id: Index of the lane in :attr:`RoadNetwork.lanes`.
        width: Lane width, metres.
        waypoints: Centre-line points in ENU, ``(N, 3)`` float64, in travel order, on the road.
        entry: Intersection id the lane comes from, ``-1`` if none.
        exit: Intersection id the lane leads into, ``-1`` if none.
    """

    id: int
    width: float
    waypoints: np.ndarray
    entry: int
    exit: int


class IntersectionLike(Protocol):
    """What a backend's junction exposes.

    Attributes:
        id: Index in :attr:`RoadNetwork.intersections`.
        center: Centre in ENU, ``(3,)``.
        incoming: Ids of the lanes that end here.
        outgoing: Ids of the lanes that start here.
    """

    id: int
    center: np.ndarray
    incoming: tuple[int, ...]
    outgoing: tuple[int, ...]


@dataclass(frozen=True)
class RoadNetwork:
    """The drivable network of a world in its ENU frame.

    Attributes:
        frame: The ENU frame and its geodetic anchor.
        lanes: Lanes with waypoint polylines ``(N, 3)`` on the road surface.
        intersections: Junctions with their incoming / outgoing lane ids.
    """

    frame: LocalFrame
    lanes: Sequence[LaneLike]
    intersections: Sequence[IntersectionLike]

    def waypoints(self) -> np.ndarray:
        """All lane waypoints stacked, shape ``(P, 3)`` ENU metres."""
        return np.concatenate([lane.waypoints for lane in self.lanes])


class Render(NamedTuple):
    """One rendered pinhole view.

    Attributes:
        rgb: uint8 ``(H, W, 3)``.
        depth: float32 ``(H, W)`` metric z-depth, 0 where nothing was hit (sky).
        dynamic: bool ``(H, W)``, true on vehicles and pedestrians.
    """

    rgb: np.ndarray
    depth: np.ndarray
    dynamic: np.ndarray


class Simulator(ABC):
    """A world the generator can capture: static scene, moving actors, time of day and weather.

    Attributes:
        frame: The world's ENU frame and its geodetic anchor.
    """

    frame: LocalFrame

    @abstractmethod
    def road_network(self) -> RoadNetwork:
        """Lanes as waypoint polylines and intersections, in the ENU frame."""

    @abstractmethod
    def set_time(self, when: datetime, *, sun_time: datetime | None = None) -> None:
        """Set world time (UTC): it places the actors and, unless ``sun_time`` is given, the sun.

        Args:
            when: World time; naive datetimes are taken as UTC.
            sun_time: Time that sets the lighting alone, so one lighting can be captured with
                different traffic.
        """

    @abstractmethod
    def set_weather(self, name: str) -> None:
        """Set the weather, one of :data:`carla_tools.conditions.WEATHERS`.

        Raises:
            UnknownNameError: For an unknown name (the message says "Did you mean ...?").
        """

    @abstractmethod
    def render(self, camera: PinholeCamera, pose: Pose | np.ndarray) -> Render:
        """Render RGB, metric depth and the dynamic-object mask of a camera-to-world pose."""

    @abstractmethod
    def advance(self, dt: float) -> None:
        """Move the world clock and every moving actor forward by ``dt`` seconds."""

    @abstractmethod
    def close(self) -> None:
        """Release the backend's resources (GL context, server connection)."""

    @property
    @abstractmethod
    def time(self) -> datetime:
        """Current world time (UTC)."""

    @property
    @abstractmethod
    def weather(self) -> str:
        """Current weather name."""

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
