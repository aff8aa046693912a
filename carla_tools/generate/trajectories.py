"""Camera trajectories over a road network: vehicles, pedestrians and free-flying cameras.

Pure numpy on a :class:`~carla_tools.sim.RoadNetwork` (no rendering), so every trajectory is a
function of the network, the kind's parameters and a seeded ``np.random.Generator``.

Frames: ENU world (x east, y north, z up, metres), OpenCV cameras, camera-to-world poses. A route
is first built as a dense ground polyline ``(N, 3)`` (lanes joined by cubic Hermite curves through
junctions, or sidewalk lines joined at block corners), smoothed, then sampled at equal arc-length
steps of ``speed / fps``; the camera looks along the path tangent (plus smooth yaw / pitch offsets
for the free camera).

Glossary:
    road group: the lanes of one road in one direction (same entry, exit and direction).
    curb line: the right edge of a road group's outermost lane.
    sidewalk line: the curb line moved ``sidewalk_offset`` metres further right.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cityenv.errors import check_name
from cityenv.geometry.pose import Pose, Trajectory

KINDS = ("vehicle", "pedestrian", "free")
"""Trajectory kinds the generator renders."""

_DENSE_STEP = 0.25  # metres between points of the dense route polyline


class RouteError(RuntimeError):
    """No route of the requested length could be found from the drawn starts."""


@dataclass(frozen=True)
class KindParams:
    """Motion parameters of one trajectory kind.

    Attributes:
        speed: ``(low, high)`` speed range in metres per second; one speed is drawn per clip.
        height: ``(low, high)`` camera height above the road in metres (one value drawn for
            vehicles and pedestrians; the free camera moves smoothly within the range).
        lateral: Largest sideways offset from the lane centre (free camera), metres.
        yaw_amplitude_deg: Largest yaw offset from the path tangent (free camera), degrees.
        pitch_deg: ``(low, high)`` pitch range, degrees, positive up (free camera moves within
            it; other kinds draw one value).
        sidewalk_offset: Distance from the curb to the walking line (pedestrians), metres.
        smooth_m: Length of the moving-average window that rounds the route's corners, metres.
    """

    speed: tuple[float, float] = (8.0, 8.0)
    height: tuple[float, float] = (1.6, 1.6)
    lateral: float = 0.0
    yaw_amplitude_deg: float = 0.0
    pitch_deg: tuple[float, float] = (0.0, 0.0)
    sidewalk_offset: float = 1.5
    smooth_m: float = 6.0


DEFAULT_KIND_PARAMS = {
    "vehicle": KindParams(speed=(6.0, 10.0), height=(1.5, 1.7), smooth_m=6.0),
    "pedestrian": KindParams(speed=(1.2, 1.6), height=(1.55, 1.7), smooth_m=3.0),
    "free": KindParams(
        speed=(3.0, 6.0),
        height=(2.0, 15.0),
        lateral=1.5,
        yaw_amplitude_deg=35.0,
        pitch_deg=(-25.0, 5.0),
        smooth_m=8.0,
    ),
}
"""Parameters used when the caller gives none for a kind."""


# --- small planar helpers ---------------------------------------------------------------------
def _unit(v: np.ndarray) -> np.ndarray:
    """Rows of ``v`` (..., D) scaled to unit length."""
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _right(d: np.ndarray) -> np.ndarray:
    """Right-hand horizontal normal of ENU direction(s) ``d`` (..., 3), z = 0."""
    return np.stack([d[..., 1], -d[..., 0], np.zeros_like(d[..., 0])], axis=-1)


def _tangents(points: np.ndarray) -> np.ndarray:
    """Unit tangents of a polyline ``(N, D)`` by central differences, shape ``(N, D)``."""
    return _unit(np.gradient(points, axis=0))


def _arclength(points: np.ndarray) -> np.ndarray:
    """Cumulative arc length of a polyline ``(N, D)``, shape ``(N,)`` starting at 0."""
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])


def resample(points: np.ndarray, step: float) -> np.ndarray:
    """Points along a polyline ``(N, D)`` every ``step`` metres (the last within one step)."""
    s = _arclength(points)
    grid = np.arange(0.0, s[-1] + 1e-9, step)
    return np.stack([np.interp(grid, s, points[:, c]) for c in range(points.shape[1])], axis=1)


def smooth(points: np.ndarray, window_m: float, step: float = _DENSE_STEP) -> np.ndarray:
    """Moving average of an evenly spaced polyline ``(N, D)``, ends kept fixed.

    Rounds corners to about ``window_m / 2`` radius while leaving straight stretches unchanged.
    """
    half = int(round(window_m / step / 2))
    if half < 1 or len(points) < 2 * half + 1:
        return points
    padded = np.concatenate(
        [2 * points[:1] - points[half:0:-1], points, 2 * points[-1:] - points[-2 : -half - 2 : -1]]
    )
    kernel = np.ones(2 * half + 1) / (2 * half + 1)
    return np.stack(
        [np.convolve(padded[:, c], kernel, mode="valid") for c in range(points.shape[1])], axis=1
    )


def hermite(p0: np.ndarray, t0: np.ndarray, p1: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """Cubic Hermite curve from ``p0`` heading ``t0`` to ``p1`` heading ``t1`` (unit, ``(3,)``).

    Returns:
        Points every ~:data:`_DENSE_STEP` metres, ``(M, 3)``, excluding both ends.
    """
    chord = float(np.linalg.norm(p1 - p0))
    scale = 0.8 * chord  # close to a circular arc for a 90-degree turn
    m = max(int(math.ceil(chord * 1.3 / _DENSE_STEP)), 2)
    u = np.linspace(0.0, 1.0, m + 1)[1:-1, None]
    h00, h10 = 2 * u**3 - 3 * u**2 + 1, u**3 - 2 * u**2 + u
    h01, h11 = -2 * u**3 + 3 * u**2, u**3 - u**2
    return h00 * p0 + h10 * scale * t0 + h01 * p1 + h11 * scale * t1


def _smooth_noise(
    rng: np.random.Generator, t: np.ndarray, periods: tuple[float, float]
) -> np.ndarray:
    """A smooth random signal in ``[-1, 1]`` over times ``t`` ``(N,)``: three sinusoids."""
    period = rng.uniform(*periods, size=3)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    weight = rng.uniform(0.5, 1.0, size=3)
    signal = (weight[:, None] * np.sin(2 * np.pi * t[None] / period[:, None] + phase[:, None])).sum(
        0
    )
    return signal / weight.sum()


# --- the road network as a graph ----------------------------------------------------------------
@dataclass(frozen=True)
class LaneGraph:
    """Lanes of a network with their directions and road groups.

    Attributes:
        waypoints: Per lane, centre-line points ``(N, 3)`` (z = road surface).
        widths: Per lane width, metres, ``(L,)``.
        entry: Per lane entry intersection id (``-1`` = border), ``(L,)``.
        exit: Per lane exit intersection id, ``(L,)``.
        outgoing: Per intersection id, the lanes leaving it.
        group: Per lane, the id of its road group.
        outermost: Per road group, the lane furthest to the right.
    """

    waypoints: list[np.ndarray]
    widths: np.ndarray
    entry: np.ndarray
    exit: np.ndarray
    outgoing: dict[int, tuple[int, ...]]
    group: np.ndarray
    outermost: dict[int, int]

    @classmethod
    def from_network(cls, network) -> LaneGraph:
        """Build from a :class:`~carla_tools.sim.RoadNetwork` (lane ids must be list indices)."""
        lanes = list(network.lanes)
        wps = [np.asarray(lane.waypoints, dtype=np.float64) for lane in lanes]
        entry = np.array([lane.entry for lane in lanes])
        exit_ = np.array([lane.exit for lane in lanes])
        outgoing = {int(i.id): tuple(int(x) for x in i.outgoing) for i in network.intersections}
        group, outermost = _road_groups(wps, entry, exit_)
        widths = np.array([float(lane.width) for lane in lanes])
        return cls(wps, widths, entry, exit_, outgoing, group, outermost)

    def start_lanes(self) -> np.ndarray:
        """Lanes routes start on: those between two junctions (all lanes if there are none),
        so clips begin inside the town rather than on a road leaving it."""
        inner = np.flatnonzero((self.entry >= 0) & (self.exit >= 0))
        return inner if inner.size else np.arange(len(self.waypoints))

    def direction(self, lane: int, end: int) -> np.ndarray:
        """Unit travel direction at the start (``end=0``) or end (``end=-1``) of a lane."""
        wp = self.waypoints[lane]
        d = wp[1] - wp[0] if end == 0 else wp[-1] - wp[-2]
        return _unit(d)

    def length(self, lane: int) -> float:
        """Length of a lane's centre line, metres."""
        return float(_arclength(self.waypoints[lane])[-1])

    def road_km(self) -> float:
        """Length of road, km: per road group the mean lane length, halved for two-way roads."""
        groups = np.unique(self.group)
        per_group = [
            np.mean([self.length(i) for i in np.flatnonzero(self.group == g)]) for g in groups
        ]
        pairs = {(min(a, b), max(a, b)) for a, b in zip(self.entry, self.exit, strict=True)}
        directions = len(groups) / max(len(pairs), 1)  # about 2 on a network of two-way roads
        return float(np.sum(per_group)) / directions / 1000.0

    def curb_line(self, lane: int, offset: float) -> np.ndarray:
        """The line ``offset`` metres right of the curb of ``lane``'s road group, ``(N, 3)``."""
        outer = self.outermost[int(self.group[lane])]
        wp = self.waypoints[outer]
        return wp + _right(_tangents(wp)) * (self.widths[outer] / 2 + offset)


