"""A seeded random explorer: the baseline every learned agent has to beat."""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["RandomExplorer"]


class RandomExplorer:
    """Samples actions uniformly from an action space, reproducibly.

    Args:
        action_space: The environment's action space (copied, so seeding it here leaves the
            environment's own space alone).
        seed: Seed of the samples; the same seed gives the same action sequence.

    Example:
        >>> explorer = RandomExplorer(env.action_space, seed=0)
        >>> action = explorer.act(obs)
    """

    def __init__(self, action_space: gym.Space, seed: int | None = None) -> None:
        self.action_space = copy.deepcopy(action_space)
        self.seed = seed
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        """Restart the action sequence from ``seed`` (``None`` = the seed given at creation)."""
        self.action_space.seed(self.seed if seed is None else seed)

    def act(self, obs: Any = None, info: dict[str, Any] | None = None) -> Any:
        """A random action (the observation is ignored).

        Returns:
            An element of the action space (an int for ``Discrete``, a float32 array for ``Box``).
        """
        action = self.action_space.sample()
        return int(action) if isinstance(self.action_space, gym.spaces.Discrete) else action

    def predict(
        self, obs: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False
    ) -> tuple[Any, None]:
        """Stable-Baselines3's policy signature, so evaluation code treats both alike."""
        return np.asarray(self.act(obs)), None
