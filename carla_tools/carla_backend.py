"""The simulator interface over a real CARLA 0.9.16 server (the ``carla`` extra).

This module is thin glue: every conversion (axes, depth decoding, intrinsics, weather, time
planning, road-network assembly) lives in :mod:`carla_tools.carla_convert`, where it is tested
without a server. ``carla`` is imported when a :class:`CarlaSimulator` is built, so the package
imports without the extra.

How the CARLA world maps onto :class:`carla_tools.sim.Simulator`:

- The world runs in synchronous mode with a fixed step; the Traffic Manager runs synchronously
  with a deterministic seed; walkers are AI controlled.
- World time is cityenv's clock (UTC). CARLA cannot rewind traffic: :meth:`set_time` to a later
  time (up to ``max_catch_up_s`` ahead) simulates forward by the difference; to an earlier time,
  or further ahead, it respawns the traffic with a seed derived from ``(seed, time)``
  (:func:`carla_convert.traffic_seed`), scaled by the time-of-day densities the procedural town
  uses too (:mod:`carla_tools.conditions`). A respawned world is a plausible state for that
  time, not the continuation of an earlier run.
- The sun follows the time (:func:`carla_tools.conditions.solar_position`, as in the procedural
  town) and the weather names map to CARLA weather parameters
  (:func:`carla_convert.weather_parameters`).
- :meth:`render` moves a rig of RGB, depth and semantic cameras (one rig per intrinsics, reused)
  to the pose and ticks the world ``settle_ticks + 1`` times with a short step
  ``render_delta_s`` so that actors barely move; the world clock does not advance.
- The ENU frame is anchored at the map's georeference of CARLA's origin.
"""

from __future__ import annotations

import contextlib
import queue
import random
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from carla_tools.carla_convert import (
    CarlaTransform,
    WaypointRecord,
    build_road_network,
    camera_blueprint_attributes,
    compose_render,
    group_lanes,
    plan_time_change,
    pose_to_carla_transform,
    raw_to_bgra,
    scaled_count,
    split_ticks,
    traffic_seed,
    weather_parameters,
)
from carla_tools.conditions import (
    check_weather,
    local_noon_utc,
    local_solar_hour,
    pedestrian_density,
    solar_position,
    to_utc,
    traffic_density,
)
from carla_tools.sim import Render, RoadNetwork, Simulator
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.geodesy import LocalFrame
from cityenv.geometry.pose import Pose

__all__ = ["INSTALL_HINT", "CarlaSimulator", "import_carla", "road_network_from_map"]

INSTALL_HINT = 'pip install "cityenv[carla]"'
"""How to get the ``carla`` client."""

SENSOR_BLUEPRINTS = {
    "rgb": "sensor.camera.rgb",
    "depth": "sensor.camera.depth",
    "semantic": "sensor.camera.semantic_segmentation",
}
"""Render channel -> CARLA camera blueprint."""

# Lens distortion off (lens_k defaults to -1), so that the cameras stay pinholes; motion blur
# off, since the rig jumps between views.
_CAMERA_ATTRIBUTES = {"lens_circle_multiplier": "0.0", "lens_k": "0.0", "lens_kcube": "0.0"}
_RGB_ATTRIBUTES = {"motion_blur_intensity": "0.0"}


def import_carla() -> Any:
    """Import the ``carla`` client module.

    Raises:
        ImportError: If it is not installed; the message says how to install it.
    """
    try:
        import carla
    except ImportError as error:
        raise ImportError(
            f"the CARLA backend needs the carla 0.9.16 client; install it with {INSTALL_HINT} "
            "(or use the procedural town: make_simulator('town'))."
        ) from error
    return carla


