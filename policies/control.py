"""The route follower's control law: pure functions on poses, headings and polylines.

Frames: the city's ENU world (x east, y north, metres); headings are compass degrees (clockwise
from north), so a positive heading error means the target lies to the right. Nothing here knows
about the environment; :class:`~policies.route_follower.RouteFollower` glues it to one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DISCRETE_LEFT",
    "DISCRETE_RIGHT",
    "DISCRETE_STOP",
    "DISCRETE_STRAIGHT",
    "RoutePath",
    "bearing_deg",
    "discrete_action",
    "plan_discrete",
    "trajectory_chunk",
    "velocity_command",
    "wrap_deg",
]

DISCRETE_STRAIGHT, DISCRETE_STOP, DISCRETE_LEFT, DISCRETE_RIGHT = 0, 1, 2, 3
"""The discrete actions of :class:`cityenv.envs.CityWorldEnv` (``Discrete(4)``)."""


def wrap_deg(angle_deg: float) -> float:
    """An angle wrapped to ``[-180, 180)`` degrees."""
    return (float(angle_deg) + 180.0) % 360.0 - 180.0


def bearing_deg(source_xy: np.ndarray, target_xy: np.ndarray) -> float:
    """Compass heading from ``source_xy`` to ``target_xy`` (ENU, shape ``(2,)`` or more).

    Returns:
        Degrees clockwise from north in ``[0, 360)``; 0 when the points coincide.
    """
    dx, dy = float(target_xy[0] - source_xy[0]), float(target_xy[1] - source_xy[1])
    if math.hypot(dx, dy) < 1e-9:
        return 0.0
    return math.degrees(math.atan2(dx, dy)) % 360.0


def discrete_action(
    heading_error_deg: float, remaining_m: float, *, turn_threshold_deg: float, stop_radius_m: float
) -> int:
    """The discrete action that steers toward a target.

    Args:
        heading_error_deg: Target bearing minus current heading, degrees (positive = right).
        remaining_m: Distance left to the goal along the route, metres.
        turn_threshold_deg: Turn when the error exceeds this (about half a turn action's angle,
            so a turn never overshoots by more than it corrects).
        stop_radius_m: Stop when the goal is nearer than this.

    Returns:
        0 straight, 1 stop, 2 left, 3 right.
    """
    if remaining_m <= stop_radius_m:
        return DISCRETE_STOP
    error = wrap_deg(heading_error_deg)
    if error > turn_threshold_deg:
        return DISCRETE_RIGHT
    if error < -turn_threshold_deg:
        return DISCRETE_LEFT
    return DISCRETE_STRAIGHT


def velocity_command(
    heading_error_deg: float,
    remaining_m: float,
    *,
    duration_s: float,
    max_speed: float,
    max_yaw_rate_deg: float,
    stop_radius_m: float,
) -> tuple[float, float]:
    """Forward speed and yaw rate that steer toward a target within one chunk.

    The yaw rate turns the whole error away over the chunk (clipped); the speed falls with the
    square of the cosine of the error (no driving sideways) and with the distance left, so the
    chunk ends at the goal rather than past it.

    Args:
        heading_error_deg: Target bearing minus current heading, degrees (positive = right).
        remaining_m: Distance left to the goal, metres.
        duration_s: Duration of one chunk, seconds (``chunk_length / fps``).
        max_speed: Largest forward speed, m/s.
        max_yaw_rate_deg: Largest yaw rate, degrees/s.
        stop_radius_m: Stand still when the goal is nearer than this.

    Returns:
        ``(forward m/s, yaw rate deg/s)``; the yaw rate is positive to the *left*
        (counter-clockwise seen from above), the environment's convention.
    """
    if remaining_m <= stop_radius_m:
        return 0.0, 0.0
    error = wrap_deg(heading_error_deg)
    yaw_left = float(np.clip(-error / duration_s, -max_yaw_rate_deg, max_yaw_rate_deg))
    alignment = max(0.0, math.cos(math.radians(error)))
    speed = min(max_speed * alignment**2, remaining_m / duration_s)
    return float(speed), yaw_left


@dataclass(frozen=True)
class _Located:
    """Where a point projects onto a path: arc length and distance off the path."""

    s: float
    offset: float


class RoutePath:
    """A polyline route in the ground plane with arc-length look-ups.

    Args:
        points: Route points in ENU, shape ``(N, 2)`` or ``(N, 3)`` (z is dropped), ``N >= 1``;
            consecutive duplicates are removed.
    """

    def __init__(self, points: np.ndarray) -> None:
        xy = np.asarray(points, np.float64).reshape(len(points), -1)[:, :2]
        if len(xy) == 0:
            raise ValueError("a route needs at least one point, got none.")
        keep = np.ones(len(xy), bool)
        keep[1:] = np.linalg.norm(np.diff(xy, axis=0), axis=1) > 1e-6
        self.points = xy[keep]
        steps = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
        self.cumulative = np.concatenate([[0.0], np.cumsum(steps)])

    @property
    def length(self) -> float:
        """Total length in metres."""
        return float(self.cumulative[-1])

    def point(self, s: float) -> np.ndarray:
        """The point at arc length ``s`` (clamped to the route), shape ``(2,)``."""
        if len(self.points) == 1:
            return self.points[0].copy()
        s = float(np.clip(s, 0.0, self.length))
        i = int(np.clip(np.searchsorted(self.cumulative, s, side="right") - 1, 0, len(self) - 2))
        seg = self.cumulative[i + 1] - self.cumulative[i]
        tau = 0.0 if seg <= 0 else (s - self.cumulative[i]) / seg
        return self.points[i] + tau * (self.points[i + 1] - self.points[i])

    def heading(self, s: float) -> float:
        """Compass heading of the route at arc length ``s``, degrees (0 for a single point)."""
        return bearing_deg(self.point(s - 0.5), self.point(s + 0.5))

    def locate(self, xy: np.ndarray, s_min: float = 0.0, s_max: float | None = None) -> _Located:
        """Project a point onto the part of the route with arc length in ``[s_min, s_max]``.

        Restricting the window keeps progress monotone on routes that pass a place twice.

        Args:
            xy: The point, shape ``(2,)`` or ``(3,)`` (z dropped).
            s_min: Smallest arc length to consider.
            s_max: Largest (``None`` = the end).

        Returns:
            The arc length of the nearest route point in the window and the distance to it.
        """
        p = np.asarray(xy, np.float64)[:2]
        if len(self.points) == 1:
            return _Located(0.0, float(np.linalg.norm(p - self.points[0])))
        s_max = self.length if s_max is None else min(s_max, self.length)
        s_min = min(max(s_min, 0.0), s_max)
        a, d = self.points[:-1], np.diff(self.points, axis=0)
        seg = np.maximum(np.diff(self.cumulative), 1e-12)
        # Each segment's parameter range inside the window; segments outside it get inf.
        lo = np.clip((s_min - self.cumulative[:-1]) / seg, 0.0, None)
        hi = np.clip((s_max - self.cumulative[:-1]) / seg, None, 1.0)
        tau = np.clip(np.einsum("ij,ij->i", p - a, d) / seg**2, lo, np.maximum(lo, hi))
        dist = np.linalg.norm(a + tau[:, None] * d - p, axis=1)
        dist[(lo > 1.0) | (hi < 0.0)] = np.inf
        best = int(np.argmin(dist))
        return _Located(float(self.cumulative[best] + tau[best] * seg[best]), float(dist[best]))

    def __len__(self) -> int:
        return len(self.points)


def trajectory_chunk(
    path: RoutePath,
    s: float,
    position: np.ndarray,
    heading_deg: float,
    *,
    speed: float,
    fps: float,
    chunk_length: int,
    look_m: float = 3.0,
) -> np.ndarray:
    """A chunk of poses laid along a route, relative to the current camera's level frame.

    Frame ``i`` (1-based) lies ``speed * i / fps`` metres further along the route than arc length
    ``s`` (clamped at the route's end); the camera's offset from the route fades out over the
    chunk, and each frame looks at the route point ``look_m`` beyond its own.

    Args:
        path: The route.
        s: Arc length of the camera's projection onto the route, metres.
        position: Camera centre, ENU shape ``(2,)`` or ``(3,)``.
        heading_deg: Camera compass heading, degrees.
        speed: Forward speed, m/s.
        fps: Frame rate of the chunk.
        chunk_length: Frames ``L``.
        look_m: How far ahead each frame looks, metres.

    Returns:
        float32 ``(L, 4)``: per frame ``[right m, forward m, yaw deg (left positive), pitch deg]``
        (pitch 0), the environment's ``trajectory`` action format.
    """
    i = np.arange(1, chunk_length + 1, dtype=np.float64)
    arc = s + speed * i / fps
    offset = np.asarray(position, np.float64)[:2] - path.point(s)
    fade = np.clip(1.0 - i / chunk_length, 0.0, 1.0)[:, None]
    xy = np.stack([path.point(a) for a in arc]) + fade * offset
    ahead = np.stack([path.point(a + look_m) for a in arc])
    headings = np.array(
        [
            bearing_deg(p, q) if np.linalg.norm(q - p) > 0.5 else path.heading(a)
            for p, q, a in zip(xy, ahead, arc, strict=True)
        ]
    )
    h = math.radians(heading_deg)
    forward, right = np.array([math.sin(h), math.cos(h)]), np.array([math.cos(h), -math.sin(h)])
    delta = xy - np.asarray(position, np.float64)[:2]
    yaw_left = np.array([-wrap_deg(v - heading_deg) for v in headings])
    out = np.column_stack([delta @ right, delta @ forward, yaw_left, np.zeros(chunk_length)])
    return out.astype(np.float32)


Simulate = Callable[[np.ndarray, float, int], tuple[np.ndarray, np.ndarray, float]]
"""``(xy (2,), heading_deg, action) -> (frame xy (L, 2), end xy (2,), end heading_deg)``."""


def plan_discrete(
    path: RoutePath,
    s: float,
    xy: np.ndarray,
    heading_deg: float,
    simulate: Simulate,
    *,
    horizon: int = 2,
    offset_weight: float = 8.0,
    heading_weight: float = 6.0 / 90.0,
) -> int:
    """The discrete action that starts the best short action sequence along a route.

    Tries every sequence of ``horizon`` moves (straight, left, right) with the environment's own
    motion model and scores where it ends: progress along the route minus ``offset_weight``
    times the distance off the route minus ``heading_weight`` times the heading error against
    the route. With the coarse turns of the discrete mode (90 degrees a chunk) the plain
    threshold rule of :func:`discrete_action` drifts metres off the road; looking two moves
    ahead finds the turn-and-turn-back pairs that bring the camera back onto it.

    Args:
        path: The route.
        s: Arc length of the camera's projection onto the route, metres.
        xy: Camera position, ENU ``(2,)``.
        heading_deg: Camera compass heading, degrees.
        simulate: The motion model of one action (see :data:`Simulate`).
        horizon: Moves per sequence.
        offset_weight: Cost of a metre off the route, in metres of progress.
        heading_weight: Cost of a degree of heading error at the end, in metres of progress.

    Returns:
        0 straight, 2 left or 3 right (the first move of the best sequence).
    """
    moves = (DISCRETE_STRAIGHT, DISCRETE_LEFT, DISCRETE_RIGHT)
    best, best_cost = DISCRETE_STRAIGHT, math.inf
    for sequence in itertools.product(moves, repeat=horizon):
        cost = _sequence_cost(
            path, s, xy, heading_deg, simulate, sequence, offset_weight, heading_weight
        )
        if cost < best_cost - 1e-9:
            best, best_cost = sequence[0], cost
    return best


def _sequence_cost(
    path: RoutePath,
    s: float,
    xy: np.ndarray,
    heading_deg: float,
    simulate: Simulate,
    sequence: tuple[int, ...],
    offset_weight: float,
    heading_weight: float,
) -> float:
    """Negative progress plus weighted offset and heading error where a sequence ends."""
    position, heading, arc = np.asarray(xy, np.float64)[:2], float(heading_deg), float(s)
    for action in sequence:
        _, position, heading = simulate(position, heading, action)
        arc = path.locate(position, arc - 1.0, arc + 30.0).s
    offset = path.locate(position, arc - 1e-6, arc + 1e-6).offset
    heading_error = abs(wrap_deg(path.heading(arc) - heading))
    return -(arc - s) + offset_weight * offset + heading_weight * heading_error
