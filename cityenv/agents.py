"""The agents that drive a scenario, by name: a registry that the packages above cityenv fill.

The scenario runner (:func:`cityenv.scenario.run_scenario`, used by ``python -m cityenv.rollout``)
does not know how to drive: it asks :data:`AGENTS` for a factory by name (``agent=`` in the
rollout config, ``route_follower`` by default) and calls it. ``policies`` provides
``route_follower`` (:func:`policies.scenario.route_follower_agent`) through the entry point::

    [project.entry-points."cityenv.agents"]
    route_follower = "policies.scenario:route_follower_agent"

so cityenv never imports ``policies``. A script may register its own:
``AGENTS.register("mine", lambda env, scenario: MyAgent(env))``.

The protocol (:class:`Agent`): ``factory(env, scenario) -> agent``, called once per scenario
before ``env.reset``; then

- ``agent.start_heading_deg(position)``: the compass heading to start at when the scenario's start
  gives none (``None`` = 0, north), asked before ``env.reset``;
- ``agent.reset(obs, info)``: after ``env.reset``; returns the :class:`Route` it plans to follow
  (recorded in the rollout's summary) or ``None``;
- ``agent.act(obs, info)``: the next action, an element of ``env.action_space``.

Only ``act`` is required of an object passed directly as ``agent=``; the other two default to
"no heading" and "no route".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cityenv.registry import Registry

if TYPE_CHECKING:
    from cityenv.scenario import Scenario

__all__ = ["AGENTS", "Agent", "AgentFactory", "Route", "make_agent"]


@dataclass(frozen=True)
class Route:
    """The road-graph route an agent plans to follow.

    Attributes:
        nodes: Road-graph node ids in order.
        length_m: Length of the path from the camera's start along the route, metres.
    """

    nodes: tuple[int, ...]
    length_m: float


class Agent(Protocol):
    """Drives a CityWorld environment through a scenario (see the module docstring)."""

    def start_heading_deg(self, position: np.ndarray) -> float | None:
        """Compass heading (degrees clockwise from north) to start at ENU ``position`` ``(3,)``."""
        ...

    def reset(self, obs: Any, info: dict[str, Any]) -> Route | None:
        """Prepare for the episode ``env.reset`` just started; the planned route, if any."""
        ...

    def act(self, obs: Any, info: dict[str, Any]) -> Any:
        """The action for the current observation and the last step's info."""
        ...


AgentFactory = Callable[[Any, "Scenario"], Agent]
"""``factory(env, scenario) -> agent``; ``env`` may be wrapped (use ``env.unwrapped``)."""

AGENTS: Registry[AgentFactory] = Registry(
    "agent",
    "cityenv.agents",
    advice=(
        "Agents come from installed packages (entry-point group 'cityenv.agents'; "
        "'route_follower' from policies: pip install -e . in a checkout) or "
        "AGENTS.register(name, factory)."
    ),
)
"""Agent name -> factory (entry-point group ``cityenv.agents``)."""


def make_agent(name: str, env: Any, scenario: Scenario) -> Agent:
    """The agent called ``name`` for ``scenario`` in ``env``.

    Raises:
        UnknownNameError: If no agent is registered as ``name`` ("Did you mean ...?").
    """
    return AGENTS.get(name)(env, scenario)
