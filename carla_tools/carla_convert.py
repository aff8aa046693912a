"""Pure conversions between CARLA's conventions and cityenv's; importable without ``carla``.

Frames. CARLA (Unreal Engine) uses a left-handed world: x forward, y right, z up, metres, with
rotations as ``(pitch, yaw, roll)`` in degrees. CARLA builds its towns from OpenDRIVE, whose
inertial frame is right-handed with x east and y north, and negates y on import: an OpenDRIVE
right-hand lane (id -1, at OpenDRIVE y < 0 for a road heading +x) lies at CARLA y > 0 (checked
with ``carla.Map`` built from an OpenDRIVE string), and CARLA's IMU docs say "north is the
direction of decreasing Y, east of increasing X". So the world converts as::

    e = x,  n = -y,  u = z            (S = diag(1, -1, 1), its own inverse)

A CARLA actor's rotation matrix ``M`` (LibCarla ``geom/Transform.h``, what
``carla.Transform.get_matrix()`` returns) has as columns the actor's forward (+x), right (+y) and
up (+z) axes in CARLA world coordinates. A CARLA camera looks along its +x with +y to the image
right and +z to the image top; an OpenCV camera has x right, y down, z forward. With ``P`` the map
from OpenCV camera axes to CARLA camera axes (x_cv -> +y, y_cv -> -z, z_cv -> +x), the
camera-to-world rotation in ENU is ``R = S @ M @ P``; both ``S`` and ``P`` flip handedness, so
``R`` is a proper rotation.

Positive yaw turns clockwise seen from above (from east towards south), so a CARLA yaw maps to
the compass heading ``90 + yaw``; positive pitch looks up; positive roll dips the right side.

Images. CARLA cameras send BGRA bytes. The depth camera encodes planar (z) depth as
``(R + 256 G + 256^2 B) / (256^3 - 1) * 1000`` metres, so 1000 m is its far plane (sky). The
semantic camera puts the class tag in the R channel (CARLA >= 0.9.14 tags, checked against
``carla.CityObjectLabel`` of carla 0.9.16).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from carla_tools.conditions import check_weather, to_utc
from carla_tools.sim import Render, RoadNetwork
from cityenv.errors import InvalidCameraError, ShapeMismatchError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.geodesy import LocalFrame
from cityenv.geometry.pose import Pose

__all__ = [
    "CARLA_FAR_M",
    "DYNAMIC_TAGS",
    "SKY_TAG",
    "CarlaJunction",
    "CarlaLane",
    "CarlaTransform",
    "WaypointRecord",
    "bgra_to_rgb",
    "build_road_network",
    "camera_blueprint_attributes",
    "camera_from_blueprint_attributes",
    "carla_location_to_enu",
    "carla_rotation_matrix",
    "carla_transform_to_pose",
    "carla_yaw_to_heading",
    "compass_to_carla_sun_azimuth",
    "compose_render",
    "decode_carla_depth",
    "dynamic_mask",
    "enu_to_carla_location",
    "group_lanes",
    "plan_time_change",
    "pose_to_carla_transform",
    "raw_to_bgra",
    "scaled_count",
    "semantic_tags",
    "split_ticks",
    "traffic_seed",
    "weather_parameters",
]

CARLA_FAR_M = 1000.0
"""Far plane of CARLA's depth camera, metres: the value an all-255 pixel (sky) decodes to."""

SKY_TAG = 11
"""Semantic tag of the sky."""

DYNAMIC_TAGS = (12, 13, 14, 15, 16, 17, 18, 19)
"""Semantic tags of moving things: pedestrian, rider, car, truck, bus, train, motorcycle, bicycle.

Tag 21 (``Dynamic``: movable props such as bins) is left out: CARLA does not move them.
"""

# ENU <- CARLA world: flip y (CARLA +y is south).
_S = np.diag([1.0, -1.0, 1.0])
# CARLA camera axes <- OpenCV camera axes; columns are x_cv, y_cv, z_cv in CARLA camera axes.
_P = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
_DEPTH_SCALE = CARLA_FAR_M / (256.0**3 - 1.0)


