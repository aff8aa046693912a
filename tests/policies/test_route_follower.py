"""The route follower reaches navigation goals in the tiny town, in every action mode."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from policies.route_follower import RouteFollower, plan_route


def run_episode(env: Any, follower: RouteFollower, seed: int, max_steps: int) -> dict:
    obs, info = env.reset(seed=seed)
    follower.reset()
    for _ in range(max_steps):
        action = follower.act(obs, info)
        assert env.action_space.contains(action), action
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    return info


@pytest.mark.parametrize("mode", ["discrete", "velocity", "trajectory"])
def test_reaches_the_goal_in_every_action_mode(make_town_env: Any, mode: str) -> None:
    env = make_town_env(action_mode=mode)
    follower = RouteFollower(env)
    for seed in (0, 1, 2):
        info = run_episode(env, follower, seed, max_steps=60)
        assert info["is_success"], (mode, seed, info["distance_to_goal"])
        assert follower.route[-1] == env.unwrapped.goal_node


def test_plans_through_waypoints(make_town_env: Any) -> None:
    env = make_town_env(action_mode="velocity")
    env.reset(seed=3)
    base = env.unwrapped
    graph = base.road_graph
    goal = int(base.goal_node)
    direct = graph.shortest_path(graph.nearest_node(base.pose.position), goal)
    via = direct[len(direct) // 2]
    route = plan_route(graph, base.pose.position, [via, goal])
    assert route[0] == direct[0] and via in route and route[-1] == goal
    follower = RouteFollower(env, [via, goal])
    path = follower.plan()
    assert np.allclose(path.points[0], base.pose.position[:2])
    assert path.length == pytest.approx(graph.path_length(route), abs=25.0)
    assert follower.remaining_m == pytest.approx(path.length)


def test_replans_for_a_new_goal(make_town_env: Any) -> None:
    env = make_town_env(action_mode="discrete")
    follower = RouteFollower(env)
    env.reset(seed=0)
    follower.act()
    first = follower.route
    env.reset(seed=1)
    follower.act()  # no reset(): the changed goal alone triggers a new plan
    assert follower.route != first and follower.route[-1] == env.unwrapped.goal_node
