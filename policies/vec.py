"""Gymnasium vector environments (``gym.make_vec``) as Stable-Baselines3 ``VecEnv`` s.

Stable-Baselines3 2.x steps its own ``VecEnv`` interface; Gymnasium's vector environments
(``gym.make_vec(..., vectorization_mode="async")``: one worker process per environment) follow
another. :class:`GymVecEnv` translates: it asks Gymnasium for the ``SAME_STEP`` autoreset mode
(the step that ends an episode already returns the next episode's first observation, as SB3
expects) and turns Gymnasium's dict of batched infos into SB3's list of per-env infos, with the
finished episode's last observation as ``terminal_observation``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecEnv

from cityenv.envs.vector import make_vec as city_make_vec

__all__ = ["GymVecEnv", "make_vec"]


def make_vec(
    env_id: str,
    num_envs: int,
    *,
    mode: str = "async",
    wrappers: Sequence[Any] = (),
    per_env: Sequence[Mapping[str, Any]] | None = None,
    **kwargs: Any,
) -> gym.vector.VectorEnv:
    """:func:`cityenv.envs.vector.make_vec` with the ``SAME_STEP`` autoreset mode
    :class:`GymVecEnv` needs.

    Args:
        env_id: Gymnasium id.
        num_envs: Number of environments.
        mode: ``"async"`` (one worker process each, started with ``spawn``) or ``"sync"``.
        wrappers: Wrapper callables (``env -> env``) applied to each environment.
        per_env: Keyword arguments per environment (only those that keep the spaces may vary).
        **kwargs: Keyword arguments of every environment.

    Raises:
        VectorEnvMismatchError: If the per-environment arguments would give different spaces.
    """
    return city_make_vec(
        env_id,
        num_envs,
        per_env=per_env,
        mode=mode,
        wrappers=wrappers,
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        **kwargs,
    )


class GymVecEnv(VecEnv):
    """A Gymnasium ``VectorEnv`` (``SAME_STEP`` autoreset) seen as an SB3 ``VecEnv``.

    Args:
        venv: The vector environment, e.g. from :func:`make_vec`.
    """

    def __init__(self, venv: gym.vector.VectorEnv) -> None:
        self.venv = venv
        self._actions: np.ndarray | None = None
        self._seeds: list[int | None] = [None] * venv.num_envs
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)

    def reset(self) -> Any:
        seeds = self._seeds if any(s is not None for s in self._seeds) else None
        obs, info = self.venv.reset(seed=seeds)
        self._seeds = [None] * self.num_envs
        self.reset_infos = _split_info(info, self.num_envs)
        return obs

    def seed(self, seed: int | None = None) -> Sequence[None | int]:
        self._seeds = [None if seed is None else seed + i for i in range(self.num_envs)]
        return self._seeds

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> Any:
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
        dones = np.logical_or(terminated, truncated)
        infos = _split_info(info, self.num_envs)
        final_obs, final_info = info.get("final_obs"), info.get("final_info", {})
        for i in np.flatnonzero(dones):
            infos[i] = _split_info(final_info, self.num_envs)[i]
            infos[i]["terminal_observation"] = _index(final_obs, i)
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return obs, np.asarray(rewards, np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        values = self.venv.get_attr(attr_name)
        return [values[i] for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        raise NotImplementedError("GymVecEnv does not set attributes of the workers' envs.")

    def env_method(self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list:
        values = self.venv.call(method_name, *args, **kwargs)
        return [values[i] for i in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return list(self.venv.render() or [None] * self.num_envs)


def _index(batched: Any, i: int) -> Any:
    """Element ``i`` of a batched observation (a dict of arrays or an array)."""
    if isinstance(batched, dict):
        return {k: _index(v, i) for k, v in batched.items()}
    return batched[i]


def _split_info(info: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Gymnasium's batched info (``key`` arrays with ``_key`` masks) -> ``n`` per-env dicts."""
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, value in info.items():
        if key.startswith("_") or key in ("final_obs", "final_info"):
            continue
        mask = info.get(f"_{key}", np.ones(n, bool))
        for i in np.flatnonzero(mask):
            out[i][key] = _index(value, i)
    return out