# --- positions and rotations ------------------------------------------------------------------
def _xyz(points: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim == 0 or arr.shape[-1] != 3:
        raise ShapeMismatchError(f"{name} must have shape (..., 3), got shape {arr.shape}.")
    return arr


def carla_location_to_enu(location: ArrayLike) -> np.ndarray:
    """CARLA world locations to ENU (``e = x, n = -y, u = z``).

    Args:
        location: CARLA ``(x, y, z)`` metres, shape ``(..., 3)``.

    Returns:
        ENU metres, shape ``(..., 3)`` float64.
    """
    return _xyz(location, "location") * np.array([1.0, -1.0, 1.0])


def enu_to_carla_location(enu: ArrayLike) -> np.ndarray:
    """ENU points to CARLA world locations (``x = e, y = -n, z = u``).

    Args:
        enu: ENU metres, shape ``(..., 3)``.

    Returns:
        CARLA ``(x, y, z)`` metres, shape ``(..., 3)`` float64.
    """
    return _xyz(enu, "enu") * np.array([1.0, -1.0, 1.0])


def carla_rotation_matrix(pitch_deg: float, yaw_deg: float, roll_deg: float) -> np.ndarray:
    """CARLA's rotation matrix of ``carla.Rotation(pitch, yaw, roll)``, in CARLA's axes.

    The same matrix as the upper-left block of ``carla.Transform.get_matrix()``.

    Returns:
        Shape ``(3, 3)``; columns are the actor's forward, right and up axes in CARLA world
        coordinates.
    """
    p, y, r = np.radians([pitch_deg, yaw_deg, roll_deg])
    cp, sp, cy, sy, cr, sr = np.cos(p), np.sin(p), np.cos(y), np.sin(y), np.cos(r), np.sin(r)
    return np.array(
        [
            [cp * cy, cy * sp * sr - sy * cr, -cy * sp * cr - sy * sr],
            [cp * sy, sy * sp * sr + cy * cr, -sy * sp * cr + cy * sr],
            [sp, -cp * sr, cp * cr],
        ]
    )


def _carla_euler(m: np.ndarray) -> tuple[float, float, float]:
    """``(pitch, yaw, roll)`` degrees of a CARLA rotation matrix ``(3, 3)``."""
    pitch = math.asin(float(np.clip(m[2, 0], -1.0, 1.0)))
    if math.cos(pitch) > 1e-9:
        yaw = math.atan2(m[1, 0], m[0, 0])
        roll = math.atan2(-m[2, 1], m[2, 2])
    else:  # looking straight up or down: yaw and roll turn about one axis, put it all in yaw
        yaw, roll = math.atan2(-m[0, 1], m[1, 1]), 0.0
    return math.degrees(pitch), math.degrees(yaw), math.degrees(roll)


class CarlaTransform(NamedTuple):
    """A CARLA transform as plain numbers (build a ``carla.Transform`` from it at the boundary).

    Attributes:
        location: CARLA world ``(x, y, z)`` metres, shape ``(3,)``.
        pitch: Degrees, positive looks up.
        yaw: Degrees, positive turns clockwise seen from above (east towards south).
        roll: Degrees, positive dips the right side.
    """

    location: np.ndarray
    pitch: float
    yaw: float
    roll: float


def carla_transform_to_pose(
    location: ArrayLike, pitch_deg: float, yaw_deg: float, roll_deg: float
) -> Pose:
    """The cityenv pose of a CARLA camera transform.

    Args:
        location: CARLA world ``(x, y, z)`` metres, shape ``(3,)``.
        pitch_deg: CARLA pitch, degrees.
        yaw_deg: CARLA yaw, degrees.
        roll_deg: CARLA roll, degrees.

    Returns:
        Camera-to-world pose: OpenCV camera, ENU world.
    """
    rotation = _S @ carla_rotation_matrix(pitch_deg, yaw_deg, roll_deg) @ _P
    return Pose.from_rt(rotation, carla_location_to_enu(location))


def pose_to_carla_transform(pose: Pose | ArrayLike) -> CarlaTransform:
    """The CARLA camera transform of a cityenv pose (inverse of :func:`carla_transform_to_pose`).

    Args:
        pose: Camera-to-world pose (OpenCV camera, ENU world) or its ``(4, 4)`` matrix.

    Returns:
        Location and ``(pitch, yaw, roll)`` in degrees; yaw in ``(-180, 180]``. Looking straight
        up or down, the roll is folded into the yaw.
    """
    pose = pose if isinstance(pose, Pose) else Pose.from_matrix(pose)
    m = _S @ pose.rotation_matrix @ _P.T
    pitch, yaw, roll = _carla_euler(m)
    return CarlaTransform(enu_to_carla_location(pose.position), pitch, yaw, roll)


def carla_yaw_to_heading(yaw_deg: float) -> float:
    """Compass heading (degrees clockwise from north, ``[0, 360)``) of a CARLA yaw."""
    return (90.0 + float(yaw_deg)) % 360.0


# --- images -----------------------------------------------------------------------------------
def raw_to_bgra(raw: bytes | memoryview, width: int, height: int) -> np.ndarray:
    """View a ``carla.Image.raw_data`` buffer as an image.

    Args:
        raw: ``height * width * 4`` bytes, BGRA, row-major.
        width: Image width ``W``.
        height: Image height ``H``.

    Returns:
        uint8 ``(H, W, 4)``, channels B, G, R, A (a copy, safe after the buffer is freed).
    """
    data = np.frombuffer(raw, dtype=np.uint8)
    if data.size != height * width * 4:
        raise ShapeMismatchError(
            f"raw image must hold height*width*4 = {height * width * 4} bytes (BGRA), got "
            f"{data.size}; check the camera's image_size_x/image_size_y."
        )
    return data.reshape(height, width, 4).copy()


def _check_bgra(bgra: np.ndarray) -> np.ndarray:
    bgra = np.asarray(bgra)
    if bgra.ndim != 3 or bgra.shape[2] != 4 or bgra.dtype != np.uint8:
        raise ShapeMismatchError(
            f"image must be uint8 of shape (H, W, 4) in BGRA order, got {bgra.dtype} "
            f"{bgra.shape}; use raw_to_bgra on carla.Image.raw_data."
        )
    return bgra


def bgra_to_rgb(bgra: np.ndarray) -> np.ndarray:
    """RGB of a BGRA image: uint8 ``(H, W, 4)`` -> uint8 ``(H, W, 3)`` (contiguous)."""
    return np.ascontiguousarray(_check_bgra(bgra)[..., 2::-1])


def decode_carla_depth(bgra: np.ndarray, *, far_to_zero: bool = True) -> np.ndarray:
    """Metric z-depth of a raw CARLA depth image.

    ``depth = (R + 256 G + 256^2 B) / (256^3 - 1) * 1000`` metres.

    Args:
        bgra: Raw depth image, uint8 ``(H, W, 4)``, channels B, G, R, A.
        far_to_zero: Map the far plane (1000 m, the sky) to 0, cityenv's "no depth".

    Returns:
        float32 ``(H, W)`` metres.
    """
    bgra = _check_bgra(bgra).astype(np.uint32)
    code = bgra[..., 2] + (bgra[..., 1] << 8) + (bgra[..., 0] << 16)
    depth = code.astype(np.float64) * _DEPTH_SCALE  # float64 first: 24-bit codes exceed float32
    if far_to_zero:
        depth[code == 0xFFFFFF] = 0.0
    return depth.astype(np.float32)


def semantic_tags(bgra: np.ndarray) -> np.ndarray:
    """Class tags of a raw CARLA semantic image: R channel of uint8 ``(H, W, 4)`` -> ``(H, W)``."""
    return np.ascontiguousarray(_check_bgra(bgra)[..., 2])


def dynamic_mask(tags: np.ndarray) -> np.ndarray:
    """Bool ``(H, W)``: true where a tag ``(H, W)`` is a vehicle or a person (DYNAMIC_TAGS)."""
    return np.isin(np.asarray(tags), DYNAMIC_TAGS)


def compose_render(rgb: np.ndarray, depth: np.ndarray, semantic: np.ndarray) -> Render:
    """One cityenv render from the raw images of CARLA's RGB, depth and semantic cameras.

    Args:
        rgb: Raw RGB camera image, uint8 ``(H, W, 4)`` BGRA.
        depth: Raw depth camera image, uint8 ``(H, W, 4)`` BGRA.
        semantic: Raw semantic camera image, uint8 ``(H, W, 4)`` BGRA, tag in R.

    Returns:
        ``Render(rgb (H, W, 3) uint8, depth (H, W) float32 metres with 0 on the sky and at the
        far plane, dynamic (H, W) bool)``.
    """
    tags = semantic_tags(semantic)
    metres = decode_carla_depth(depth)
    if tags.shape != metres.shape:
        raise ShapeMismatchError(
            f"depth and semantic images must have the same shape, got {metres.shape} and "
            f"{tags.shape}; spawn the cameras with the same image size."
        )
    metres[tags == SKY_TAG] = 0.0
    return Render(bgra_to_rgb(rgb), metres, dynamic_mask(tags))


# --- intrinsics -------------------------------------------------------------------------------
def camera_blueprint_attributes(camera: PinholeCamera) -> dict[str, str]:
    """CARLA camera blueprint attributes that give ``camera``'s intrinsics.

    CARLA cameras have square pixels, the principal point at the image centre and a horizontal
    field of view ``fov``.

    Args:
        camera: Intrinsics with ``fx == fy`` and ``(cx, cy) == (W / 2, H / 2)``.

    Returns:
        ``{"image_size_x": W, "image_size_y": H, "fov": degrees}`` as strings.

    Raises:
        InvalidCameraError: If the pixels are not square or the principal point is off centre.
    """
    if not math.isclose(camera.fx, camera.fy, rel_tol=1e-6):
        raise InvalidCameraError(
            f"CARLA cameras have square pixels, got fx={camera.fx} and fy={camera.fy}; build "
            "the camera with PinholeCamera.from_fov(width, height, fov_x_deg)."
        )
    if abs(camera.cx - camera.width / 2) > 1e-3 or abs(camera.cy - camera.height / 2) > 1e-3:
        raise InvalidCameraError(
            "CARLA cameras have the principal point at the image centre "
            f"({camera.width / 2}, {camera.height / 2}), got ({camera.cx}, {camera.cy}); crop "
            "a larger centred render instead."
        )
    return {
        "image_size_x": str(camera.width),
        "image_size_y": str(camera.height),
        "fov": format(camera.fov_x_deg, ".12g"),  # "90", not "89.99999999999999"
    }


def camera_from_blueprint_attributes(attributes: Mapping[str, object]) -> PinholeCamera:
    """The intrinsics of a CARLA camera from its blueprint attributes.

    Args:
        attributes: ``image_size_x``, ``image_size_y`` and ``fov`` (horizontal, degrees), as
            numbers or strings; CARLA's defaults (800, 600, 90) for missing keys.

    Returns:
        A centred camera with square pixels.
    """
    width = int(float(str(attributes.get("image_size_x", 800))))
    height = int(float(str(attributes.get("image_size_y", 600))))
    return PinholeCamera.from_fov(width, height, float(str(attributes.get("fov", 90.0))))


# --- weather and time -------------------------------------------------------------------------
# Values from CARLA 0.9.16's ClearNoon, CloudyNoon and WetCloudyNoon presets; fog is CloudyNoon
# with dense low fog. The sun comes from the time of day instead of the presets' fixed 45 degrees.
_BASE = {
    "precipitation": 0.0,
    "precipitation_deposits": 0.0,
    "wind_intensity": 10.0,
    "fog_distance": 0.75,
    "fog_falloff": 0.1,
    "wetness": 0.0,
    "scattering_intensity": 1.0,
    "mie_scattering_scale": 0.03,
    "rayleigh_scattering_scale": 0.0331,
}
_WEATHER_PRESETS: dict[str, dict[str, float]] = {
    "clear": {**_BASE, "cloudiness": 5.0, "fog_density": 2.0},
    "overcast": {**_BASE, "cloudiness": 60.0, "fog_density": 3.0},
    "wet": {
        **_BASE,
        "cloudiness": 60.0,
        "fog_density": 3.0,
        "precipitation_deposits": 50.0,
        "wetness": 70.0,
    },
    "fog": {
        **_BASE,
        "cloudiness": 80.0,
        "fog_density": 65.0,
        "fog_distance": 5.0,
        "fog_falloff": 1.0,
    },
}


def compass_to_carla_sun_azimuth(azimuth_deg: float) -> float:
    """CARLA ``sun_azimuth_angle`` for a sun at a compass azimuth (degrees clockwise from north).

    Assumes CARLA measures the sun's azimuth like an actor's yaw (0 = +x = east, 90 = +y =
    south), so ``carla = compass - 90``. CARLA documents it only as "an origin point in a sphere
    determined by Unreal Engine"; this is not checked against a server.
    """
    return (float(azimuth_deg) - 90.0) % 360.0


def weather_parameters(name: str, sun_elevation_deg: float, sun_azimuth_deg: float) -> dict:
    """Keyword arguments of ``carla.WeatherParameters`` for a weather and a sun position.

    Args:
        name: One of :data:`carla_tools.conditions.WEATHERS`.
        sun_elevation_deg: Sun elevation, degrees (negative at night).
        sun_azimuth_deg: Sun compass azimuth, degrees clockwise from north.

    Returns:
        Field name -> float.

    Raises:
        UnknownNameError: For an unknown weather (the message says "Did you mean ...?").
    """
    params = dict(_WEATHER_PRESETS[check_weather(name)])
    params["sun_altitude_angle"] = float(sun_elevation_deg)
    params["sun_azimuth_angle"] = compass_to_carla_sun_azimuth(sun_azimuth_deg)
    return params


def traffic_seed(seed: int, when: datetime) -> int:
    """Seed of the traffic respawned for a world time: the same ``(seed, when)``, the same cars.

    Args:
        seed: The simulator's seed.
        when: World time (naive = UTC), resolved to whole seconds.

    Returns:
        A seed in ``[0, 2**31)`` (what CARLA's Traffic Manager and walker seeds accept).
    """
    stamp = int(math.floor(to_utc(when).timestamp()))
    state = np.random.SeedSequence([int(seed), stamp & 0xFFFFFFFF, (stamp >> 32) & 0xFFFFFFFF])
    return int(state.generate_state(1)[0] & 0x7FFFFFFF)


def plan_time_change(current: datetime, target: datetime, max_catch_up_s: float) -> float | None:
    """How to move a CARLA world from ``current`` to ``target`` time.

    CARLA cannot rewind: actors only move forward, one tick at a time.

    Returns:
        Seconds to simulate forward when ``0 <= target - current <= max_catch_up_s``; ``None``
        when the traffic must be respawned instead (going back, or too far ahead to simulate).
    """
    delta = (to_utc(target) - to_utc(current)).total_seconds()
    return delta if 0.0 <= delta <= max_catch_up_s else None


def split_ticks(seconds: float, delta_s: float, carry_s: float = 0.0) -> tuple[int, float]:
    """Whole fixed-step ticks in ``seconds`` plus an earlier remainder.

    Args:
        seconds: Time to advance, ``>= 0``.
        delta_s: Fixed tick length, ``> 0``.
        carry_s: Remainder left by earlier calls, ``[0, delta_s)``.

    Returns:
        ``(ticks, new_carry_s)`` with ``ticks * delta_s + new_carry_s == seconds + carry_s``.
    """
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"seconds must be finite and >= 0, got {seconds!r}; time only runs on.")
    total = seconds + carry_s
    ticks = int(math.floor(total / delta_s + 1e-9))
    return ticks, max(total - ticks * delta_s, 0.0)


