"""Tasks: what an episode asks of the agent (reward, termination, goal).

- ``navigation`` (:class:`NavigationTask`): reach a goal panorama sampled 50-300 m away along the
  road graph. Reward per step = decrease of the distance to the goal along the graph (metres),
  plus ``success_bonus`` when a frame of the chunk comes within ``success_radius_m`` of the goal
  (the episode then terminates), minus ``off_road_penalty`` when the chunk ends farther than
  ``off_road_m`` from the covered streets (the episode goes on: leaving the streets only costs
  reward; time limits come from the registration's ``max_episode_steps``).
- ``free`` (:class:`FreeTask`): no reward, no termination (scenario rollouts). A goal can still be
  given through ``reset(options={"goal": ...})``: its distance and vector are then reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cityenv.citydb.roadgraph import RoadGraph

__all__ = ["TASKS", "FreeTask", "NavigationTask", "StepOutcome", "make_task"]


@dataclass
class StepOutcome:
    """What a task makes of one chunk.

    Attributes:
        reward: The step's reward.
        terminated: Whether the episode ends (goal reached).
        info: Task figures for the step's ``info`` (``distance_to_goal``, ``progress_m``,
            ``is_success``, ``off_road``, ``distance_to_graph``).
    """

    reward: float
    terminated: bool
    info: dict[str, Any] = field(default_factory=dict)


class NavigationTask:
    """Reach a goal node of the road graph.

    Args:
        success_radius_m: The goal is reached when a frame comes this close (horizontally).
        success_bonus: Reward added when the goal is reached.
        off_road_m: A chunk ending farther than this from the graph's edges is off the streets.
        off_road_penalty: Reward subtracted for an off-street step.
        min_goal_m: Smallest distance along the graph of a sampled goal, metres.
        max_goal_m: Largest distance along the graph of a sampled goal, metres.
    """

    name = "navigation"
    rewarded = True

    def __init__(
        self,
        *,
        success_radius_m: float = 5.0,
        success_bonus: float = 10.0,
        off_road_m: float = 8.0,
        off_road_penalty: float = 1.0,
        min_goal_m: float = 50.0,
        max_goal_m: float = 300.0,
    ) -> None:
        self.success_radius_m = float(success_radius_m)
        self.success_bonus = float(success_bonus)
        self.off_road_m = float(off_road_m)
        self.off_road_penalty = float(off_road_penalty)
        self.min_goal_m = float(min_goal_m)
        self.max_goal_m = float(max_goal_m)
        self.graph: RoadGraph | None = None
        self.goal_node: int | None = None
        self.distance = math.nan

    @property
    def needs_goal(self) -> bool:
        """Whether :meth:`reset` must be given a goal (sampled when the user gives none)."""
        return True

    def reset(self, graph: RoadGraph, position: np.ndarray, goal_node: int | None) -> None:
        """Start an episode at ``position`` ``(3,)`` toward ``goal_node`` (``None``: no goal)."""
        self.graph, self.goal_node = graph, goal_node
        self.distance = self._distance(position)

    def goal_position(self) -> np.ndarray | None:
        """The goal's ENU position ``(3,)``, or ``None`` without a goal."""
        if self.graph is None or self.goal_node is None:
            return None
        return self.graph.positions[self.goal_node]

    def step(self, positions: np.ndarray) -> StepOutcome:
        """Score a chunk whose camera centres are ``positions`` ``(L, 3)``."""
        if self.graph is None:
            raise RuntimeError("the task must be reset before step(); call env.reset() first.")
        end = positions[-1]
        new = self._distance(end)
        # From a part of the road graph that does not reach the goal the distance is inf: such a
        # step earns no progress (inf - inf would be NaN, inf - x an infinite reward) and counts
        # as off the covered streets.
        reachable = math.isfinite(new)
        both = reachable and math.isfinite(self.distance)
        progress = self.distance - new if self.goal_node is not None and both else 0.0
        self.distance = new
        to_graph = self.graph.distance_to_graph(end)
        off_road = to_graph > self.off_road_m or (self.goal_node is not None and not reachable)
        success = self._reached(positions)
        info = {
            "distance_to_goal": new,
            "progress_m": progress,
            "is_success": success,
            "off_road": off_road,
            "distance_to_graph": to_graph,
        }
        if not self.rewarded:
            return StepOutcome(0.0, False, info)
        reward = progress + (self.success_bonus if success else 0.0)
        reward -= self.off_road_penalty if off_road else 0.0
        return StepOutcome(float(reward), success, info)

    def _distance(self, position: np.ndarray) -> float:
        if self.graph is None or self.goal_node is None:
            return math.nan
        return self.graph.distance_to_goal(position, self.goal_node)

    def _reached(self, positions: np.ndarray) -> bool:
        goal = self.goal_position()
        if goal is None:
            return False
        d = np.linalg.norm(positions[:, :2] - goal[:2], axis=1)
        return bool(d.min() <= self.success_radius_m)


class FreeTask(NavigationTask):
    """No reward and no termination; an optional goal is only reported (scenario rollouts)."""

    name = "free"
    rewarded = False

    @property
    def needs_goal(self) -> bool:
        return False


TASKS: dict[str, type[NavigationTask]] = {"navigation": NavigationTask, "free": FreeTask}
"""Task name -> class."""


def make_task(name: str, **options: Any) -> NavigationTask:
    """The task called ``name`` (``navigation`` or ``free``) with keyword options.

    Raises:
        UnknownNameError: If the name is not a known task.
    """
    from cityenv.errors import check_name

    return TASKS[check_name("task", name, TASKS)](**options)