def server_answers(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """Whether anything accepts TCP connections at ``host:port`` (a cheap check before CARLA's
    own, slower, connection timeout)."""
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


# --- road network ---------------------------------------------------------------------------
def _record(waypoint: Any) -> WaypointRecord:
    loc = waypoint.transform.location
    return WaypointRecord(
        road_id=int(waypoint.road_id),
        section_id=int(waypoint.section_id),
        lane_id=int(waypoint.lane_id),
        s=float(waypoint.s),
        location=(loc.x, loc.y, loc.z),
        width=float(waypoint.lane_width),
        junction_id=int(waypoint.junction_id) if waypoint.is_junction else -1,
        # OpenDRIVE: right lanes (negative ids) run along the reference line in right-hand
        # traffic, left lanes in left-hand traffic.
        forward=(waypoint.lane_id < 0) == bool(waypoint.is_rht),
    )


def _junction_near(
    step: Callable[[float], list[Any]], spacing: float, centers: dict[int, tuple]
) -> int:
    """CARLA id of the junction a lane end leads to (-1 if none); records its centre.

    Args:
        step: ``waypoint.next`` or ``waypoint.previous`` of the lane's last / first waypoint.
        spacing: Waypoint spacing: the end lies within it.
        centers: Junction id -> CARLA centre, filled in.
    """
    # Several distances: a step that lands exactly on the lane end stays on the lane (seen with
    # carla 0.9.16), and next_until_lane_end cannot be used (it crashes on a lane's last metres).
    for distance in (0.5 * spacing, spacing, 1.5 * spacing, 2.0 * spacing):
        for waypoint in step(distance):
            if waypoint.is_junction:
                box = waypoint.get_junction().bounding_box.location
                centers[int(waypoint.junction_id)] = (box.x, box.y, box.z)
                return int(waypoint.junction_id)
    return -1


def road_network_from_map(carla_map: Any, frame: LocalFrame, spacing: float = 2.0) -> RoadNetwork:
    """Lanes and junctions of a ``carla.Map`` in ENU.

    Lanes are the map's driving-lane waypoints outside junctions, grouped by ``(road_id,
    section_id, lane_id)``; a lane's entry/exit is the junction just before/after its ends.
    Works on a map built offline from OpenDRIVE (``carla.Map(name, xodr)``) too.

    Args:
        carla_map: The map.
        frame: Its ENU frame.
        spacing: Waypoint spacing, metres.

    Returns:
        The road network.
    """
    lanes = group_lanes([_record(w) for w in carla_map.generate_waypoints(spacing)])
    links, centers = {}, {}
    for key, records in lanes.items():
        road, _, lane = key
        first = carla_map.get_waypoint_xodr(road, lane, records[0].s)
        last = carla_map.get_waypoint_xodr(road, lane, records[-1].s)
        entry = _junction_near(first.previous, spacing, centers) if first else -1
        exit_ = _junction_near(last.next, spacing, centers) if last else -1
        links[key] = (entry, exit_)
    return build_road_network(frame, lanes, links, centers)


# --- sensors --------------------------------------------------------------------------------
@dataclass
class _Rig:
    """RGB, depth and semantic cameras with one set of intrinsics, moved together."""

    sensors: dict[str, Any]
    queues: dict[str, queue.Queue] = field(default_factory=dict)

    def listen(self) -> None:
        for kind, sensor in self.sensors.items():
            if not sensor.is_listening():  # a method in carla 0.9.16, a property before
                self.queues[kind] = queue.Queue()
                sensor.listen(self.queues[kind].put)

    def pause(self) -> None:
        """Stop streaming, so that simulation ticks do not pile images up."""
        for sensor in self.sensors.values():
            if sensor.is_listening():
                sensor.stop()

    def destroy(self) -> None:
        for sensor in self.sensors.values():
            with contextlib.suppress(RuntimeError):
                if sensor.is_listening():
                    sensor.stop()
                sensor.destroy()


def _wait_frame(images: queue.Queue, frame: int, timeout_s: float) -> Any:
    """The image of ``frame`` from a sensor queue, dropping older ones."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            image = images.get(timeout=max(deadline - time.monotonic(), 1e-3))
        except queue.Empty:
            raise TimeoutError(
                f"no camera image for frame {frame} within {timeout_s} s; is the server "
                "rendering (not in no_rendering_mode)?"
            ) from None
        if image.frame == frame:
            return image
        if image.frame > frame:
            raise RuntimeError(f"camera skipped frame {frame} (got {image.frame}).")


def _bgra(image: Any) -> np.ndarray:
    return raw_to_bgra(image.raw_data, image.width, image.height)


# --- the simulator --------------------------------------------------------------------------
class CarlaSimulator(Simulator):
    """A CARLA 0.9.16 server as a :class:`~carla_tools.sim.Simulator`.

    Args:
        host: Server host.
        port: Server RPC port.
        town: Map to load (e.g. ``"Town10HD_Opt"``); None keeps the loaded one.
        seed: Seed of the traffic (Traffic Manager, walkers, blueprint choices).
        anchor: Geodetic anchor of the ENU frame; the map's georeference of CARLA's origin if
            None.
        vehicles: Vehicle slots; ``vehicles x`` the time-of-day density are spawned.
        walkers: Pedestrian slots; ``walkers x`` the time-of-day density are spawned.
        delta_seconds: Fixed simulation step, seconds.
        render_delta_s: Step of the ticks a render takes, seconds.
        settle_ticks: Extra ticks per render before the images are taken, so temporal
            anti-aliasing and exposure settle after the rig jumps.
        max_catch_up_s: Longest forward :meth:`set_time` jump simulated tick by tick; longer
            jumps respawn the traffic.
        warmup_s: Seconds simulated after a respawn so that actors get moving (not counted in
            the world clock).
        tm_port: Traffic Manager port.
        timeout_s: Client timeout, seconds.
        waypoint_spacing: Spacing of road-network waypoints, metres.
        rgb_attributes: Extra RGB camera blueprint attributes (e.g. ``{"exposure_mode":
            "manual"}``).
        max_rigs: Camera rigs (distinct intrinsics) kept alive at once.

    Raises:
        ImportError: If ``carla`` is not installed (says ``pip install "cityenv[carla]"``).
        ConnectionError: If no server answers at ``host:port``.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 2000,
        town: str | None = None,
        seed: int = 0,
        *,
        anchor: LocalFrame | None = None,
        vehicles: int = 80,
        walkers: int = 120,
        delta_seconds: float = 0.05,
        render_delta_s: float = 0.001,
        settle_ticks: int = 2,
        max_catch_up_s: float = 120.0,
        warmup_s: float = 2.0,
        tm_port: int = 8000,
        timeout_s: float = 30.0,
        waypoint_spacing: float = 2.0,
        rgb_attributes: Mapping[str, str] | None = None,
        max_rigs: int = 4,
    ) -> None:
        if not 0 < render_delta_s <= delta_seconds <= 0.1:
            raise ValueError(
                "need 0 < render_delta_s <= delta_seconds <= 0.1 (CARLA's physics substepping "
                f"limit), got render_delta_s={render_delta_s}, delta_seconds={delta_seconds}."
            )
        if settle_ticks < 0 or max_rigs < 1:
            raise ValueError(
                f"need settle_ticks >= 0 and max_rigs >= 1, got {settle_ticks} and {max_rigs}."
            )
        self._carla = import_carla()
        self.seed, self.vehicles, self.walkers = int(seed), int(vehicles), int(walkers)
        self.delta_seconds, self.render_delta_s = float(delta_seconds), float(render_delta_s)
        self.settle_ticks, self.max_catch_up_s = int(settle_ticks), float(max_catch_up_s)
        self.warmup_s, self.timeout_s = float(warmup_s), float(timeout_s)
        self.waypoint_spacing, self.max_rigs = float(waypoint_spacing), int(max_rigs)
        self.rgb_attributes = {**_RGB_ATTRIBUTES, **(rgb_attributes or {})}
        self._rigs: dict[tuple[str, str, str], _Rig] = {}
        self._vehicle_ids: list[int] = []
        self._walker_ids: list[int] = []
        self._controllers: list[Any] = []
        self._network: RoadNetwork | None = None
        self._applied_delta: float | None = None
        self._carry = 0.0
        self._weather = "clear"
        self._original_settings = None
        self._closed = False
        try:
            self._connect(host, int(port), town, tm_port)
            self.frame = anchor if anchor is not None else self._georeference()
            self._time = self._sun_time = local_noon_utc(self.frame.lon)
            self._apply_weather()
            self._respawn(self._time)
        except BaseException:
            self.close()
            raise

    # --- connection ---------------------------------------------------------------------------
    def _connect(self, host: str, port: int, town: str | None, tm_port: int) -> None:
        if not server_answers(host, port):
            raise ConnectionError(
                f"no CARLA server answered at {host}:{port}; start one (CarlaUE4.sh "
                f"-carla-rpc-port={port}) or use the procedural town: make_simulator('town')."
            )
        self.client = self._carla.Client(host, port)
        self.client.set_timeout(self.timeout_s)
        self.world = self.client.load_world(town) if town else self.client.get_world()
        self._original_settings = self.world.get_settings()
        self._set_delta(self.delta_seconds)
        self.traffic_manager = self.client.get_trafficmanager(tm_port)
        self.traffic_manager.set_synchronous_mode(True)
        self._map = self.world.get_map()
        self._library = self.world.get_blueprint_library()

    def _set_delta(self, delta: float) -> None:
        """Synchronous mode with a fixed step (one settings round trip when it changes)."""
        if self._applied_delta != delta:
            settings = self.world.get_settings()
            settings.synchronous_mode = True
            settings.fixed_delta_seconds = delta
            self.world.apply_settings(settings)
            self._applied_delta = delta

    def _georeference(self) -> LocalFrame:
        # Only the origin is taken from CARLA's geo conversion; directions follow from the
        # axes (see carla_convert): carla 0.9.16's transform_to_geolocation maps +y to
        # increasing latitude, against the map's own north (-y).
        geo = self._map.transform_to_geolocation(self._carla.Location(0.0, 0.0, 0.0))
        return LocalFrame(geo.latitude, geo.longitude, geo.altitude)

    # --- state --------------------------------------------------------------------------------
    @property
    def time(self) -> datetime:
        """Current world time (UTC)."""
        return self._time

    @property
    def weather(self) -> str:
        """Current weather name."""
        return self._weather

    def road_network(self) -> RoadNetwork:
        """Lanes and junctions of the loaded map in the ENU frame (computed once)."""
        if self._network is None:
            self._network = road_network_from_map(self._map, self.frame, self.waypoint_spacing)
        return self._network

    def set_weather(self, name: str) -> None:
        """Set the weather, one of :data:`~carla_tools.conditions.WEATHERS`.

        Raises:
            UnknownNameError: For an unknown name (says "Did you mean ...?").
        """
        self._weather = check_weather(name)
        self._apply_weather()

    def set_time(self, when: datetime, *, sun_time: datetime | None = None) -> None:
        """Set the world time: simulate forward to it, or respawn the traffic for it.

        Args:
            when: World time; naive = UTC. Later by at most ``max_catch_up_s``: the actors
                move on by the difference. Earlier, or further ahead: the traffic is respawned
                with a seed derived from ``(seed, when)``.
            sun_time: Time whose sun to use instead of ``when``.
        """
        target = to_utc(when)
        step = plan_time_change(self._time, target, self.max_catch_up_s)
        if step is None:
            self._respawn(target)
        else:
            self._simulate(step)
        self._time = target
        self._sun_time = to_utc(sun_time) if sun_time is not None else target
        self._apply_weather()

    def advance(self, dt: float) -> None:
        """Simulate ``dt >= 0`` seconds (whole fixed steps; the remainder carries over).

        The sun moves along unless it was pinned with ``set_time(..., sun_time=...)``.
        """
        pinned = self._sun_time != self._time
        self._simulate(float(dt))
        self._time = self._time + timedelta(seconds=float(dt))
        if not pinned:
            self._sun_time = self._time
            self._apply_weather()

    def _simulate(self, seconds: float) -> None:
        ticks, self._carry = split_ticks(seconds, self.delta_seconds, self._carry)
        self._tick(ticks, self.delta_seconds)

    def _tick(self, count: int, delta: float, *, rendering: bool = False) -> int:
        """Tick ``count >= 0`` times with step ``delta``; the last frame id.

        Outside renders the cameras stop streaming, so simulated time piles up no images.
        """
        if not rendering:
            for rig in self._rigs.values():
                rig.pause()
        self._set_delta(delta)
        frame = -1
        for _ in range(count):
            frame = self.world.tick(self.timeout_s)
        return frame

    def _apply_weather(self) -> None:
        elevation, azimuth = solar_position(self._sun_time, self.frame.lat, self.frame.lon)
        params = weather_parameters(self._weather, elevation, azimuth)
        self.world.set_weather(self._carla.WeatherParameters(**params))

    # --- traffic ------------------------------------------------------------------------------
    def _respawn(self, when: datetime) -> None:
        for rig in self._rigs.values():
            rig.pause()
        self._set_delta(self.delta_seconds)
        self._destroy_traffic()
        seed = traffic_seed(self.seed, when)
        rng = random.Random(seed)
        hour = local_solar_hour(when, self.frame.lon)
        self.traffic_manager.set_random_device_seed(seed)
        self.world.set_pedestrians_seed(seed)
        self._spawn_vehicles(rng, scaled_count(self.vehicles, traffic_density(hour)))
        self._spawn_walkers(rng, scaled_count(self.walkers, pedestrian_density(hour)))
        self._carry = 0.0
        self._tick(int(round(self.warmup_s / self.delta_seconds)), self.delta_seconds)

    def _spawn(self, commands: list[Any]) -> list[int | None]:
        """Apply spawn commands in one batch; actor id per command, None where it failed."""
        if not commands:
            return []
        responses = self.client.apply_batch_sync(commands, True)
        return [None if r.error else int(r.actor_id) for r in responses]

    def _spawn_vehicles(self, rng: random.Random, count: int) -> None:
        command = self._carla.command
        blueprints = sorted(self._library.filter("vehicle.*"), key=lambda b: b.id)
        points = list(self._map.get_spawn_points())
        rng.shuffle(points)
        batch = []
        for transform in points[:count]:
            blueprint = rng.choice(blueprints)
            if blueprint.has_attribute("color"):
                colors = blueprint.get_attribute("color").recommended_values
                blueprint.set_attribute("color", rng.choice(colors))
            blueprint.set_attribute("role_name", "autopilot")
            autopilot = command.SetAutopilot(
                command.FutureActor, True, self.traffic_manager.get_port()
            )
            batch.append(command.SpawnActor(blueprint, transform).then(autopilot))
        self._vehicle_ids = [i for i in self._spawn(batch) if i is not None]

    def _spawn_walkers(self, rng: random.Random, count: int) -> None:
        carla = self._carla
        blueprints = sorted(self._library.filter("walker.pedestrian.*"), key=lambda b: b.id)
        batch, speeds = [], []
        for _ in range(count):
            location = self.world.get_random_location_from_navigation()
            if location is None:
                continue
            blueprint = rng.choice(blueprints)
            if blueprint.has_attribute("is_invincible"):
                blueprint.set_attribute("is_invincible", "false")
            speed = 1.4
            if blueprint.has_attribute("speed"):  # recommended: (still, walking, running)
                speed = float(blueprint.get_attribute("speed").recommended_values[1])
            batch.append(carla.command.SpawnActor(blueprint, carla.Transform(location)))
            speeds.append(speed)
        spawned = [(i, s) for i, s in zip(self._spawn(batch), speeds, strict=True) if i is not None]
        self._walker_ids = [i for i, _ in spawned]
        controller = self._library.find("controller.ai.walker")
        ids = self._spawn(
            [carla.command.SpawnActor(controller, carla.Transform(), i) for i, _ in spawned]
        )
        self.world.tick(self.timeout_s)  # controllers must exist on the server before start()
        actors = {a.id: a for a in self.world.get_actors([i for i in ids if i is not None])}
        for actor_id, (_, speed) in zip(ids, spawned, strict=True):
            if actor_id is None or actor_id not in actors:
                continue
            actors[actor_id].start()
            actors[actor_id].go_to_location(self.world.get_random_location_from_navigation())
            actors[actor_id].set_max_speed(speed)
            self._controllers.append(actors[actor_id])

    def _destroy_traffic(self) -> None:
        for controller in self._controllers:
            with contextlib.suppress(RuntimeError):
                controller.stop()
        ids = [c.id for c in self._controllers] + self._walker_ids + self._vehicle_ids
        if ids:
            destroy = self._carla.command.DestroyActor
            self.client.apply_batch_sync([destroy(i) for i in ids], True)
        self._controllers, self._walker_ids, self._vehicle_ids = [], [], []

    # --- rendering ----------------------------------------------------------------------------
    def _rig(self, camera: PinholeCamera) -> _Rig:
        attributes = camera_blueprint_attributes(camera)
        key = (attributes["image_size_x"], attributes["image_size_y"], attributes["fov"])
        rig = self._rigs.pop(key, None)  # re-inserted last: least recently used goes first
        if rig is None:
            while len(self._rigs) >= self.max_rigs:
                self._rigs.pop(next(iter(self._rigs))).destroy()
            rig = self._spawn_rig(attributes)
        self._rigs[key] = rig
        return rig

    def _spawn_rig(self, attributes: dict[str, str]) -> _Rig:
        sensors = {}
        for kind, blueprint_id in SENSOR_BLUEPRINTS.items():
            blueprint = self._library.find(blueprint_id)
            extra = self.rgb_attributes if kind == "rgb" else {}
            for name, value in {**_CAMERA_ATTRIBUTES, **attributes, **extra}.items():
                if blueprint.has_attribute(name):
                    blueprint.set_attribute(name, value)
            sensors[kind] = self.world.spawn_actor(blueprint, self._carla.Transform())
        return _Rig(sensors)

    def _carla_transform(self, transform: CarlaTransform) -> Any:
        carla = self._carla
        x, y, z = (float(v) for v in transform.location)
        rotation = carla.Rotation(pitch=transform.pitch, yaw=transform.yaw, roll=transform.roll)
        return carla.Transform(carla.Location(x=x, y=y, z=z), rotation)

    def render(self, camera: PinholeCamera, pose: Pose | np.ndarray) -> Render:
        """Render RGB, metric depth and the dynamic mask of a camera-to-world pose.

        Args:
            camera: Intrinsics with square pixels and a centred principal point (CARLA's).
            pose: Camera-to-world pose (OpenCV camera, ENU world) or its ``(4, 4)`` matrix.

        Returns:
            ``Render(rgb (H, W, 3) uint8, depth (H, W) float32 metres, 0 on the sky,
            dynamic (H, W) bool)``.
        """
        transform = self._carla_transform(pose_to_carla_transform(pose))
        rig = self._rig(camera)
        for sensor in rig.sensors.values():
            sensor.set_transform(transform)
        rig.listen()
        frame = self._tick(self.settle_ticks + 1, self.render_delta_s, rendering=True)
        images = {k: _bgra(_wait_frame(q, frame, self.timeout_s)) for k, q in rig.queues.items()}
        return compose_render(images["rgb"], images["depth"], images["semantic"])

    # --- teardown -----------------------------------------------------------------------------
    def close(self) -> None:
        """Destroy the cameras and traffic and restore the server's settings (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for rig in self._rigs.values():
            rig.destroy()
        self._rigs.clear()
        # attributes may be missing when the constructor failed half-way
        if getattr(self, "client", None) is not None:
            with contextlib.suppress(RuntimeError):
                self._destroy_traffic()
        if getattr(self, "traffic_manager", None) is not None:
            with contextlib.suppress(RuntimeError):
                self.traffic_manager.set_synchronous_mode(False)
        if self._original_settings is not None:
            with contextlib.suppress(RuntimeError):
                self.world.apply_settings(self._original_settings)