def scaled_count(slots: int, fraction: float) -> int:
    """Actors to spawn: ``round(slots * fraction)`` with the fraction clipped to ``[0, 1]``."""
    return int(round(slots * min(max(float(fraction), 0.0), 1.0)))


# --- road network -----------------------------------------------------------------------------
class WaypointRecord(NamedTuple):
    """What the road network needs of one ``carla.Waypoint``.

    Attributes:
        road_id: OpenDRIVE road id.
        section_id: Lane section id within the road.
        lane_id: OpenDRIVE lane id (negative: right of the reference line).
        s: Distance along the road's reference line, metres.
        location: CARLA world ``(x, y, z)`` of the lane centre, metres.
        width: Lane width, metres.
        junction_id: Id of the junction the waypoint lies in, ``-1`` if none.
        forward: True if traffic on the lane runs towards increasing ``s``.
    """

    road_id: int
    section_id: int
    lane_id: int
    s: float
    location: tuple[float, float, float]
    width: float
    junction_id: int
    forward: bool


LaneKey = tuple[int, int, int]
"""``(road_id, section_id, lane_id)``."""


@dataclass(frozen=True)
class CarlaLane:
    """A lane of a CARLA map between junctions (satisfies :class:`carla_tools.sim.LaneLike`).

    Attributes:
        id: Index in :attr:`RoadNetwork.lanes`.
        width: Mean lane width, metres.
        waypoints: Centre line in ENU, ``(N, 3)`` float64, ``N >= 2``, in travel order.
        entry: Intersection index the lane comes from, ``-1`` if none.
        exit: Intersection index the lane leads into, ``-1`` if none.
        key: CARLA ``(road_id, section_id, lane_id)``.
    """

    id: int
    width: float
    waypoints: np.ndarray
    entry: int
    exit: int
    key: LaneKey


