"""Scenario scripts: a start, waypoints and text prompts that change at given steps (YAML).

A scenario file looks like this (``configs/scenarios/town_route.yaml`` is the default one)::

    name: town_route
    description: a loop through the built-in town at sunset
    env_id: CityWorld-Town-v0
    start: {xy: [0.0, 0.0], heading_deg: 90}     # or {node: 12} or {lat: 37.5, lon: 127.0}
    waypoints:                                  # visited in order; the last one is the goal
      - {xy: [120.0, 0.0]}
      - 57                                      # a bare int is a road-graph node id
      - [120.0, 110.0]                          # a bare pair is an ENU (x, y) in metres
      - {lat: 37.5012, lon: 127.0009}
    prompts:
      - {step: 0, prompt: golden sunset}
      - {step: 20, prompt: a flooded street}
    action_mode: discrete                       # discrete | velocity | trajectory
    max_steps: 80                               # environment steps (chunks)

:func:`load_scenario` reads and validates a file; :func:`run_scenario` plays one in an environment
with an agent of :data:`cityenv.agents.AGENTS` (``route_follower`` by default, which the package
``policies`` provides). Positions are in the city's ENU frame (x east, y north, metres);
``heading_deg`` is a compass heading (clockwise from north).

The file format is data that the rollout app (:mod:`cityenv.rollout`) consumes and that tools
above cityenv write, so it lives here, above the library (:mod:`cityenv.envs`) and beside the
apps; the library never imports it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cityenv.agents import Agent, make_agent
from cityenv.envs.actions import ACTION_MODES as _ADAPTERS
from cityenv.errors import CityEnvError
from cityenv.geometry.pose import Pose

__all__ = [
    "ACTION_MODES",
    "Location",
    "PromptChange",
    "Scenario",
    "ScenarioError",
    "ScenarioResult",
    "load_scenario",
    "resolve_waypoints",
    "run_scenario",
    "scenario_from_dict",
    "start_pose",
]

ACTION_MODES = tuple(_ADAPTERS)
"""The action modes a scenario may ask for (those of :class:`cityenv.envs.CityWorldEnv`)."""

_TOP_KEYS = (
    "name",
    "description",
    "env_id",
    "start",
    "waypoints",
    "prompts",
    "action_mode",
    "max_steps",
)


class ScenarioError(CityEnvError, ValueError):
    """A scenario file or mapping is malformed: says which key, what was expected, what came."""


# --- value types ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Location:
    """A place in a city, given one of three ways (exactly one is set).

    Attributes:
        node: Road-graph node id (a panorama of the city's database).
        xy: ENU ``(x, y)`` in metres.
        latlon: WGS84 ``(lat, lon)`` in degrees.
        heading_deg: Compass heading to face there (starts only); ``None`` = along the route.
    """

    node: int | None = None
    xy: tuple[float, float] | None = None
    latlon: tuple[float, float] | None = None
    heading_deg: float | None = None

    def position(self, positions: np.ndarray, frame: Any = None) -> np.ndarray:
        """The location's ENU position, shape ``(3,)`` metres.

        Args:
            positions: Road-graph node positions, shape ``(N, 3)`` ENU (for ``node`` and ``z``).
            frame: The city's :class:`~cityenv.geometry.LocalFrame` (needed for ``latlon``).

        Raises:
            ScenarioError: If the node id is out of range, or ``latlon`` comes without a frame.
        """
        if self.node is not None:
            if not 0 <= self.node < len(positions):
                raise ScenarioError(
                    f"node {self.node} is not a road-graph node: expected an id in "
                    f"[0, {len(positions)}); give an xy or lat/lon position instead."
                )
            return np.asarray(positions[self.node], np.float64).copy()
        if self.xy is not None:
            return np.array([self.xy[0], self.xy[1], 0.0])
        if frame is None:
            raise ScenarioError(
                "a lat/lon location needs the city's LocalFrame to convert it to ENU; got none."
            )
        lat, lon = self.latlon  # type: ignore[misc]
        enu = np.asarray(frame.geodetic_to_enu(lat, lon, frame.height), np.float64)
        return np.array([enu[0], enu[1], 0.0])

    def to_dict(self) -> dict[str, Any]:
        """The location as YAML/JSON-ready data (the form :func:`scenario_from_dict` reads)."""
        out: dict[str, Any] = {}
        if self.node is not None:
            out["node"] = self.node
        if self.xy is not None:
            out["xy"] = list(self.xy)
        if self.latlon is not None:
            out["lat"], out["lon"] = self.latlon
        if self.heading_deg is not None:
            out["heading_deg"] = self.heading_deg
        return out


@dataclass(frozen=True)
class PromptChange:
    """A text prompt that takes effect from environment step ``step`` on.

    Attributes:
        step: Step index (0 = at reset).
        prompt: The text ("golden sunset").
    """

    step: int
    prompt: str


@dataclass(frozen=True)
class Scenario:
    """A scripted episode.

    Attributes:
        name: Short name (used in output names and the summary).
        waypoints: Places to visit in order; the last one is the goal. Empty = free driving to a
            goal the environment's task samples.
        start: Where to start; ``None`` = where the environment's task starts.
        prompts: Prompt changes, sorted by step, steps unique.
        env_id: Gymnasium id of the environment.
        action_mode: ``discrete``, ``velocity`` or ``trajectory``.
        max_steps: Most environment steps (chunks) to run.
        description: Free text.
    """

    name: str
    waypoints: tuple[Location, ...] = ()
    start: Location | None = None
    prompts: tuple[PromptChange, ...] = ()
    env_id: str = "CityWorld-Town-v0"
    action_mode: str = "discrete"
    max_steps: int = 100
    description: str = ""
    source: str = field(default="<dict>", compare=False)

    def prompt_at(self, step: int) -> str | None:
        """The prompt in force at ``step`` (the latest change at or before it), or ``None``."""
        current = None
        for change in self.prompts:
            if change.step > step:
                break
            current = change.prompt
        return current

    def prompt_change(self, step: int) -> str | None:
        """The prompt that starts exactly at ``step``, or ``None`` if none changes there."""
        return next((c.prompt for c in self.prompts if c.step == step), None)

    def to_dict(self) -> dict[str, Any]:
        """The scenario as YAML/JSON-ready data."""
        return {
            "name": self.name,
            "description": self.description,
            "env_id": self.env_id,
            "start": None if self.start is None else self.start.to_dict(),
            "waypoints": [w.to_dict() for w in self.waypoints],
            "prompts": [{"step": p.step, "prompt": p.prompt} for p in self.prompts],
            "action_mode": self.action_mode,
            "max_steps": self.max_steps,
        }


# --- parsing --------------------------------------------------------------------------------
def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read and validate a scenario YAML file.

    Args:
        path: The ``.yaml`` file.

    Raises:
        ScenarioError: If the file is missing, not YAML, or malformed (the message names the key,
            what was expected and what came).
    """
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"scenario file {str(path)!r} does not exist; expected a YAML file.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ScenarioError(f"{path}: expected YAML, could not parse it: {err}") from err
    return scenario_from_dict(data, source=str(path))


def scenario_from_dict(data: Any, *, source: str = "<dict>") -> Scenario:
    """Validate a scenario mapping (a parsed YAML file).

    Args:
        data: The mapping (see the module docstring for the keys).
        source: Where it came from, for error messages.

    Raises:
        ScenarioError: If a key is unknown or missing, or a value has the wrong type or range.
    """
    if not isinstance(data, Mapping):
        raise ScenarioError(f"{source}: expected a mapping of scenario keys, got {_kind(data)}.")
    unknown = sorted(set(map(str, data)) - set(_TOP_KEYS))
    if unknown:
        raise ScenarioError(
            f"{source}: unknown key(s) {unknown}; expected some of {list(_TOP_KEYS)}."
        )
    if "name" not in data:
        raise ScenarioError(f"{source}: missing key 'name' (a short name for the scenario).")
    return Scenario(
        name=_string(data["name"], f"{source}: name"),
        description=_string(data.get("description", ""), f"{source}: description", empty=True),
        env_id=_string(data.get("env_id", "CityWorld-Town-v0"), f"{source}: env_id"),
        start=_parse_start(data.get("start"), source),
        waypoints=_parse_waypoints(data.get("waypoints", []), source),
        prompts=_parse_prompts(data.get("prompts", []), source),
        action_mode=_parse_action_mode(data.get("action_mode", "discrete"), source),
        max_steps=_positive_int(data.get("max_steps", 100), f"{source}: max_steps"),
        source=source,
    )


def _kind(value: Any) -> str:
    """A short description of a value for error messages."""
    return f"{type(value).__name__} {value!r}" if value is not None else "nothing (null)"


def _string(value: Any, where: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise ScenarioError(f"{where}: expected a non-empty string, got {_kind(value)}.")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ScenarioError(f"{where}: expected a finite number, got {_kind(value)}.")
    return float(value)


def _positive_int(value: Any, where: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ScenarioError(f"{where}: expected an integer >= {minimum}, got {_kind(value)}.")
    return int(value)


def _parse_action_mode(value: Any, source: str) -> str:
    if value not in ACTION_MODES:
        raise ScenarioError(
            f"{source}: action_mode: expected one of {list(ACTION_MODES)}, got {_kind(value)}."
        )
    return str(value)


def _parse_location(value: Any, where: str, *, allow_heading: bool) -> Location:
    """A node id, an ``[x, y]`` pair, or a mapping with ``node``, ``xy`` or ``lat``/``lon``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return Location(node=_positive_int(value, f"{where}: node", minimum=0))
    if isinstance(value, Sequence) and not isinstance(value, str):
        return Location(xy=_pair(value, where))
    if not isinstance(value, Mapping):
        raise ScenarioError(
            f"{where}: expected a node id, an [x, y] pair or a mapping with 'node', 'xy' or "
            f"'lat'/'lon', got {_kind(value)}."
        )
    allowed = {"node", "xy", "lat", "lon"} | ({"heading_deg"} if allow_heading else set())
    unknown = sorted(set(map(str, value)) - allowed)
    if unknown:
        raise ScenarioError(
            f"{where}: unknown key(s) {unknown}; expected some of {sorted(allowed)}."
        )
    given = [k for k in ("node", "xy", "lat") if k in value]
    if len(given) != 1 or ("lat" in value) != ("lon" in value):
        raise ScenarioError(
            f"{where}: expected exactly one of 'node', 'xy' or 'lat' + 'lon', got keys "
            f"{sorted(map(str, value))}."
        )
    heading = value.get("heading_deg")
    return Location(
        node=_positive_int(value["node"], f"{where}: node", minimum=0) if "node" in value else None,
        xy=_pair(value["xy"], f"{where}: xy") if "xy" in value else None,
        latlon=_latlon(value, where) if "lat" in value else None,
        heading_deg=None if heading is None else _number(heading, f"{where}: heading_deg"),
    )


def _pair(value: Any, where: str) -> tuple[float, float]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise ScenarioError(f"{where}: expected an [x, y] pair of metres, got {_kind(value)}.")
    return (_number(value[0], f"{where}[0]"), _number(value[1], f"{where}[1]"))


def _latlon(value: Mapping, where: str) -> tuple[float, float]:
    lat, lon = _number(value["lat"], f"{where}: lat"), _number(value["lon"], f"{where}: lon")
    if not -90.0 <= lat <= 90.0:
        raise ScenarioError(f"{where}: lat: expected degrees in [-90, 90], got {lat}.")
    return (lat, lon)


def _parse_start(value: Any, source: str) -> Location | None:
    if value is None:
        return None
    return _parse_location(value, f"{source}: start", allow_heading=True)


def _parse_waypoints(value: Any, source: str) -> tuple[Location, ...]:
    if isinstance(value, (str, Mapping)) or not isinstance(value, Sequence):
        raise ScenarioError(f"{source}: waypoints: expected a list, got {_kind(value)}.")
    return tuple(
        _parse_location(w, f"{source}: waypoints[{i}]", allow_heading=False)
        for i, w in enumerate(value)
    )


def _parse_prompts(value: Any, source: str) -> tuple[PromptChange, ...]:
    if isinstance(value, str):  # one prompt for the whole episode
        return (PromptChange(0, _string(value, f"{source}: prompts")),)
    if isinstance(value, Mapping) or not isinstance(value, Sequence):
        raise ScenarioError(
            f"{source}: prompts: expected a list of {{step, prompt}} mappings, got {_kind(value)}."
        )
    changes = [_parse_prompt(p, f"{source}: prompts[{i}]") for i, p in enumerate(value)]
    steps = [c.step for c in changes]
    if len(set(steps)) != len(steps):
        raise ScenarioError(f"{source}: prompts: expected distinct steps, got steps {steps}.")
    return tuple(sorted(changes, key=lambda c: c.step))


def _parse_prompt(value: Any, where: str) -> PromptChange:
    if not isinstance(value, Mapping) or set(map(str, value)) != {"step", "prompt"}:
        raise ScenarioError(
            f"{where}: expected a mapping with keys 'step' and 'prompt', got {_kind(value)}."
        )
    return PromptChange(
        step=_positive_int(value["step"], f"{where}: step", minimum=0),
        prompt=_string(value["prompt"], f"{where}: prompt"),
    )


# --- running --------------------------------------------------------------------------------
@dataclass
class ScenarioResult:
    """What happened when a scenario was played.

    Attributes:
        steps: Environment steps taken.
        frames: Frames generated, the reset frame included.
        metres_travelled: Camera path length, metres.
        route_length_m: Length of the planned route from the start, metres.
        references_used: References used by each step, ``(steps,)``.
        success: Whether the goal was reached.
        distance_to_goal_m: Distance left to the goal at the end, metres.
        prompts: ``(step, prompt)`` of each prompt set (step 0 = at reset).
        route: The planned road-graph node ids.
        timings: Seconds summed over steps, per part (the env's ``info["timings"]``).
    """

    steps: int = 0
    frames: int = 0
    metres_travelled: float = 0.0
    route_length_m: float = 0.0
    references_used: list[int] = field(default_factory=list)
    success: bool = False
    distance_to_goal_m: float = float("nan")
    prompts: list[tuple[int, str]] = field(default_factory=list)
    route: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def resolve_waypoints(scenario: Scenario, env: Any) -> list[int]:
    """The scenario's waypoints as road-graph node ids of ``env`` (nearest nodes to positions)."""
    base = env.unwrapped
    graph, frame = base.road_graph, getattr(base.db, "frame", None)
    return [
        w.node if w.node is not None else graph.nearest_node(w.position(graph.positions, frame))
        for w in scenario.waypoints
    ]


def start_pose(scenario: Scenario, env: Any, agent: Any = None) -> Pose | None:
    """The start as a camera pose at street height, or ``None`` for the task's own start.

    Without ``heading_deg`` the camera faces where ``agent.start_heading_deg`` says (the route
    follower: along its route toward the first waypoint), else north.
    """
    if scenario.start is None:
        return None
    base = env.unwrapped
    graph, frame = base.road_graph, getattr(base.db, "frame", None)
    position = scenario.start.position(graph.positions, frame)
    position[2] = float(graph.height_at(position[None, :2])[0])
    heading = scenario.start.heading_deg
    if heading is None and hasattr(agent, "start_heading_deg"):
        heading = agent.start_heading_deg(position)
    return Pose.from_heading(position, 0.0 if heading is None else heading)


def run_scenario(
    env: Any,
    scenario: Scenario,
    *,
    seed: int | None = None,
    agent: str | Agent = "route_follower",
    on_frames: Callable[[np.ndarray], None] | None = None,
    progress: bool = False,
) -> ScenarioResult:
    """Play a scenario: reset at its start, drive with an agent, change prompts on schedule.

    Args:
        env: A CityWorld env (possibly wrapped, e.g. by a Rerun recorder); its ``action_mode``
            should be the scenario's.
        scenario: The scenario.
        seed: Seed of ``env.reset``.
        agent: A name of :data:`cityenv.agents.AGENTS` (``"route_follower"``: the route follower
            through the waypoints, from ``policies``), or an agent object (anything with
            ``act(obs, info)``; see :class:`cityenv.agents.Agent`).
        on_frames: Called with each batch of new frames, uint8 ``(T, H, W, 3)`` (the reset frame
            as ``T = 1``).
        progress: Show a tqdm progress bar.

    Returns:
        What happened.

    Raises:
        UnknownNameError: If ``agent`` names no registered agent.
    """
    from tqdm.auto import tqdm

    base = env.unwrapped
    waypoints = resolve_waypoints(scenario, env)
    driver = make_agent(agent, env, scenario) if isinstance(agent, str) else agent
    options: dict[str, Any] = {}
    start = start_pose(scenario, env, driver)
    if start is not None:
        options["start"] = start
    if waypoints:
        options["goal"] = waypoints[-1]
    if scenario.prompt_at(0) is not None:
        options["prompt"] = scenario.prompt_at(0)
    obs, info = env.reset(seed=seed, options=options)
    result = ScenarioResult(prompts=[(0, options["prompt"])] if "prompt" in options else [])
    frames = _frames(obs)
    result.frames = len(frames)
    if on_frames is not None:
        on_frames(frames)
    route = driver.reset(obs, info) if hasattr(driver, "reset") else None
    if route is not None:
        result.route, result.route_length_m = list(route.nodes), float(route.length_m)
    bar = tqdm(total=scenario.max_steps, desc=scenario.name, unit="step", disable=not progress)
    for step in range(1, scenario.max_steps + 1):
        _change_prompt(scenario, base, step - 1, result)
        obs, _, terminated, truncated, info = env.step(driver.act(obs, info))
        _record_step(result, base, info, on_frames)
        bar.update(1)
        bar.set_postfix(m=f"{result.metres_travelled:.0f}", refs=result.references_used[-1])
        if terminated or truncated:
            break
    bar.close()
    result.success = bool(info.get("is_success", False))
    result.distance_to_goal_m = float(info.get("distance_to_goal", float("nan")))
    return result


def _frames(obs: Any) -> np.ndarray:
    """The frames of an observation as uint8 ``(T, H, W, 3)``."""
    frames = np.asarray(obs["frames"] if isinstance(obs, Mapping) else obs)
    return frames[None] if frames.ndim == 3 else frames


def _change_prompt(scenario: Scenario, base: Any, step: int, result: ScenarioResult) -> None:
    """Set the prompt that starts at ``step`` (steps after the reset, 1-based in the episode)."""
    prompt = scenario.prompt_change(step) if step > 0 else None
    if prompt is not None:
        base.set_prompt(prompt)
        result.prompts.append((step, prompt))


def _record_step(
    result: ScenarioResult, base: Any, info: dict[str, Any], on_frames: Callable | None
) -> None:
    """Add one step's frames, distance, references and timings to ``result``.

    Frames and timings come from the env's ``last_step`` record (``info`` carries them only
    with ``full_info=True``).
    """
    record = getattr(base, "last_step", None)
    output = record.output if record is not None else info.get("output")
    timings = record.timings if record is not None else info.get("timings")
    frames = np.asarray(output.frames) if output is not None else np.empty((0,))
    result.steps += 1
    result.frames += len(frames)
    if on_frames is not None and len(frames):
        on_frames(frames)
    result.metres_travelled = float(info.get("metres_travelled", result.metres_travelled))
    result.references_used.append(int(info.get("references_used", 0)))
    for key, seconds in (timings or {}).items():
        result.timings[key] = result.timings.get(key, 0.0) + float(seconds)
