"""CityWorldEnv on a tiny procedural town: the Gymnasium contract, modes, tasks, bad input."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

import cityenv  # noqa: F401  (registers the IDs)
from cityenv.envs.env import estimate_reference_height
from cityenv.errors import InvalidActionError, OutOfCoverageError

L = 12


def _edge_start(env) -> tuple[int, int]:
    """A node and a neighbour of it on the road graph."""
    graph = env.road_graph
    node = int(np.argmax([graph.neighbors(i).size for i in range(graph.num_nodes)]))
    return node, int(graph.neighbors(node)[0])


def test_check_env_gymnasium_and_sb3(town_db, tiny):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make("CityWorld-Town-v0", render_mode="rgb_array", **tiny)
    gym_check_env(env.unwrapped, skip_render_check=False)
    sb3_check_env(env.unwrapped, warn=False)
    env.close()


@pytest.mark.parametrize("mode", ["discrete", "velocity", "trajectory"])
def test_every_action_mode_steps_at_street_height(make_env, mode):
    env = make_env(action_mode=mode, observe="chunk", fps=8.0, full_info=True)
    obs, info = env.reset(seed=1)
    assert obs["frames"].shape == (L, 64, 64, 3) and obs["frames"].dtype == np.uint8
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)
    chunk = info["trajectory"]
    assert len(chunk) == L
    np.testing.assert_allclose(np.diff(chunk.timestamps), 1 / 8.0)
    np.testing.assert_allclose(chunk.positions[:, 2], 2.5, atol=1e-6)  # the capture height
    assert info["pose"].allclose(chunk[L - 1])
    assert obs["pose"][2] == pytest.approx(2.5)


def test_observation_pose_geo_and_goal(make_env):
    env = make_env(full_info=True)
    obs, info = env.reset(seed=3)
    pose = info["pose"]
    np.testing.assert_allclose(obs["pose"][:3], pose.position, atol=1e-3)
    lat, lon, _ = env.db.frame.enu_to_geodetic(pose.position)
    np.testing.assert_allclose(obs["geo"], [lat, lon])
    goal = env.road_graph.positions[env.goal_node]
    np.testing.assert_allclose(
        pose.transform_points(obs["goal"].astype(np.float64)), goal, atol=1e-3
    )


def test_navigation_reward_is_the_decrease_in_graph_distance(make_env):
    env = make_env(
        task_options={"off_road_penalty": 0.0, "success_radius_m": 0.1, "step_cost": 0.0}
    )
    obs, info = env.reset(seed=0)
    before = env.road_graph.distance_to_goal(env.pose.position, env.goal_node)
    assert info["distance_to_goal"] == pytest.approx(before)
    for action in (0, 0, 2, 0):
        obs, reward, terminated, _, info = env.step(action)
        after = env.road_graph.distance_to_goal(env.pose.position, env.goal_node)
        assert reward == pytest.approx(before - after)
        assert info["progress_m"] == pytest.approx(before - after)
        before = after


def test_off_road_penalty(make_env):
    env = make_env(task_options={"off_road_m": 0.0, "off_road_penalty": 1.0, "step_cost": 0.0})
    env.reset(seed=0)
    _, reward, _, _, info = env.step(1)  # stop: no progress
    assert info["off_road"] == (info["distance_to_graph"] > 0.0)
    assert reward == pytest.approx(-1.0 if info["off_road"] else 0.0)


def test_success_at_the_goal_terminates_with_a_bonus(make_env):
    env = make_env(task_options={"success_radius_m": 5.0, "success_bonus": 10.0, "step_cost": 0.0})
    node, neighbour = _edge_start(env)
    heading = env.road_graph.heading_deg(node, neighbour)
    env.reset(seed=0, options={"start": node, "goal": neighbour, "heading_deg": heading})
    _, reward, terminated, truncated, info = env.step(0)  # 6 m straight toward the goal
    assert terminated and not truncated and info["is_success"]
    assert reward == pytest.approx(10.0 + info["progress_m"])


def test_free_task_has_no_reward_and_no_goal(make_env):
    env = make_env(task="free")
    obs, _ = env.reset(seed=0)
    assert env.goal_node is None and not obs["goal"].any()
    for _ in range(3):
        _, reward, terminated, _, _ = env.step(0)
        assert reward == 0.0 and not terminated


def test_no_references_still_gives_frames(make_env):
    env = make_env(retrieval={"radius": 1e-3, "coverage_threshold": 2.0})
    obs, info = env.reset(seed=0)
    assert info["references_used"] == 0
    obs, _, _, _, info = env.step(0)
    assert info["references_used"] == 0
    assert obs["frames"].shape == (64, 64, 3)


def test_info_is_light_by_default_and_details_are_on_last_step(make_env):
    env = make_env()
    env.reset(seed=0)
    *_, info = env.step(0)
    assert set(info) == {
        "references_used", "distance_to_goal", "progress_m", "metres_travelled",
        "is_success", "off_road", "distance_to_graph",
    }  # fmt: skip
    record = env.last_step
    assert len(record.trajectory) == L and record.output.frames.shape == (L, 64, 64, 3)
    assert set(record.timings) == {"retrieval", "load", "generate"}
    assert info["references_used"] == len(record.output.references.views)


def test_render_returns_the_last_frame(make_env):
    env = make_env(render_mode="rgb_array", observe="chunk")
    env.reset(seed=0)
    obs, *_ = env.step(0)
    np.testing.assert_array_equal(env.render(), obs["frames"][-1])
    assert make_env().render() is None  # no render_mode


def test_reset_is_deterministic_in_the_seed(make_env):
    a, b = make_env(), make_env()
    obs_a, _ = a.reset(seed=7)
    obs_b, _ = b.reset(seed=7)
    for key in obs_a:
        np.testing.assert_array_equal(obs_a[key], obs_b[key])
    np.testing.assert_array_equal(a.step(0)[0]["frames"], b.step(0)[0]["frames"])


def test_prompt_from_reset_and_set_prompt(make_env):
    env = make_env()
    _, info = env.reset(seed=0, options={"prompt": "golden sunset"})
    assert info["prompt"] == "golden sunset" and env.world_model.prompt == "golden sunset"
    env.set_prompt("heavy rain")
    assert env.prompt == "heavy rain" and env.world_model.prompt == "heavy rain"


def test_start_options(make_env):
    env = make_env(task="free", full_info=True)
    graph = env.road_graph
    _, info = env.reset(seed=0, options={"start": 3, "heading_deg": 90.0})
    assert info["pose"].heading_deg == pytest.approx(90.0)
    np.testing.assert_allclose(info["pose"].position[:2], graph.positions[3, :2])
    xy = graph.positions[5, :2] + [1.0, 1.0]
    _, info = env.reset(seed=0, options={"start": xy.tolist()})
    np.testing.assert_allclose(info["pose"].position, [*xy, 2.5])


def _old_reference_height(db, samples: int = 24) -> float:
    """The formula estimate_reference_height had before it used PinholeCamera.pixel_rays."""
    drops = []
    for view_id in np.linspace(0, len(db) - 1, min(samples, len(db))).astype(int):
        depth, camera = db.load_depth(int(view_id)), db.camera(int(view_id))
        rows = slice(int(camera.height * 0.9), camera.height)
        cols = slice(int(camera.width * 0.4), int(camera.width * 0.6) + 1)
        z = depth[rows, cols]
        v, u = np.mgrid[rows, cols]
        pts = np.stack(
            [(u + 0.5 - camera.cx) / camera.fx * z, (v + 0.5 - camera.cy) / camera.fy * z, z], -1
        )[z > 0]
        if pts.size:
            drops.append(-(pts @ db.pose(int(view_id)).rotation_matrix.T)[:, 2])
    return float(np.median(np.concatenate(drops)))


def test_reference_height_unchanged_by_pixel_rays(town_db):
    from cityenv.citydb.reader import CityDB

    db = CityDB.open(town_db)
    for samples in (1, 5, 24):
        assert estimate_reference_height(db, samples) == pytest.approx(
            _old_reference_height(db, samples), rel=1e-12
        )


def test_camera_height(make_env, town_db):
    from cityenv.citydb.reader import CityDB

    assert estimate_reference_height(CityDB.open(town_db)) == pytest.approx(2.5, abs=0.1)
    env = make_env(camera_height=1.6, full_info=True)
    obs, _ = env.reset(seed=0)
    assert obs["pose"][2] == pytest.approx(1.6, abs=0.1)
    _, _, _, _, info = env.step(0)
    np.testing.assert_allclose(info["trajectory"].positions[:, 2], obs["pose"][2], atol=1e-6)


# --- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "action", "match"),
    [
        ("discrete", 9, r"Discrete\(4\)"),
        ("velocity", np.array([np.nan, 0.0], np.float32), "NaN"),
        ("velocity", np.array([1e3, 0.0], np.float32), "outside the bounds"),
    ],
)
def test_bad_action_is_a_clear_error(make_env, mode, action, match):
    env = make_env(action_mode=mode)
    env.reset(seed=0)
    with pytest.raises(InvalidActionError, match=match):
        env.step(action)


def test_start_outside_coverage_names_the_bounding_box(make_env):
    env = make_env()
    with pytest.raises(OutOfCoverageError, match=r"covered bounding box x in \[.*\], y in \["):
        env.reset(options={"start": [5000.0, 5000.0]})


def test_step_before_reset(make_env):
    with pytest.raises(RuntimeError, match="reset"):
        make_env().step(0)


def test_a_goal_unreachable_from_the_camera_gives_finite_reward_and_counts_off_road():
    from cityenv.citydb.roadgraph import RoadGraph
    from cityenv.envs.tasks import NavigationTask

    # two straight streets 500 m apart: no link joins them, so the goal is unreachable from one
    street = np.stack([np.arange(0.0, 50.0, 10.0), np.zeros(5), np.full(5, 2.5)], axis=1)
    graph = RoadGraph.from_panoramas(np.concatenate([street, street + [0.0, 500.0, 0.0]]))
    assert len(set(graph.component().tolist())) == 2
    task = NavigationTask(off_road_penalty=1.0, step_cost=0.0)
    task.reset(graph, street[0], goal_node=4)  # goal on the same street, 40 m away
    assert task.distance == pytest.approx(40.0)
    out = task.step(street[[1, 2]] + [0.0, 500.0, 0.0])  # the chunk ends on the other street
    assert np.isinf(out.info["distance_to_goal"])
    assert out.info["progress_m"] == 0.0 and out.info["off_road"]
    assert out.reward == -1.0
    out = task.step(street[[2, 3]])  # back on the goal's street: progress counts again from here
    assert out.reward == 0.0 and out.info["distance_to_goal"] == pytest.approx(10.0)
