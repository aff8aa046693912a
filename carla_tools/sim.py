"""The simulator interface: what the data generator needs from a world.

Two backends implement it: the built-in procedural town (:mod:`carla_tools.town`, no server, no
GPU) and a real CARLA server (:mod:`carla_tools.carla_backend`, the ``carla`` extra). Everything is
expressed in cityenv's conventions: the world's ENU frame (x east, y north, z up, metres)
anchored at a geodetic origin, OpenCV cameras (x right, y down, z forward), camera-to-world poses,
metric z-depth with 0 = none.

Open a backend by name with :func:`make_simulator` (``"town"`` or ``"carla"``).
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol

import numpy as np

from cityenv.errors import UnknownNameError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.geodesy import LocalFrame
from cityenv.geometry.pose import Pose

WEATHERS = ("clear", "overcast", "wet", "fog")
"""Weather names every backend understands."""


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
        """Set the weather, one of :data:`WEATHERS`."""

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


# --- names and the backend registry -----------------------------------------------------------
def check_choice(kind: str, name: str, choices: Sequence[str]) -> str:
    """Return ``name`` if it is one of ``choices``; raise naming the choices otherwise.

    Args:
        kind: What the name names, for the message (``"weather"``, ``"backend"``).
        name: The name given.
        choices: The known names.

    Raises:
        UnknownNameError: If ``name`` is unknown; the message lists the choices and says
            "Did you mean ...?" when one is close.
    """
    if name in choices:
        return name
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownNameError(f"{kind} must be one of {tuple(choices)}, got {name!r}.{hint}")


def _make_town(**kwargs: Any) -> Simulator:
    from carla_tools.town.town import ProceduralTown

    return ProceduralTown(**kwargs)


def _make_carla(**kwargs: Any) -> Simulator:
    # imported here so that cityenv works without the ``carla`` extra
    from carla_tools.carla_backend import CarlaSimulator

    return CarlaSimulator(**kwargs)


_BACKENDS: dict[str, Callable[..., Simulator]] = {"town": _make_town, "carla": _make_carla}
BACKENDS = tuple(_BACKENDS)
"""Names accepted by :func:`make_simulator`."""


def make_simulator(backend: str = "town", **kwargs: Any) -> Simulator:
    """Open a simulator backend.

    Args:
        backend: ``"town"`` (the built-in procedural town,
            :class:`carla_tools.town.ProceduralTown`) or ``"carla"`` (a CARLA server,
            :class:`carla_tools.carla_backend.CarlaSimulator`, needs ``pip install
            "cityenv[carla]"``).
        **kwargs: Passed to the backend's constructor (e.g. ``seed=3`` or
            ``host="localhost", port=2000``).

    Returns:
        The open simulator; close it (or use it as a context manager) when done.

    Raises:
        UnknownNameError: For an unknown backend name (the message says "Did you mean ...?").

    Example:
        >>> with make_simulator("town", seed=3) as sim:
        ...     lanes = sim.road_network().lanes
    """
    return _BACKENDS[check_choice("backend", backend, BACKENDS)](**kwargs)
