"""The navigation task can be learned: over a fixed set of episodes the route follower's return
beats always-stop's and the random explorer's; the agent's view; saved agents of other spaces;
Gymnasium vector environments as SB3 ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cityenv.errors import AgentSpaceMismatchError
from policies.agent_file import load_agent
from policies.navigation import AGENT_KEYS, baselines, evaluate, make_agent_env

EPISODES = {"episodes": 4, "seed": 100}
"""The fixed set of episodes (seeds 100-103)."""


def _agent_env(tiny_town: dict[str, Any], size: int = 36, **extra: Any) -> Any:
    return make_agent_env(
        "CityWorld-Town-v0",
        max_episode_steps=40,
        town=tiny_town,
        width=size,
        height=size,
        chunk_length=4,
        task_options={"min_goal_m": 20.0, "max_goal_m": 60.0},
        **extra,
    )


def test_the_route_follower_beats_standing_still_and_random(tiny_town: dict[str, Any]) -> None:
    env = _agent_env(tiny_town)
    figures = baselines(env, **EPISODES)
    stop = evaluate(env, lambda obs, info: 1, **EPISODES)
    env.close()
    follower, random = figures["route_follower"], figures["random"]
    assert follower["success_rate"] > random["success_rate"]
    assert follower["mean_return"] > stop["mean_return"]
    assert follower["mean_return"] > random["mean_return"]
    assert stop["mean_return"] == pytest.approx(-0.2 * 40)  # every stopped step costs 0.2


def test_the_agent_sees_its_keys_at_unit_scale(tiny_town: dict[str, Any]) -> None:
    env = _agent_env(tiny_town)
    obs, info = env.reset(seed=1)
    assert tuple(obs) == AGENT_KEYS and obs in env.observation_space
    assert obs["goal_distance"][0] == pytest.approx(info["distance_to_goal"] / 100, rel=1e-5)
    env.close()


def test_an_agent_file_of_another_observation_space_is_a_typed_error(
    tiny_town: dict[str, Any], tmp_path: Path
) -> None:
    from stable_baselines3 import PPO

    env = _agent_env(tiny_town, size=36)
    path = tmp_path / "agent.zip"
    PPO("MultiInputPolicy", env, n_steps=8, batch_size=8, device="cpu").save(path)
    assert load_agent(path, env).observation_space["frames"].shape == (3, 36, 36)
    other = _agent_env(tiny_town, size=40)
    with pytest.raises(
        AgentSpaceMismatchError,
        match=r"frames: expected uint8 \(3, 36, 36\), got uint8 \(3, 40, 40\)",
    ):
        load_agent(path, other)
    with pytest.raises(FileNotFoundError, match="agent file"):
        load_agent(tmp_path / "missing.zip", env)
    env.close()
    other.close()


def test_gym_vector_envs_step_as_sb3_vec_envs(tiny_town: dict[str, Any]) -> None:
    from functools import partial

    from policies.navigation import agent_wrappers
    from policies.vec import GymVecEnv, make_vec

    venv = make_vec(
        "CityWorld-Town-v0",
        2,
        mode="sync",
        wrappers=[partial(agent_wrappers, reward_scale=0.1)],
        max_episode_steps=2,
        town=tiny_town,
        width=36,
        height=36,
        chunk_length=2,
    )
    env = GymVecEnv(venv)
    env.seed(3)
    obs = env.reset()
    assert obs["frames"].shape == (2, 36, 36, 3)
    for _ in range(2):
        env.step_async(np.array([0, 1]))
        obs, rewards, dones, infos = env.step_wait()
    assert dones.all() and rewards.dtype == np.float32
    for info in infos:  # truncated by the time limit: SB3 bootstraps from the last observation
        assert info["TimeLimit.truncated"] and info["terminal_observation"]["frames"].shape == (
            36,
            36,
            3,
        )
    env.close()
