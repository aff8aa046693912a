"""Agents that act in a CityWorld environment.

- :class:`RouteFollower`: shortest path on the road graph -> actions, in every action mode.
- :class:`RandomExplorer`: seeded uniform actions (the baseline).
- :mod:`policies.scenario`: the route follower as the scenario driver (the ``route_follower``
  agent of :data:`cityenv.agents.AGENTS`); re-exports the scenario format of
  :mod:`cityenv.scenario` and :func:`run_scenario`.
- ``python -m policies.train_ppo``: Stable-Baselines3 PPO in ``CityWorld-Town-v0`` (Hydra,
  vector envs, held-out goals; :mod:`policies.navigation`, :mod:`policies.vec`,
  :mod:`policies.agent_file`).
- ``python -m policies.transfer``: train in the world model, test in the true renders
  (docs/agents.md).
- :mod:`policies.control`: the route follower's control law as pure functions.
"""

from __future__ import annotations

from policies.random_explorer import RandomExplorer
from policies.route_follower import RouteFollower, plan_route
from policies.scenario import (
    Location,
    PromptChange,
    Scenario,
    ScenarioError,
    ScenarioResult,
    load_scenario,
    run_scenario,
    scenario_from_dict,
)

__all__ = [
    "Location",
    "PromptChange",
    "RandomExplorer",
    "RouteFollower",
    "Scenario",
    "ScenarioError",
    "ScenarioResult",
    "load_scenario",
    "plan_route",
    "run_scenario",
    "scenario_from_dict",
]
