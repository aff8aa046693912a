"""A route follower: shortest path on the road graph, turned into actions in every action mode.

The follower plans a route through the environment's :class:`~cityenv.citydb.RoadGraph` (from
the node nearest the camera to the goal node, or through given waypoint nodes), then each step
pursues a point ``lookahead_m`` ahead on it (pure pursuit):

- ``discrete``: the first move of the best two-move sequence (straight / left / right, simulated
  with the env's own action adapter) by progress along the route, distance off it and heading
  error (:func:`~policies.control.plan_discrete`); without an adapter, or at the goal, the
  threshold rule: turn left / right when the heading error exceeds half a turn, else straight,
  stop at the goal.
- ``velocity``: a yaw rate that removes the heading error over the chunk; forward speed scaled
  down with the error and the distance left.
- ``trajectory``: the chunk's poses laid along the route itself, as the env's relative format.

The control law lives in :mod:`policies.control` as pure functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cityenv.geometry.pose import Pose
from policies.control import (
    RoutePath,
    bearing_deg,
    discrete_action,
    plan_discrete,
    trajectory_chunk,
    velocity_command,
    wrap_deg,
)

__all__ = ["RouteFollower", "plan_route"]


def plan_route(graph: Any, start: np.ndarray, waypoints: Sequence[int]) -> list[int]:
    """Nodes of the shortest route from the node nearest ``start`` through ``waypoints`` in order.

    Args:
        graph: The :class:`~cityenv.citydb.RoadGraph`.
        start: ENU position, shape ``(2,)`` or ``(3,)``.
        waypoints: Node ids to visit, the last one the goal.

    Returns:
        Node ids, consecutive duplicates removed.

    Raises:
        ValueError: If a waypoint cannot be reached (disconnected road graph).
    """
    nodes = [graph.nearest_node(np.asarray(start, np.float64))]
    for target in waypoints:
        nodes += graph.shortest_path(nodes[-1], int(target))[1:]
    return nodes


def _simulator(adapter: Any) -> Any:
    """The motion model of one discrete action from the env's adapter (ground plane only)."""

    def simulate(xy: np.ndarray, heading_deg: float, action: int) -> tuple:
        pose = Pose.from_heading([xy[0], xy[1], 0.0], heading_deg)
        chunk = adapter.chunk(pose, 0.0, action, lambda p: np.zeros(len(p)))
        end = chunk[len(chunk) - 1]
        return chunk.positions[:, :2], end.position[:2], end.heading_deg

    return simulate


