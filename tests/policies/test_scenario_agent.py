"""The route follower as the scenario driver: found by name through the ``cityenv.agents`` entry
point, so the scenario runner of cityenv never imports policies."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cityenv.agents import AGENTS, Route, make_agent
from cityenv.errors import UnknownNameError
from cityenv.scenario import run_scenario, scenario_from_dict, start_pose
from policies.scenario import ScenarioFollower, route_follower_agent

SCENARIO = {"name": "a", "start": 0, "prompts": "fog", "action_mode": "velocity", "max_steps": 3}


def _scenario(env: Any, **changes: Any) -> tuple[Any, int]:
    """The scenario from node 0 to a node 20-60 m away on its streets, and that node."""
    goal = env.unwrapped.road_graph.sample_goal(np.random.default_rng(0), 0, 20.0, 60.0)
    return scenario_from_dict({**SCENARIO, "waypoints": [int(goal)], **changes}), int(goal)


def test_route_follower_is_registered_through_the_entry_point() -> None:
    assert "route_follower" in AGENTS.names()
    assert AGENTS.get("route_follower") is route_follower_agent
    with pytest.raises(UnknownNameError, match=r"got 'route_folower'\. Did you mean"):
        AGENTS.get("route_folower")


def test_run_scenario_drives_with_the_named_agent(make_town_env: Any) -> None:
    env = make_town_env(action_mode="velocity")
    scenario, goal = _scenario(env)
    agent = make_agent("route_follower", env, scenario)
    assert isinstance(agent, ScenarioFollower) and agent.waypoints == [goal]
    result = run_scenario(env, scenario, seed=0)
    assert 1 <= result.steps <= 3 and result.metres_travelled > 0
    assert result.route[-1] == goal and result.route_length_m > 0
    assert result.prompts == [(0, "fog")]


def test_start_heading_faces_along_the_route(make_town_env: Any) -> None:
    env = make_town_env(action_mode="velocity")
    scenario, goal = _scenario(env)
    agent = route_follower_agent(env, scenario)
    pose = start_pose(scenario, env, agent)
    assert pose is not None
    assert pose.heading_deg == pytest.approx(agent.start_heading_deg(pose.position), abs=1e-6)
    assert start_pose(scenario, env, None).heading_deg == pytest.approx(0.0, abs=1e-6)
    env.reset(seed=0, options={"start": pose, "goal": goal})
    route = agent.reset()
    assert isinstance(route, Route) and route.nodes[-1] == goal


def test_any_object_with_act_can_drive(make_town_env: Any) -> None:
    env = make_town_env(action_mode="velocity")

    class Straight:
        def act(self, obs: Any, info: dict[str, Any]) -> np.ndarray:
            return np.array([2.0, 0.0], np.float32)

    result = run_scenario(env, _scenario(env)[0], seed=0, agent=Straight())
    assert result.steps >= 1 and result.route == [] and result.route_length_m == 0.0


def test_a_registered_agent_is_found_by_name(make_town_env: Any) -> None:
    env = make_town_env(action_mode="discrete")
    AGENTS.register("stopper", lambda env, scenario: type("S", (), {"act": lambda s, o, i: 1})())
    try:
        scenario, _ = _scenario(env, action_mode="discrete", max_steps=2)
        result = run_scenario(env, scenario, seed=0, agent="stopper")
        assert result.steps == 2 and result.metres_travelled == pytest.approx(0.0, abs=1e-6)
    finally:
        AGENTS.unregister("stopper")
