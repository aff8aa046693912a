"""Saved agents: load one for an environment, checking that it was trained on the same spaces.

Stable-Baselines3's ``PPO.load(path, env=env)`` fails on a space mismatch with a bare
``ValueError`` naming neither space; :func:`load_agent` compares the saved observation and action
spaces with the environment's first and says which key differs and how.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
from gymnasium import spaces

from cityenv.errors import AgentSpaceMismatchError

__all__ = ["check_agent_spaces", "load_agent", "space_differences"]


def space_differences(expected: spaces.Space, got: spaces.Space, name: str = "") -> list[str]:
    """What differs between two spaces, one line per key (empty when they are equal).

    Args:
        expected: The agent's space.
        got: The environment's space.
        name: Prefix of the lines (the key path).
    """
    where = name or "observation"
    if isinstance(expected, spaces.Dict) and isinstance(got, spaces.Dict):
        lines = []
        missing = [k for k in expected.spaces if k not in got.spaces]
        extra = [k for k in got.spaces if k not in expected.spaces]
        if missing or extra:
            lines.append(
                f"{where} keys: expected {sorted(expected.spaces)}, got {sorted(got.spaces)} "
                f"(missing {missing}, unexpected {extra})"
            )
        for key in expected.spaces:
            if key in got.spaces:
                lines += space_differences(expected[key], got[key], f"{name}{key}")
        return lines
    if type(expected) is not type(got):
        return [f"{where}: expected {expected}, got {got}"]
    if isinstance(expected, spaces.Box):
        if expected.shape != got.shape or expected.dtype != got.dtype:
            return [
                f"{where}: expected {expected.dtype} {expected.shape}, got {got.dtype} {got.shape}"
            ]
        return []
    return [] if expected == got else [f"{where}: expected {expected}, got {got}"]


def check_agent_spaces(agent: Any, env: gym.Env | Any, path: str | Path = "the agent") -> None:
    """Raise :class:`AgentSpaceMismatchError` if ``agent`` was trained on other spaces.

    Args:
        agent: Anything with ``observation_space`` and ``action_space`` (an SB3 model).
        env: The environment (or vector environment) it is meant for.
        path: The agent's file, for the message.
    """
    lines = space_differences(agent.observation_space, _as_sb3_sees(env.observation_space))
    lines += space_differences(agent.action_space, env.action_space, "action")
    if lines:
        raise AgentSpaceMismatchError(
            f"{path} was trained on other spaces than this environment's: "
            + "; ".join(lines)
            + ". Make the environment as the agent was trained (same observation keys, frame "
            "size and action mode; policies.navigation.make_agent_env) or train an agent for it."
        )


def _as_sb3_sees(space: spaces.Space) -> spaces.Space:
    """``space`` with channel-last images made channel-first, as SB3 stores them
    (``VecTransposeImage``), so the comparison is like with like."""
    from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
    from stable_baselines3.common.vec_env import VecTransposeImage

    if isinstance(space, spaces.Dict):
        return spaces.Dict({k: _as_sb3_sees(v) for k, v in space.spaces.items()})
    if is_image_space(space) and not is_image_space_channels_first(space):
        return VecTransposeImage.transpose_space(space)
    return space


def load_agent(path: str | Path, env: gym.Env, *, device: str = "cpu") -> Any:
    """A saved Stable-Baselines3 PPO agent, checked against ``env``'s spaces.

    Args:
        path: The ``.zip`` file.
        env: The environment the agent will act in.
        device: Torch device.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        AgentSpaceMismatchError: If the agent's observation or action space differs from the
            environment's (the message lists each differing key, expected vs got).
    """
    from stable_baselines3 import PPO

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"an agent file (.zip from python -m policies.train_ppo) was expected at {path}, "
            "got nothing there; check the path."
        )
    model = PPO.load(path, device=device)
    check_agent_spaces(model, env, path)
    return model