@dataclass(frozen=True)
class CarlaJunction:
    """A CARLA junction (satisfies :class:`carla_tools.sim.IntersectionLike`).

    Attributes:
        id: Index in :attr:`RoadNetwork.intersections`.
        center: Centre in ENU, ``(3,)``.
        incoming: Lane ids that end here.
        outgoing: Lane ids that start here.
        junction_id: CARLA's junction id.
    """

    id: int
    center: np.ndarray
    incoming: tuple[int, ...]
    outgoing: tuple[int, ...]
    junction_id: int


def group_lanes(records: Sequence[WaypointRecord]) -> dict[LaneKey, list[WaypointRecord]]:
    """Group waypoints outside junctions into lanes by ``(road_id, section_id, lane_id)``.

    Waypoints inside junctions (connecting roads) are dropped: lanes run from junction to
    junction, as in the procedural town. Lanes with fewer than 2 waypoints are dropped.

    Args:
        records: Waypoints of a map, any order.

    Returns:
        Key -> waypoints in travel order; keys sorted.
    """
    groups: dict[LaneKey, list[WaypointRecord]] = defaultdict(list)
    for record in records:
        if record.junction_id < 0:
            groups[(record.road_id, record.section_id, record.lane_id)].append(record)
    lanes = {}
    for key in sorted(groups):
        ordered = sorted(groups[key], key=lambda r: r.s, reverse=not groups[key][0].forward)
        if len(ordered) >= 2:
            lanes[key] = ordered
    return lanes