class RouteFollower:
    """Follows a road-graph route to the environment's goal (or through given waypoints).

    Args:
        env: The environment (wrappers are looked through: ``env.unwrapped`` is used). It must
            have ``road_graph``, ``pose``, ``goal_node``, ``action_mode``, ``chunk_length`` and
            ``fps``.
        waypoints: Node ids to visit in order; ``None`` = straight to ``env.goal_node``.
        lookahead_m: Distance ahead on the route to steer toward, metres.
        stop_radius_m: Stop when the goal is nearer than this along the route (``None`` = half
            the env's success radius).
        speed: Cruising speed in the ``velocity`` and ``trajectory`` modes, m/s (``None`` = half
            the mode's largest speed).
        replan_m: Re-plan when the camera is farther than this from the route, metres.

    Attributes:
        route: The planned node ids (``None`` before the first :meth:`act`).
        path: The planned polyline (the camera's start, then the route's nodes).
    """

    def __init__(
        self,
        env: Any,
        waypoints: Sequence[int] | None = None,
        *,
        lookahead_m: float = 6.0,
        stop_radius_m: float | None = None,
        speed: float | None = None,
        replan_m: float = 15.0,
    ) -> None:
        self.env = env.unwrapped
        self.waypoints = None if waypoints is None else [int(w) for w in waypoints]
        self.lookahead_m = float(lookahead_m)
        self.stop_radius_m = stop_radius_m
        self.speed = speed
        self.replan_m = float(replan_m)
        self.route: list[int] | None = None
        self.path: RoutePath | None = None
        self._s = 0.0
        self._goal: int | None = None

    # --- planning -----------------------------------------------------------------------------
    def reset(self, waypoints: Sequence[int] | None = None) -> None:
        """Forget the plan (call after ``env.reset``); optionally set new waypoints."""
        if waypoints is not None:
            self.waypoints = [int(w) for w in waypoints]
        self.route, self.path, self._s, self._goal = None, None, 0.0, None

    def plan(self) -> RoutePath:
        """Plan from the camera's position; returns (and keeps) the polyline to follow."""
        graph, position = self.env.road_graph, self.env.pose.position
        targets = self.waypoints if self.waypoints else [int(self.env.goal_node)]
        self.route = plan_route(graph, position, targets)
        nodes_path = RoutePath(graph.positions[self.route])
        # Join the route where the camera projects onto it, so it never drives back to a node
        # it has already passed.
        s0 = nodes_path.locate(position, 0.0, self.lookahead_m * 3).s
        ahead = [nodes_path.point(s0)] + [
            p for p, s in zip(nodes_path.points, nodes_path.cumulative, strict=True) if s > s0
        ]
        self.path = RoutePath(np.vstack([position[None, :2], np.asarray(ahead)]))
        self._s, self._goal = 0.0, targets[-1]
        return self.path

    def _needs_plan(self) -> bool:
        if self.path is None:
            return True
        if self.waypoints is None and int(self.env.goal_node) != self._goal:
            return True  # a new episode with a new goal
        off = self.path.locate(self.env.pose.position, self._s - 1.0, self._s + 30.0).offset
        return off > self.replan_m

    # --- acting -------------------------------------------------------------------------------
    @property
    def remaining_m(self) -> float:
        """Distance left along the planned route, metres (``inf`` before planning)."""
        return float("inf") if self.path is None else self.path.length - self._s

    @property
    def done(self) -> bool:
        """Whether the camera is within the stop radius of the route's end."""
        return self.remaining_m <= self._stop_radius()

    def act(self, obs: Any = None, info: dict[str, Any] | None = None) -> Any:
        """The action that follows the route from the env's current pose.

        Args:
            obs: The observation (unused: the follower reads the env's pose and road graph).
            info: The last step's info (unused).

        Returns:
            An element of the env's action space for its ``action_mode``.
        """
        if self._needs_plan():
            self.plan()
        pose: Pose = self.env.pose
        self._s = self.path.locate(pose.position, self._s - 1.0, self._s + 30.0).s
        mode = self.env.action_mode
        if mode == "discrete":
            return self._discrete(pose)
        if mode == "velocity":
            return self._velocity(pose)
        if mode == "trajectory":
            return self._trajectory(pose)
        raise ValueError(
            f"action_mode must be 'discrete', 'velocity' or 'trajectory', got {mode!r}."
        )

    def heading_error_deg(self, pose: Pose) -> float:
        """Bearing of the lookahead point minus the camera's heading, degrees (+ = right)."""
        target = self.path.point(self._s + self.lookahead_m)
        return wrap_deg(bearing_deg(pose.position, target) - pose.heading_deg)

    def _stop_radius(self) -> float:
        if self.stop_radius_m is not None:
            return float(self.stop_radius_m)
        return 0.5 * float(getattr(self.env, "success_radius_m", 4.0))

    @property
    def _adapter(self) -> Any:
        """The env's action adapter (:mod:`cityenv.envs.actions`), if it exposes one."""
        return getattr(self.env, "action_adapter", None)

    def _cruise(self, max_speed: float) -> float:
        return min(max_speed, self.speed) if self.speed is not None else 0.5 * max_speed

    def _discrete(self, pose: Pose) -> int:
        adapter = self._adapter
        if self.remaining_m <= self._stop_radius() or adapter is None:
            # Threshold rule: turn once the error exceeds half a turn action.
            return discrete_action(
                self.heading_error_deg(pose),
                self.remaining_m,
                turn_threshold_deg=0.5 * float(getattr(adapter, "turn_deg", 90.0)),
                stop_radius_m=self._stop_radius(),
            )
        return plan_discrete(
            self.path, self._s, pose.position[:2], pose.heading_deg, _simulator(adapter)
        )

    def _velocity(self, pose: Pose) -> np.ndarray:
        space = self.env.action_space
        speed, yaw_left = velocity_command(
            self.heading_error_deg(pose),
            self.remaining_m,
            duration_s=float(self.env.chunk_length) / float(self.env.fps),
            max_speed=self._cruise(float(space.high[0])),
            max_yaw_rate_deg=float(space.high[1]),
            stop_radius_m=self._stop_radius(),
        )
        action = np.zeros(space.shape, np.float32)
        action[0], action[1] = speed, yaw_left
        return action

    def _trajectory(self, pose: Pose) -> np.ndarray:
        space = self.env.action_space
        fps, length = float(self.env.fps), int(self.env.chunk_length)
        max_speed = float(space.high[-1, 0]) * fps / length  # frame L may lie max_speed * L / fps
        if self.remaining_m <= self._stop_radius():
            return np.zeros(space.shape, np.float32)
        chunk = trajectory_chunk(
            self.path,
            self._s,
            pose.position,
            pose.heading_deg,
            speed=self._cruise(max_speed),
            fps=fps,
            chunk_length=length,
        )
        return np.clip(chunk, space.low, space.high)
