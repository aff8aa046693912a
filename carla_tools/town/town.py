"""The built-in procedural town: a seeded street world rendered with moderngl, no server needed.

Example:
    >>> town = ProceduralTown(seed=3)
    >>> town.set_time(datetime(2024, 5, 1, 3, 0, tzinfo=timezone.utc))   # noon in Seoul
    >>> town.set_weather("wet")
    >>> rgb, depth, dynamic = town.render(PinholeCamera.from_fov(256, 256, 90), pose)

It implements :class:`carla_tools.sim.Simulator`, so the data generator treats it like a CARLA
server (``carla_tools.backends.make_simulator("town", seed=3)``).
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from carla_tools.conditions import check_weather, local_solar_hour, solar_position, to_utc
from carla_tools.sim import Render, RoadNetwork, Simulator
from carla_tools.town.actors import TrafficModel, world_seconds
from carla_tools.town.layout import LayoutParams, TownLayout, generate_layout
from carla_tools.town.meshes import actor_templates, static_mesh
from carla_tools.town.renderer import TownRenderer
from carla_tools.town.sky import Lighting, lighting
from cityenv.errors import ShapeMismatchError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.geodesy import LocalFrame
from cityenv.geometry.pose import Pose

SEOUL = LocalFrame(37.5665, 126.9780, 0.0)
"""Default geodetic anchor: central Seoul (City Hall)."""

DEFAULT_TIME = datetime(2024, 5, 1, 3, 0, tzinfo=timezone.utc)
"""Default world time: noon in Seoul (UTC+9) on a spring day."""

STREET_VIEW_HEADINGS = tuple(45.0 * k for k in range(8))
"""Headings (degrees clockwise from north) of the 8 views of a street-view capture."""

__all__ = ["DEFAULT_TIME", "SEOUL", "STREET_VIEW_HEADINGS", "ProceduralTown", "RoadNetwork"]


class ProceduralTown(Simulator):
    """A procedural street world: layout from a seed, actors from (seed, world time).

    Args:
        seed: Seed of the static town and of actor attributes.
        anchor: Geodetic anchor of the town's ENU frame; central Seoul if None.
        blocks: Number of blocks ``(east-west, north-south)``.
        vehicle_density: Multiplier of the time-of-day traffic density (0 = empty roads).
        pedestrian_density: Multiplier of the pedestrian density (0 = empty sidewalks).
        near: Near clipping distance of every camera, metres.
        far: Far clipping distance, metres.
    """

    def __init__(
        self,
        seed: int = 0,
        anchor: LocalFrame | None = None,
        *,
        blocks: tuple[int, int] = (4, 4),
        vehicle_density: float = 1.0,
        pedestrian_density: float = 1.0,
        near: float = 0.1,
        far: float = 3000.0,
    ) -> None:
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
        if vehicle_density < 0 or pedestrian_density < 0:
            raise ValueError(
                "vehicle_density and pedestrian_density must be >= 0, got "
                f"{vehicle_density!r} and {pedestrian_density!r}."
            )
        self.seed = int(seed)
        self.frame = anchor if anchor is not None else SEOUL
        self.layout: TownLayout = generate_layout(self.seed, LayoutParams(blocks=tuple(blocks)))
        self.traffic = TrafficModel(self.layout, self.seed, vehicle_density, pedestrian_density)
        self._renderer = TownRenderer(near=near, far=far)
        self._renderer.set_static(static_mesh(self.layout))
        caps = self.traffic.capacity
        for name, template in actor_templates().items():
            # beyond these distances an actor covers about a pixel of a 512 px, 90 degree view
            reach = 150.0 if name == "pedestrian" else 500.0
            self._renderer.add_actor_kind(name, template, caps[name], max_distance=reach)
        self._weather = "clear"
        self._time = DEFAULT_TIME
        self._sun_time = DEFAULT_TIME
        self._t = world_seconds(DEFAULT_TIME)
        self._lighting: Lighting | None = None
        self._actors_dirty = True

    # --- state --------------------------------------------------------------------------------
    @property
    def time(self) -> datetime:
        """Current world time (UTC)."""
        return self._time

    @property
    def weather(self) -> str:
        """Current weather name."""
        return self._weather

    @property
    def sun(self) -> tuple[float, float]:
        """``(elevation_deg, azimuth_deg)`` of the sun at the lighting time."""
        return solar_position(self._sun_time, self.frame.lat, self.frame.lon)

    def road_network(self) -> RoadNetwork:
        """Lanes (:class:`~carla_tools.town.layout.Lane`) and intersections in the ENU frame."""
        return RoadNetwork(self.frame, self.layout.lanes, self.layout.intersections)

    def set_time(self, when: datetime, *, sun_time: datetime | None = None) -> None:
        """Set the world time: it places the actors and (unless ``sun_time`` is given) the sun.

        Args:
            when: World time; naive datetimes are taken as UTC.
            sun_time: Time whose sun and sky to use instead (e.g. to capture the same lighting
                with different traffic).
        """
        self._time = to_utc(when)
        self._sun_time = to_utc(sun_time) if sun_time is not None else self._time
        self._t = world_seconds(self._time)
        self._lighting = None
        self._actors_dirty = True

    def set_weather(self, name: str) -> None:
        """Set the weather: one of ``clear``, ``overcast``, ``wet``, ``fog``.

        Raises:
            UnknownNameError: For an unknown name (the message lists the choices and says
                "Did you mean ...?").
        """
        self._weather = check_weather(name)
        self._lighting = None

    def advance(self, dt: float) -> None:
        """Move the world clock (and every actor) forward by ``dt`` seconds.

        The sun moves along unless it was pinned with ``set_time(..., sun_time=...)``.
        """
        pinned = self._sun_time != self._time
        step = float(dt)
        new_time = datetime.fromtimestamp(self._time.timestamp() + step, tz=timezone.utc)
        sun_time = self._sun_time if pinned else new_time
        self.set_time(new_time, sun_time=sun_time)

    def local_hour(self) -> float:
        """Mean solar hour of day at the anchor (UTC + longitude / 15), drives traffic density."""
        return local_solar_hour(self._time, self.frame.lon)

    def lighting(self) -> Lighting:
        """The lighting of the current sun time and weather."""
        if self._lighting is None:
            elevation, azimuth = self.sun
            self._lighting = lighting(elevation, azimuth, self._weather)
        return self._lighting

    def actor_instances(self) -> dict[str, np.ndarray]:
        """Actors at the current time: kind -> ``(M, 11)`` rows (x, y, z, yaw, colours, scale)."""
        return self.traffic.instances(self._t, self.local_hour())

    # --- rendering ----------------------------------------------------------------------------
    def _upload_actors(self) -> None:
        if self._actors_dirty:
            for name, rows in self.actor_instances().items():
                self._renderer.set_instances(name, rows)
            self._actors_dirty = False

    def render(self, camera: PinholeCamera, pose: Pose | np.ndarray) -> Render:
        """Render a pinhole view.

        Args:
            camera: Intrinsics (the image size too).
            pose: Camera-to-world pose (OpenCV camera, ENU world) or its ``(4, 4)`` matrix.

        Returns:
            A :class:`~carla_tools.sim.Render` ``(rgb, depth, dynamic)``: uint8 ``(H, W, 3)``;
            metric z-depth float32 ``(H, W)``, 0 for sky; bool ``(H, W)`` true on vehicles and
            pedestrians.
        """
        matrix = pose.matrix if isinstance(pose, Pose) else np.asarray(pose, dtype=np.float64)
        if matrix.shape != (4, 4):
            raise ShapeMismatchError(
                f"pose must be a Pose or a (4, 4) matrix, got shape {matrix.shape}."
            )
        self._upload_actors()
        return Render(*self._renderer.render(camera, matrix, self.lighting()))

    def render_street_view(
        self, position: np.ndarray, *, size: int = 512, heading_offset_deg: float = 0.0
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, PinholeCamera, Pose]]:
        """A street-view capture: 8 level views of 90 degrees at 45-degree steps from one point.

        Args:
            position: Camera centre, ENU ``(3,)`` metres.
            size: Width and height of each view in pixels.
            heading_offset_deg: Heading of the first view (degrees clockwise from north).

        Returns:
            Per view: ``(rgb, depth, dynamic, camera, pose)``, headings increasing clockwise.
        """
        camera = PinholeCamera.from_fov(size, size, 90.0)
        views = []
        for heading in STREET_VIEW_HEADINGS:
            pose = Pose.from_heading(position, (heading + heading_offset_deg) % 360.0)
            views.append((*self.render(camera, pose), camera, pose))
        return views

    def close(self) -> None:
        """Release the GL context."""
        self._renderer.release()

    def __enter__(self) -> ProceduralTown:
        return self