def build_road_network(
    frame: LocalFrame,
    lanes: Mapping[LaneKey, Sequence[WaypointRecord]],
    links: Mapping[LaneKey, tuple[int, int]],
    junction_centers: Mapping[int, ArrayLike],
) -> RoadNetwork:
    """Assemble a :class:`RoadNetwork` in ENU from grouped CARLA waypoints.

    Args:
        frame: The map's ENU frame.
        lanes: Key -> waypoints in travel order (from :func:`group_lanes`).
        links: Key -> ``(entry, exit)`` CARLA junction ids, ``-1`` for none; missing = no links.
        junction_centers: CARLA junction id -> centre, CARLA world ``(3,)`` metres.

    Returns:
        Lanes numbered in key order and the junctions any lane touches, numbered by CARLA id.
    """
    used = sorted({j for k in lanes for j in links.get(k, (-1, -1)) if j >= 0})
    index = {jid: i for i, jid in enumerate(used)}
    incoming: dict[int, list[int]] = defaultdict(list)
    outgoing: dict[int, list[int]] = defaultdict(list)
    built = []
    for lane_id, (key, records) in enumerate(lanes.items()):
        entry, exit_ = (index.get(j, -1) for j in links.get(key, (-1, -1)))
        points = carla_location_to_enu(np.array([r.location for r in records]))
        width = float(np.mean([r.width for r in records]))
        built.append(CarlaLane(lane_id, width, points, entry, exit_, key))
        if entry >= 0:
            outgoing[entry].append(lane_id)
        if exit_ >= 0:
            incoming[exit_].append(lane_id)
    junctions = [
        CarlaJunction(
            i,
            carla_location_to_enu(junction_centers[jid]),
            tuple(incoming[i]),
            tuple(outgoing[i]),
            jid,
        )
        for i, jid in enumerate(used)
    ]
    return RoadNetwork(frame, built, junctions)
