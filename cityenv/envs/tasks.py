"""Tasks: what an episode asks of the agent (reward, termination, goal).

- ``navigation`` (:class:`NavigationTask`): reach a goal panorama sampled 50-300 m away along the
  road graph. Reward per step = ``progress_reward`` x the decrease of the distance to the goal
  along the graph (metres), plus ``success_bonus`` when a frame of the chunk comes within
  ``success_radius_m`` of the goal (the episode then terminates), minus ``step_cost`` on every
  step, minus ``off_road_penalty`` when the chunk ends farther than ``off_road_m`` from the
  covered streets (the episode goes on: leaving the streets only costs reward; time limits come
  from the registration's ``max_episode_steps``).

  Why standing still is never the best policy: a stopped step earns ``-step_cost``; a step along
  the streets toward the goal earns its progress (metres) minus the same ``step_cost`` and no
  off-street cost, so driving the route beats stopping by the route's length plus the bonus
  (``tests/envs/test_task_learnable.py`` checks it over a fixed set of episodes: the route
  follower's return beats always-stop's and random's). The off-street cost only ever adds to
  ``step_cost`` where the camera left the streets, which the route never does.

  Held-out goals: ``goals="train"`` samples goals among 80 % of the nodes, ``goals="heldout"``
  among the other 20 % (a fixed split of the node ids, :func:`heldout_goal_mask`), so an agent
  trained on ``"train"`` can be evaluated on goals it never saw.
- ``free`` (:class:`FreeTask`): no reward, no termination (scenario rollouts). A goal can still be
  given through ``reset(options={"goal": ...})``: its distance and vector are then reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cityenv.citydb.roadgraph import RoadGraph

__all__ = [
    "GOAL_SPLITS",
    "TASKS",
    "FreeTask",
    "NavigationTask",
    "StepOutcome",
    "heldout_goal_mask",
    "make_task",
]

GOAL_SPLITS = ("all", "train", "heldout")
"""Which nodes a navigation task samples goals among."""

HELDOUT_FRACTION = 0.2
"""Share of the road graph's nodes kept as held-out goals."""

_SPLIT_SEED = 20_241  # fixed: the split must be the same in every process and every run


def heldout_goal_mask(num_nodes: int, fraction: float = HELDOUT_FRACTION) -> np.ndarray:
    """Which nodes are held-out goals: a fixed random ``fraction`` of them, bool ``(N,)``.

    The same for every call with the same ``num_nodes`` (its own fixed seed), so training
    (``goals="train"``) and evaluation (``goals="heldout"``) processes agree.
    """
    order = np.random.default_rng(_SPLIT_SEED).permutation(int(num_nodes))
    mask = np.zeros(int(num_nodes), bool)
    mask[order[: max(1, round(fraction * num_nodes))]] = True
    return mask


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
        progress_reward: Reward per metre of progress along the graph.
        step_cost: Reward subtracted on every step (stopping included): time is not free.
        goals: ``"all"``, ``"train"`` or ``"heldout"``: the nodes sampled goals come from
            (:func:`heldout_goal_mask`); a goal given to ``reset`` is always accepted.

    Raises:
        UnknownNameError: If ``goals`` is not one of :data:`GOAL_SPLITS`.
    """

    name = "navigation"
    rewarded = True

    def __init__(
        self,
        *,
        success_radius_m: float = 5.0,
        success_bonus: float = 10.0,
        off_road_m: float = 8.0,
        off_road_penalty: float = 0.2,
        min_goal_m: float = 50.0,
        max_goal_m: float = 300.0,
        progress_reward: float = 1.0,
        step_cost: float = 0.2,
        goals: str = "all",
    ) -> None:
        from cityenv.errors import check_name

        self.goals = check_name("goals", goals, GOAL_SPLITS)
        self.progress_reward = float(progress_reward)
        self.step_cost = float(step_cost)
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

    def goal_mask(self, graph: RoadGraph) -> np.ndarray | None:
        """Which nodes of ``graph`` sampled goals may be, bool ``(N,)``; ``None`` for all."""
        if self.goals == "all":
            return None
        heldout = heldout_goal_mask(graph.num_nodes)
        return heldout if self.goals == "heldout" else ~heldout

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
        reward = self.progress_reward * progress + (self.success_bonus if success else 0.0)
        reward -= self.step_cost + (self.off_road_penalty if off_road else 0.0)
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
