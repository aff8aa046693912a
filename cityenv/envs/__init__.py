"""cityenv.envs: the Gymnasium environment of a city, its action adapters, tasks and IDs.

::

    import gymnasium as gym
    import cityenv  # registers CityWorld-Town-v0, -Seoul-v0, -Busan-v0, -AnnArbor-v0

    env = gym.make("CityWorld-Town-v0", render_mode="rgb_array")
    obs, info = env.reset(seed=0, options={"prompt": "a sunny afternoon"})

Bad input (a constructor argument, a ``reset`` option, an action) is a typed error that says
what was expected and what came: :mod:`cityenv.envs.validation` and ``docs/reliability.md``.
Names are imported on first use (PEP 562), so ``import cityenv`` (which registers the IDs)
imports neither torch nor the world model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cityenv._lazy import lazy_namespace

if TYPE_CHECKING:
    from cityenv.envs.actions import (
        ACTION_MODES,
        ActionAdapter,
        DiscreteActions,
        TrajectoryActions,
        VelocityActions,
        make_action_adapter,
    )
    from cityenv.envs.cities import CITY_PROVIDERS, resolve_city_db
    from cityenv.envs.env import CityWorldEnv, StepRecord, estimate_reference_height
    from cityenv.envs.registration import ENV_IDS, register_envs
    from cityenv.envs.tasks import FreeTask, NavigationTask, make_task
    from cityenv.envs.town import TownSpec, build_town_db, town_db_path
    from cityenv.envs.validation import RESET_OPTIONS, check_reset_options

_HOMES = {
    "ACTION_MODES": "actions",
    "ActionAdapter": "actions",
    "DiscreteActions": "actions",
    "TrajectoryActions": "actions",
    "VelocityActions": "actions",
    "make_action_adapter": "actions",
    "CITY_PROVIDERS": "cities",
    "resolve_city_db": "cities",
    "CityWorldEnv": "env",
    "StepRecord": "env",
    "estimate_reference_height": "env",
    "ENV_IDS": "registration",
    "register_envs": "registration",
    "FreeTask": "tasks",
    "NavigationTask": "tasks",
    "make_task": "tasks",
    "TownSpec": "town",
    "build_town_db": "town",
    "town_db_path": "town",
    "RESET_OPTIONS": "validation",
    "check_reset_options": "validation",
}
__all__ = [
    "ACTION_MODES",
    "ActionAdapter",
    "CITY_PROVIDERS",
    "CityWorldEnv",
    "DiscreteActions",
    "ENV_IDS",
    "FreeTask",
    "NavigationTask",
    "RESET_OPTIONS",
    "StepRecord",
    "TownSpec",
    "TrajectoryActions",
    "VelocityActions",
    "build_town_db",
    "check_reset_options",
    "estimate_reference_height",
    "make_action_adapter",
    "make_task",
    "register_envs",
    "resolve_city_db",
    "town_db_path",
]


__getattr__, __dir__ = lazy_namespace(__name__, _HOMES, __all__)
