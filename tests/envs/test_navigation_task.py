"""The navigation task an agent can learn: a joined road graph, what the agent observes, the
reward's step cost, held-out goals, and typed errors for goals off the road graph."""

from __future__ import annotations

import numpy as np
import pytest

from cityenv.citydb.reader import CityDB
from cityenv.citydb.roadgraph import RoadGraph
from cityenv.envs.tasks import NavigationTask, heldout_goal_mask
from cityenv.errors import InvalidOptionError, OutOfCoverageError, UnknownNameError


def test_the_town_road_graph_is_one_component(town_db):
    with CityDB.open(town_db) as db:
        graph = RoadGraph.from_citydb(db)  # the env's default link radius (15 m)
        alone = RoadGraph.from_citydb(db, junction_radius_m=0.0)
    assert np.unique(graph.component()).size == 1
    # without the junction edges the streets are islands: the edges are what joins them
    assert np.unique(alone.component()).size > 1


def test_junction_edges_join_the_arms_of_a_junction_but_not_parallel_streets():
    # arm A east along y = 0 ending at x = 40; arm B north from (57, 8): 18 m apart at the
    # junction; street C parallel to A at y = 90 (a block away; its ends are 42 m from B's)
    a = [[10.0 * i, 0.0, 2.5] for i in range(5)]
    b = [[57.0, 8.0 + 10.0 * j, 2.5] for j in range(5)]
    c = [[10.0 * i, 90.0, 2.5] for i in range(5)]
    positions = np.array(a + b + c)
    traversal = np.repeat([0, 1, 2], 5)
    graph = RoadGraph.from_panoramas(positions, traversal, link_radius_m=12.0, max_step_m=12.0)
    labels = graph.component()
    assert labels[0] == labels[5] != labels[10]
    assert {4, 5} <= {int(n) for n in graph.edges[(graph.edges == 4).any(1)].ravel()}
    # the way from arm A's start to arm B's end crosses the junction on a short edge
    assert 40 + 40 < graph.distances_from(0)[9] <= 40 + np.hypot(17, 8) + 40
    assert graph.lengths.max() <= 25.0


def test_observation_carries_goal_route_speed_and_last_action(make_env):
    env = make_env(chunk_length=4)
    obs, info = env.reset(seed=3)
    for key in ("goal_direction", "goal_distance", "route_direction", "speed", "last_action"):
        assert obs[key] in env.observation_space[key], key
    assert np.linalg.norm(obs["goal_direction"]) == pytest.approx(1.0, abs=1e-5)
    assert obs["goal_distance"][0] == pytest.approx(info["distance_to_goal"], rel=1e-5)
    assert obs["speed"][0] == 0.0 and not obs["last_action"].any()
    obs, *_ = env.step(0)  # straight: 0.4 s at 5 m/s
    assert obs["speed"][0] == pytest.approx(5.0, rel=1e-3)
    assert obs["last_action"].tolist() == [1.0, 0.0, 0.0, 0.0]
    obs, *_ = env.step(1)  # stop
    assert obs["speed"][0] == 0.0 and obs["last_action"].tolist() == [0.0, 1.0, 0.0, 0.0]


def test_route_direction_points_along_the_shortest_way(make_env):
    env = make_env(chunk_length=4)
    env.reset(seed=5)
    graph, goal = env.road_graph, env.goal_node
    target = graph.route_point(env.pose.position, goal, env.route_lookahead_m)
    # the lookahead point is nearer the goal along the streets than the camera is
    assert graph.distance_to_goal(target, goal) < env.task.distance
    path = graph.shortest_path(graph.nearest_node(env.pose.position), goal)
    assert graph.nearest_node(target) in path


def test_a_stopped_step_costs_the_step_cost():
    task = NavigationTask(step_cost=0.2, off_road_penalty=1.0)
    graph = RoadGraph.from_panoramas(np.array([[10.0 * i, 0.0, 2.5] for i in range(10)]))
    task.reset(graph, graph.positions[0], 9)
    stopped = task.step(np.repeat(graph.positions[:1], 4, axis=0))
    assert stopped.reward == pytest.approx(-0.2)
    moved = task.step(np.linspace(graph.positions[0], graph.positions[1], 4))
    assert moved.reward == pytest.approx(10.0 - 0.2)  # 10 m of progress beats stopping


def test_heldout_goals_are_never_training_goals(make_env):
    mask = heldout_goal_mask(100)
    assert mask.sum() == 20 and np.array_equal(mask, heldout_goal_mask(100))
    train = make_env(task_options={"goals": "train", "min_goal_m": 20.0})
    heldout = make_env(task_options={"goals": "heldout", "min_goal_m": 20.0})
    held = heldout_goal_mask(train.road_graph.num_nodes)
    for seed in range(6):
        assert not held[train.reset(seed=seed)[1]["goal_node"]]
        assert held[heldout.reset(seed=seed)[1]["goal_node"]]
    with pytest.raises(UnknownNameError, match="goals"):
        NavigationTask(goals="test")


def test_a_goal_off_the_road_graph_raises(make_env):
    env = make_env()
    with pytest.raises(OutOfCoverageError, match=r"goal must lie within 20 m .* got \[5000"):
        env.reset(seed=0, options={"goal": [5000.0, 5000.0]})
    n = env.road_graph.num_nodes
    with pytest.raises(InvalidOptionError, match=rf"node id in \[0, {n}\), got {n + 5}"):
        env.reset(seed=0, options={"goal": n + 5})