def _road_groups(
    wps: list[np.ndarray], entry: np.ndarray, exit_: np.ndarray
) -> tuple[np.ndarray, dict[int, int]]:
    """Group lanes by (entry, exit, direction) and find each group's right-most lane."""
    keys: list[tuple[int, int, np.ndarray]] = []
    group = np.empty(len(wps), dtype=np.int64)
    for i, wp in enumerate(wps):
        d = _unit(wp[-1] - wp[0])
        for g, (a, b, dg) in enumerate(keys):
            if a == entry[i] and b == exit_[i] and float(d @ dg) > 0.95:
                group[i] = g
                break
        else:
            group[i] = len(keys)
            keys.append((int(entry[i]), int(exit_[i]), d))
    outermost: dict[int, int] = {}
    for g, (_, _, d) in enumerate(keys):
        members = np.flatnonzero(group == g)
        offsets = [float(wps[i].mean(0) @ _right(d)) for i in members]
        outermost[g] = int(members[int(np.argmax(offsets))])
    return group, outermost


def _turn_angle(d_in: np.ndarray, d_out: np.ndarray) -> float:
    """Signed horizontal turn from ``d_in`` to ``d_out``, radians, positive = left."""
    cross = d_in[0] * d_out[1] - d_in[1] * d_out[0]
    return math.atan2(cross, float(d_in[:2] @ d_out[:2]))


