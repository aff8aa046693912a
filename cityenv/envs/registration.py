"""Environment IDs registered with Gymnasium on ``import cityenv`` (string entry points, so
registering imports nothing heavy)."""

from __future__ import annotations

__all__ = ["ENV_IDS", "TRUE_RENDER_IDS", "register_envs"]

ENTRY_POINT = "cityenv.envs.env:CityWorldEnv"

ENV_IDS: dict[str, str] = {
    "CityWorld-Town-v0": "town",
    "CityWorld-Seoul-v0": "seoul",
    "CityWorld-Busan-v0": "busan",
    "CityWorld-AnnArbor-v0": "annarbor",
}
"""Registered ID -> city name (see :mod:`cityenv.envs.cities`)."""

TRUE_RENDER_IDS: dict[str, str] = {"CityWorld-TownTrue-v0": "town"}
"""IDs whose frames are the simulator's true renders (``world_model="truth"``), the same task,
spaces and reward as the world-model ID of the same city: agents trained in one are tested in
the other (docs/agents.md)."""

MAX_EPISODE_STEPS = 200
"""Steps per episode (200 chunks of 12 frames at 10 fps: 4 minutes of video)."""


def register_envs() -> None:
    """Register every ID of :data:`ENV_IDS` and :data:`TRUE_RENDER_IDS` (those already
    registered are left alone)."""
    import gymnasium

    ids = [(i, {"city": c}) for i, c in ENV_IDS.items()]
    ids += [(i, {"city": c, "world_model": "truth"}) for i, c in TRUE_RENDER_IDS.items()]
    for env_id, kwargs in ids:
        if env_id in gymnasium.registry:
            continue
        gymnasium.register(
            id=env_id,
            entry_point=ENTRY_POINT,
            max_episode_steps=MAX_EPISODE_STEPS,
            kwargs=kwargs,
        )
