"""The navigation agent's view of a CityWorld environment, and its evaluation.

Shared by ``python -m policies.train_ppo`` and ``python -m policies.transfer``:

- :class:`AgentObservation`: the observation keys an agent is trained on (the newest frame, goal
  and route directions, distance, speed, last action), with distance and speed brought to
  about unit scale for the network;
- :func:`make_agent_env`: one environment as the agent sees it (the same wrappers for training
  and evaluation, so a saved agent meets the observation space it was trained on);
- :func:`evaluate`: success rate and returns of a policy over seeded episodes, and
  :func:`baselines`: the random explorer's and the route follower's on the same episodes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from policies.random_explorer import RandomExplorer
from policies.route_follower import RouteFollower

__all__ = [
    "AGENT_KEYS",
    "AgentObservation",
    "Policy",
    "baselines",
    "evaluate",
    "make_agent_env",
]

AGENT_KEYS = (
    "frames",
    "goal_direction",
    "goal_distance",
    "route_direction",
    "speed",
    "last_action",
)
"""What the agent sees of the environment's observation."""

_SCALES = {"goal_distance": 0.01, "speed": 0.1}  # metres -> hundreds, m/s -> tens

Policy = Callable[[Any, dict[str, Any]], Any]
"""``(observation, info) -> action``."""


class AgentObservation(gym.ObservationWrapper):
    """Keeps :data:`AGENT_KEYS` and scales distance (1/100 m) and speed (1/10 m/s).

    Args:
        env: A CityWorld environment (or a wrapper of one).
        keys: Observation keys to keep.
    """

    def __init__(self, env: gym.Env, keys: Sequence[str] = AGENT_KEYS) -> None:
        super().__init__(env)
        source = env.observation_space
        assert isinstance(source, spaces.Dict)
        self.keys = tuple(keys)
        self.observation_space = spaces.Dict({k: _scaled(k, source[k]) for k in self.keys})

    def observation(self, observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: observation[k] for k in self.keys}
        for key, scale in _SCALES.items():
            if key in out:
                out[key] = (out[key] * scale).astype(np.float32)
        return out


def _scaled(key: str, space: spaces.Space) -> spaces.Space:
    if key not in _SCALES or not isinstance(space, spaces.Box):
        return space
    s = _SCALES[key]
    return spaces.Box(space.low * s, space.high * s, space.shape, np.float32)


def finite_reward(reward: float, bound: float = 50.0) -> float:
    """``reward`` clipped to ``[-bound, bound]``, NaN as 0: one non-finite reward turns PPO's
    weights into NaN."""
    return float(np.clip(np.nan_to_num(float(reward), nan=0.0), -bound, bound))


def make_agent_env(
    env_id: str,
    *,
    max_episode_steps: int,
    reward_scale: float = 1.0,
    keys: Sequence[str] = AGENT_KEYS,
    **kwargs: Any,
) -> gym.Env:
    """One environment as the agent sees it: :class:`AgentObservation`, finite scaled rewards.

    Args:
        env_id: Gymnasium id (``CityWorld-Town-v0``, ``CityWorld-TownTrue-v0``, ...).
        max_episode_steps: Steps before an episode is truncated.
        reward_scale: Factor on the rewards PPO sees (1 for evaluations).
        keys: Observation keys the agent sees.
        **kwargs: Keyword arguments of the environment.
    """
    import cityenv  # noqa: F401  (registers the CityWorld ids)

    env = gym.make(env_id, max_episode_steps=max_episode_steps, **kwargs)
    return agent_wrappers(env, reward_scale, keys)


def agent_wrappers(
    env: gym.Env, reward_scale: float = 1.0, keys: Sequence[str] = AGENT_KEYS
) -> gym.Env:
    """The wrappers of :func:`make_agent_env` around an already made environment."""
    env = AgentObservation(env, keys)
    return gym.wrappers.TransformReward(env, lambda r: reward_scale * finite_reward(r))


def evaluate(
    env: gym.Env,
    policy: Policy,
    episodes: int,
    seed: int,
    on_reset: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Success rate and mean return (unscaled) of a policy over seeded episodes.

    Args:
        env: An environment from :func:`make_agent_env` with ``reward_scale=1`` (the returns
            are the sums of its rewards).
        policy: ``(obs, info) -> action``.
        episodes: Number of episodes; episode ``i`` resets with seed ``seed + i`` (so every
            policy meets the same starts and goals).
        seed: Seed of the first episode.
        on_reset: Called after each reset (a route follower forgets its plan).

    Returns:
        ``{"success_rate", "mean_return", "mean_steps", "episodes"}``.
    """
    successes, returns, lengths = [], [], []
    for i in range(episodes):
        obs, info = env.reset(seed=seed + i)
        if on_reset is not None:
            on_reset()
        done, total, steps = False, 0.0, 0
        while not done:
            obs, reward, terminated, truncated, info = env.step(policy(obs, info))
            total += float(reward)
            steps, done = steps + 1, terminated or truncated
        successes.append(bool(info.get("is_success", False)))
        returns.append(total)
        lengths.append(steps)
    return {
        "success_rate": float(np.mean(successes)),
        "mean_return": float(np.mean(returns)),
        "mean_steps": float(np.mean(lengths)),
        "episodes": int(episodes),
    }


def sb3_policy(model: Any, deterministic: bool = True) -> Policy:
    """A Stable-Baselines3 model as a :data:`Policy`."""

    def act(obs: Any, info: Mapping[str, Any]) -> Any:
        action, _ = model.predict(obs, deterministic=deterministic)
        return int(np.asarray(action).reshape(()))

    return act


def baselines(env: gym.Env, episodes: int, seed: int) -> dict[str, dict[str, float]]:
    """The random explorer's and the route follower's figures on :func:`evaluate`'s episodes."""
    explorer = RandomExplorer(env.action_space, seed=seed)
    follower = RouteFollower(env)
    return {
        "random": evaluate(env, lambda o, i: explorer.act(o), episodes, seed),
        "route_follower": evaluate(env, follower.act, episodes, seed, on_reset=follower.reset),
    }