def _start_index(count: int, length: float, rng: np.random.Generator) -> int:
    """Where on a dense line of ``count`` points a route of ``length`` metres starts.

    Half the routes start close enough to the line's end that they reach the junction (so clips
    turn often); the others start anywhere in the line's first half.
    """
    if rng.uniform() < 0.5:
        before_end = rng.uniform(0.2, 0.8) * length / _DENSE_STEP
        return int(np.clip(count - 1 - before_end, 0, count - 2))
    return int(rng.integers(max(count // 2, 1)))


# --- routes --------------------------------------------------------------------------------------
def _next_vehicle_lane(graph: LaneGraph, lane: int, rng: np.random.Generator) -> int | None:
    """A random non-U-turn lane leaving the junction ``lane`` leads into (None at the border)."""
    node = int(graph.exit[lane])
    d_in = graph.direction(lane, -1)
    options = [
        out
        for out in graph.outgoing.get(node, ())
        if abs(_turn_angle(d_in, graph.direction(out, 0))) < math.radians(150)
    ]
    return int(rng.choice(options)) if options else None


def vehicle_route(
    graph: LaneGraph, length: float, rng: np.random.Generator, attempts: int = 50
) -> np.ndarray:
    """A lane-following ground route of at least ``length`` metres with random turns.

    Starts at a random point of a random lane; at each junction picks any outgoing lane that is
    not a U-turn; junctions are crossed on a Hermite curve.

    Returns:
        Dense polyline ``(N, 3)`` on the road surface, points ~0.25 m apart.

    Raises:
        RouteError: If no start gives a long enough route within ``attempts`` draws.
    """
    for _ in range(attempts):
        lane = int(rng.choice(graph.start_lanes()))
        wp = resample(graph.waypoints[lane], _DENSE_STEP)
        pieces = [wp[_start_index(len(wp), length, rng) :]]
        total = float(_arclength(pieces[0])[-1])
        while total < length:
            nxt = _next_vehicle_lane(graph, lane, rng)
            if nxt is None:
                break
            nxt_wp = resample(graph.waypoints[nxt], _DENSE_STEP)
            pieces.append(
                hermite(
                    pieces[-1][-1], graph.direction(lane, -1), nxt_wp[0], graph.direction(nxt, 0)
                )
            )
            pieces.append(nxt_wp)
            total = float(_arclength(np.concatenate(pieces))[-1])
            lane = nxt
        if total >= length:
            return resample(np.concatenate(pieces), _DENSE_STEP)
    raise RouteError(f"expected a lane route of {length:.0f} m, found none in {attempts} draws.")


def _right_turn(graph: LaneGraph, lane: int) -> int | None:
    """The outermost lane of the road turning right at ``lane``'s exit (None if there is none)."""
    node = int(graph.exit[lane])
    d_in = graph.direction(lane, -1)
    best, best_angle = None, math.radians(-45)
    for out in graph.outgoing.get(node, ()):
        angle = _turn_angle(d_in, graph.direction(out, 0))
        if -math.radians(150) < angle < best_angle:
            best, best_angle = out, angle
    if best is None:
        return None
    return graph.outermost[int(graph.group[best])]


def _corner(a: np.ndarray, da: np.ndarray, b: np.ndarray, db: np.ndarray) -> np.ndarray | None:
    """Where the line through ``a`` along ``da`` meets the line through ``b`` along ``db``."""
    m = np.array([[da[0], -db[0]], [da[1], -db[1]]])
    if abs(np.linalg.det(m)) < 1e-6:
        return None
    s = np.linalg.solve(m, (b - a)[:2])[0]
    return a + s * da


def pedestrian_route(
    graph: LaneGraph,
    length: float,
    rng: np.random.Generator,
    sidewalk_offset: float = 1.5,
    attempts: int = 50,
) -> np.ndarray:
    """A sidewalk walk of at least ``length`` metres, turning right round block corners.

    The walking line is ``sidewalk_offset`` metres right of the curb of the road on the walker's
    right; at a junction it meets the next road's walking line at their intersection (the
    block corner), so the walker stays on one block's sidewalk and never crosses a road.

    Returns:
        Dense polyline ``(N, 3)``, points ~0.25 m apart.

    Raises:
        RouteError: If no start gives a long enough walk within ``attempts`` draws.
    """
    for _ in range(attempts):
        lane = int(rng.choice(graph.start_lanes()))
        line = resample(graph.curb_line(lane, sidewalk_offset), _DENSE_STEP)
        pieces = [line[_start_index(len(line), length, rng) :]]
        total = float(_arclength(pieces[0])[-1])
        while total < length:
            nxt = _right_turn(graph, lane)
            if nxt is None:
                break
            nxt_line = resample(graph.curb_line(nxt, sidewalk_offset), _DENSE_STEP)
            corner = _corner(
                pieces[-1][-1], graph.direction(lane, -1), nxt_line[0], graph.direction(nxt, 0)
            )
            if corner is None:
                break
            pieces += [
                resample(np.stack([pieces[-1][-1], corner, nxt_line[0]]), _DENSE_STEP),
                nxt_line,
            ]
            total = float(_arclength(np.concatenate(pieces))[-1])
            lane = nxt
        if total >= length:
            return resample(np.concatenate(pieces), _DENSE_STEP)
    raise RouteError(f"expected a sidewalk walk of {length:.0f} m, found none in {attempts} draws.")


# --- trajectories ---------------------------------------------------------------------------------
def _sample_path(route: np.ndarray, num_frames: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(F, 3)`` every ``step`` metres along ``route`` and unit tangents ``(F, 3)``."""
    s = _arclength(route)
    grid = np.arange(num_frames) * step
    pos = np.stack([np.interp(grid, s, route[:, c]) for c in range(3)], axis=1)
    tangent = _tangents(route)
    tan = _unit(np.stack([np.interp(grid, s, tangent[:, c]) for c in range(3)], axis=1))
    return pos, tan


def headings_deg(tangents: np.ndarray) -> np.ndarray:
    """Compass headings (degrees clockwise from north) of ENU directions ``(N, 3)``, ``(N,)``."""
    return np.degrees(np.arctan2(tangents[:, 0], tangents[:, 1])) % 360.0


def _poses(positions: np.ndarray, heading: np.ndarray, pitch: np.ndarray, fps: float) -> Trajectory:
    """Poses at ``positions`` ``(F, 3)`` looking along ``heading`` / ``pitch`` ``(F,)`` degrees."""
    rows = zip(positions, heading, pitch, strict=True)
    poses = [Pose.from_heading(p, float(h), float(e)) for p, h, e in rows]
    return Trajectory.from_poses(poses, fps=fps)


def make_trajectory(
    kind: str,
    graph: LaneGraph,
    num_frames: int,
    fps: float,
    rng: np.random.Generator,
    params: KindParams | None = None,
) -> Trajectory:
    """A camera trajectory of one kind with a pose at every frame.

    Args:
        kind: One of :data:`KINDS`.
        graph: The road network's lane graph.
        num_frames: Number of frames ``F >= 2``.
        fps: Frame rate; timestamps are ``0, 1/fps, ...`` seconds.
        rng: Source of every random choice (start, turns, speed, height, flight).
        params: Motion parameters; :data:`DEFAULT_KIND_PARAMS` of the kind if None.

    Returns:
        ``F`` camera-to-world poses (OpenCV camera, ENU world).

    Raises:
        UnknownNameError: (a ValueError) For an unknown kind ("Did you mean ...?").
        ValueError: For fewer than 2 frames.
        RouteError: If the network has no route long enough.
    """
    check_name("kind", kind, KINDS)
    if num_frames < 2 or fps <= 0:
        raise ValueError(f"need num_frames >= 2 and fps > 0, got {num_frames} and {fps}.")
    p = params or DEFAULT_KIND_PARAMS[kind]
    speed = float(rng.uniform(*p.speed))
    step = speed / fps
    length = step * (num_frames - 1) + p.smooth_m
    if kind == "pedestrian":
        route = pedestrian_route(graph, length, rng, p.sidewalk_offset)
    else:
        route = vehicle_route(graph, length, rng)
    route = smooth(route, p.smooth_m)
    pos, tan = _sample_path(route, num_frames, step)
    heading = headings_deg(tan)
    if kind == "free":
        return _free_flight(pos, tan, heading, fps, rng, p)
    pos = pos + np.array([0.0, 0.0, rng.uniform(*p.height)])
    pitch = np.full(num_frames, rng.uniform(*p.pitch_deg))
    return _poses(pos, heading, pitch, fps)


def _free_flight(
    pos: np.ndarray,
    tan: np.ndarray,
    heading: np.ndarray,
    fps: float,
    rng: np.random.Generator,
    p: KindParams,
) -> Trajectory:
    """Lift a ground path into a smooth flight: height, sideways drift, yaw and pitch waves."""
    t = np.arange(len(pos)) / fps
    lo, hi = p.height
    height = lo + (hi - lo) * (0.5 + 0.5 * _smooth_noise(rng, t, (6.0, 16.0)))
    lateral = p.lateral * _smooth_noise(rng, t, (5.0, 12.0))
    yaw = p.yaw_amplitude_deg * _smooth_noise(rng, t, (4.0, 10.0))
    plo, phi = p.pitch_deg
    pitch = plo + (phi - plo) * (0.5 + 0.5 * _smooth_noise(rng, t, (4.0, 10.0)))
    pos = pos + _right(tan) * lateral[:, None] + np.stack([0 * t, 0 * t, height], axis=1)
    return _poses(pos, (heading + yaw) % 360.0, pitch, fps)


def trajectory_headings(trajectory: Trajectory) -> np.ndarray:
    """Compass heading of each pose's optical axis, degrees, ``(N,)``."""
    forward = trajectory.matrices[:, :3, 2]
    return headings_deg(forward)


def yaw_rates_deg(trajectory: Trajectory) -> np.ndarray:
    """Absolute heading change per second between consecutive poses, degrees/s, ``(N-1,)``."""
    h = trajectory_headings(trajectory)
    dh = (np.diff(h) + 180.0) % 360.0 - 180.0
    return np.abs(dh) / np.diff(trajectory.timestamps)


def kinds_cycle(mix: Sequence[str], count: int) -> list[str]:
    """``count`` kinds taken round-robin from ``mix`` (e.g. ``["vehicle", "pedestrian"]``)."""
    for kind in mix:
        if kind not in KINDS:
            raise ValueError(f"clip kinds must be among {KINDS}, got {kind!r}.")
    return [mix[i % len(mix)] for i in range(count)]
