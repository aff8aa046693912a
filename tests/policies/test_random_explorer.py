"""The random explorer: seeded, inside the action space, and leaves the env's space alone."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from policies.random_explorer import RandomExplorer


def actions(explorer: RandomExplorer, n: int = 20) -> list:
    return [np.asarray(explorer.act()).tolist() for _ in range(n)]


def test_same_seed_same_actions() -> None:
    space = spaces.Box(-1.0, 1.0, (12, 4), np.float32)
    assert actions(RandomExplorer(space, seed=3)) == actions(RandomExplorer(space, seed=3))
    assert actions(RandomExplorer(space, seed=3)) != actions(RandomExplorer(space, seed=4))


def test_reset_restarts_the_sequence() -> None:
    explorer = RandomExplorer(spaces.Discrete(4), seed=0)
    first = actions(explorer)
    explorer.reset()
    assert actions(explorer) == first
    assert all(isinstance(a, int) and 0 <= a < 4 for a in first)


def test_actions_are_in_the_space_and_the_space_is_copied() -> None:
    space = spaces.Box(np.array([0.0, -90.0], np.float32), np.array([10.0, 90.0], np.float32))
    explorer = RandomExplorer(space, seed=0)
    assert explorer.action_space is not space
    assert all(space.contains(np.asarray(a, np.float32)) for a in actions(explorer))
    action, state = explorer.predict({"frames": None})
    assert state is None and space.contains(action)


def test_in_the_env_it_is_deterministic(make_town_env) -> None:  # type: ignore[no-untyped-def]
    def positions(seed: int) -> np.ndarray:
        env = make_town_env(action_mode="discrete")
        env.reset(seed=0)
        explorer = RandomExplorer(env.action_space, seed=seed)
        out = []
        for _ in range(4):
            obs, *_ = env.step(explorer.act())
            out.append(obs["pose"][:3])
        return np.stack(out)

    assert np.array_equal(positions(7), positions(7))
