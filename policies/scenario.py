"""Scenario scripts on the policies side: the route follower as the scenario driver.

The scenario file format and its runner live in :mod:`cityenv.scenario` (the rollout app reads
them); they are re-exported here so ``from policies.scenario import load_scenario`` keeps
working. What ``policies`` adds is the driver: :func:`route_follower_agent`, registered as the
``route_follower`` agent of :data:`cityenv.agents.AGENTS` through the entry point::

    [project.entry-points."cityenv.agents"]
    route_follower = "policies.scenario:route_follower_agent"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cityenv.agents import Agent, Route
from cityenv.scenario import (
    ACTION_MODES,
    Location,
    PromptChange,
    Scenario,
    ScenarioError,
    ScenarioResult,
    load_scenario,
    resolve_waypoints,
    scenario_from_dict,
    start_pose,
)
from cityenv.scenario import run_scenario as _run_scenario
from policies.control import RoutePath
from policies.route_follower import RouteFollower, plan_route

__all__ = [
    "ACTION_MODES",
    "Location",
    "PromptChange",
    "Scenario",
    "ScenarioError",
    "ScenarioFollower",
    "ScenarioResult",
    "load_scenario",
    "resolve_waypoints",
    "route_follower_agent",
    "run_scenario",
    "scenario_from_dict",
    "start_pose",
]


class ScenarioFollower:
    """A :class:`~policies.route_follower.RouteFollower` through a scenario's waypoints.

    Implements the agent protocol of :mod:`cityenv.agents` (``start_heading_deg``, ``reset``,
    ``act``).

    Args:
        env: The environment (possibly wrapped).
        scenario: The scenario; its waypoints become road-graph nodes of ``env``. Without
            waypoints the follower drives to the goal the env's task samples.
        **options: Keyword arguments of :class:`RouteFollower` (``lookahead_m``, ``speed``, ...).

    Attributes:
        waypoints: The scenario's waypoints as node ids.
        follower: The route follower doing the driving.
    """

    def __init__(self, env: Any, scenario: Scenario, **options: Any) -> None:
        self.env = env.unwrapped
        self.waypoints = resolve_waypoints(scenario, env)
        self.follower = RouteFollower(env, self.waypoints or None, **options)

    def start_heading_deg(self, position: np.ndarray) -> float | None:
        """Along the route from ``position`` (ENU ``(3,)``) toward the first waypoint.

        Returns:
            The route's compass heading 3 m past the point nearest ``position``; ``None``
            without waypoints.
        """
        if not self.waypoints:
            return None
        graph = self.env.road_graph
        route = RoutePath(graph.positions[plan_route(graph, position, self.waypoints[:1])])
        return route.heading(route.locate(position).s + 3.0)

    def reset(self, obs: Any = None, info: dict[str, Any] | None = None) -> Route:
        """Plan the route from the camera's position after ``env.reset``."""
        self.follower.reset()
        path = self.follower.plan()
        return Route(tuple(self.follower.route or ()), float(path.length))

    def act(self, obs: Any = None, info: dict[str, Any] | None = None) -> Any:
        """The route follower's action (see :meth:`RouteFollower.act`)."""
        return self.follower.act(obs, info)


def route_follower_agent(env: Any, scenario: Scenario) -> ScenarioFollower:
    """The ``route_follower`` agent factory of :data:`cityenv.agents.AGENTS`."""
    return ScenarioFollower(env, scenario)


def run_scenario(
    env: Any,
    scenario: Scenario,
    *,
    seed: int | None = None,
    policy: Agent | None = None,
    on_frames: Callable[[np.ndarray], None] | None = None,
    progress: bool = False,
) -> ScenarioResult:
    """:func:`cityenv.scenario.run_scenario` with the route follower unless ``policy`` is given.

    Args:
        policy: Anything with ``act(obs, info)``; ``None`` = a :class:`ScenarioFollower`.
    """
    return _run_scenario(
        env,
        scenario,
        seed=seed,
        agent=policy if policy is not None else ScenarioFollower(env, scenario),
        on_frames=on_frames,
        progress=progress,
    )
