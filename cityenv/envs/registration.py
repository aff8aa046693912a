"""Environment IDs registered with Gymnasium on ``import cityenv`` (string entry points, so
registering imports nothing heavy)."""

from __future__ import annotations

__all__ = ["ENV_IDS", "register_envs"]

ENTRY_POINT = "cityenv.envs.env:CityWorldEnv"

ENV_IDS: dict[str, str] = {
    "CityWorld-Town-v0": "town",
    "CityWorld-Seoul-v0": "seoul",
    "CityWorld-Busan-v0": "busan",
    "CityWorld-AnnArbor-v0": "annarbor",
}
"""Registered ID -> city name (see :mod:`cityenv.envs.cities`)."""

MAX_EPISODE_STEPS = 200
"""Steps per episode (200 chunks of 12 frames at 10 fps: 4 minutes of video)."""


def register_envs() -> None:
    """Register every ID of :data:`ENV_IDS` (those already registered are left alone)."""
    import gymnasium

    for env_id, city in ENV_IDS.items():
        if env_id in gymnasium.registry:
            continue
        gymnasium.register(
            id=env_id,
            entry_point=ENTRY_POINT,
            max_episode_steps=MAX_EPISODE_STEPS,
            kwargs={"city": city},
        )
