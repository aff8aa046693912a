"""``CityWorldEnv``: a Gymnasium environment around a retrieval-grounded video world model.

Each step turns the action into a trajectory chunk of ``L`` camera poses at ``fps``
(:mod:`cityenv.envs.actions`), retrieves street-view references for it from the city's database
(:class:`cityenv.citydb.Retriever`), loads them and asks the world model for the chunk's frames.
The task (:mod:`cityenv.envs.tasks`) scores the chunk on the database's road graph
(:class:`cityenv.citydb.roadgraph.RoadGraph`).

Street height: every pose of a chunk is put at the height of the references around it (the
road graph's interpolated panorama height), so by default the agent's camera is at the capture
height of the database (2.5 m above the road in the built-in town). ``camera_height=h`` puts it
``h`` metres above the road instead, the road being estimated from the references' depth below
their cameras.

Observation (a ``Dict``; text is not in it, SB3 cannot batch text; the prompt comes through
``reset(options={"prompt": ...})`` and :meth:`CityWorldEnv.set_prompt`):

- ``frames``: uint8 ``(L, H, W, 3)`` (``observe="chunk"``) or ``(H, W, 3)`` (``"last"``);
- ``pose``: float32 ``(7,)`` ``[x, y, z, qw, qx, qy, qz]``, camera-to-world in the city's ENU;
- ``geo``: float64 ``(2,)`` ``[lat, lon]`` of the camera, degrees WGS84;
- ``goal``: float32 ``(3,)`` goal position minus camera position in the camera frame (OpenCV:
  x right, y down, z forward), zeros without a goal.

What a navigating agent needs next to the frames (zeros without a goal / before a step):

- ``goal_direction``: float32 ``(2,)`` unit ``[right, forward]`` horizontal direction to the goal
  in the camera frame (straight line);
- ``goal_distance``: float32 ``(1,)`` metres to the goal along the road graph;
- ``route_direction``: float32 ``(2,)`` unit ``[right, forward]`` direction to the point
  ``route_lookahead_m`` ahead on the shortest way along the streets
  (:meth:`RoadGraph.route_point`): the turn-by-turn hint of a navigation app;
- ``speed``: float32 ``(1,)`` metres per second over the last chunk;
- ``last_action``: float32, the last action: one-hot ``(n,)`` for ``Discrete(n)``, the action
  flattened for a ``Box``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import quaternion
from gymnasium import spaces

from cityenv.citydb.reader import CityDB
from cityenv.citydb.retrieval import RetrievalResult, Retriever
from cityenv.citydb.roadgraph import RoadGraph
from cityenv.envs.actions import ActionAdapter, level_rotations, make_action_adapter
from cityenv.envs.cities import resolve_city_db
from cityenv.envs.tasks import NavigationTask, make_task
from cityenv.envs.town import TownSpec
from cityenv.envs.validation import (
    check_env_arguments,
    check_node,
    check_prompt,
    check_reset_options,
    check_retrieval_options,
)
from cityenv.errors import OutOfCoverageError, ResetNeededError, ShapeMismatchError, unknown_name
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose, Trajectory
from cityenv.worldmodel.base import ChunkOutput, ChunkReferences, WorldModel
from cityenv.worldmodel.referencing import ReferenceLoader

__all__ = ["CityWorldEnv", "StepRecord", "estimate_reference_height"]

_FAR = 1.0e6  # metres: bound of ENU coordinates in the observation (a city is far smaller)

DEFAULT_REFERENCE_HEIGHT_M = 2.5
"""Camera height above the road assumed when the database's depths cannot tell."""

DEFAULT_FRAME_SIZE = (256, 256)
"""``(width, height)`` of the frames when neither the caller nor the world model sets them."""


@dataclass(eq=False)
class StepRecord:
    """What one step did, kept on :attr:`CityWorldEnv.last_step`.

    Attributes:
        trajectory: The chunk's ``L`` camera-to-world poses and timestamps.
        retrieval: What the retriever returned for it.
        output: What the world model generated (frames, warps, masks, references, info).
        timings: Seconds spent: ``retrieval`` (retrieving and loading), ``load`` (loading
            alone), ``generate``.
    """

    trajectory: Trajectory
    retrieval: RetrievalResult
    output: ChunkOutput
    timings: dict[str, float]


class CityWorldEnv(gym.Env):
    """A city as an environment: actions move a camera, a world model renders what it sees.

    Args:
        city_db: The street-view database: a folder or an opened :class:`CityDB`. ``None``
            resolves ``city``.
        city: A name of :data:`~cityenv.envs.cities.CITY_PROVIDERS`: ``"town"`` (built-in,
            generated on first use by its provider, ``carla_tools``), ``"seoul"``, ``"busan"``
            or ``"annarbor"`` (found under ``$CITYENV_DATA``); used when ``city_db`` is
            ``None`` (default ``"town"``).
        world_model: ``"warp"`` (:class:`~cityenv.worldmodel.warp.WarpWorldModel`),
            ``"diffusion"`` (:class:`~cityenv.worldmodel.diffusion.DiffusionWorldModel`, built
            by :meth:`~cityenv.worldmodel.diffusion.DiffusionWorldModel.create` from
            ``world_model_options``), ``"truth"`` (the simulator's true renders,
            :class:`~cityenv.worldmodel.truth.TrueRenderWorldModel`; the renderer of the
            city's name, the town's with its ``town`` options), another name of
            :data:`~cityenv.worldmodel.registry.WORLD_MODELS` (entry-point group
            ``cityenv.world_models``), a :class:`WorldModel` or a callable returning one. An
            import path is taken only as ``"import:package.module:attr"`` (importing runs
            code: :mod:`cityenv.worldmodel.registry`).
        world_model_options: Keyword arguments of the world model's constructor (for
            ``"diffusion"``: ``path`` of a saved model, or ``preset`` + ``seed`` for random
            weights, ``device``, and :class:`~cityenv.worldmodel.settings.SamplingSettings`
            overrides).
        width: Frame width, pixels; ``None`` = the world model's own
            (:attr:`~cityenv.worldmodel.base.WorldModel.native_size`: the size a trained
            diffusion model was trained on), else :data:`DEFAULT_FRAME_SIZE` (256).
        height: Frame height, pixels; ``None`` as for ``width``.
        fov_deg: Horizontal field of view, degrees.
        chunk_length: Frames per step ``L``.
        fps: Frame rate of the chunks.
        action_mode: ``"discrete"``, ``"velocity"`` or ``"trajectory"``.
        task: ``"navigation"`` or ``"free"``.
        observe: ``"last"`` (frames = the chunk's last frame) or ``"chunk"`` (all ``L``).
        camera_height: Camera height above the road, metres; ``None`` = the references' height.
        retrieval: Retrieval settings: ``k`` (references per chunk, 5), ``exclude_traversals``
            (ids never used) and any :class:`Retriever` keyword (``radius``,
            ``coverage_threshold``, ...).
        render_mode: ``None`` or ``"rgb_array"`` (:meth:`render` returns the last frame).
        max_speed: Largest forward speed of the ``velocity`` and ``trajectory`` modes, m/s; the
            ``discrete`` mode goes straight at half of it.
        action_options: Keyword arguments of the action adapter (override the above).
        task_options: Keyword arguments of the task (``success_radius_m``, ``off_road_m``, ...).
        town: Options of the built-in town's database for ``city="town"``: the fields of
            :class:`~cityenv.envs.town.TownSpec` (``seed``, ``blocks``, ``size``,
            ``spacing_m``) and ``progress`` (a progress bar while it is built on first use);
            checked whatever the city (:class:`~cityenv.errors.ConfigError` for an unknown key,
            with "Did you mean", or a wrong value).
        link_radius_m: Road-graph link radius, metres.
        start_radius_m: A given start must lie this close to a panorama (horizontally).
        full_info: Also put the chunk's objects and timings in ``info`` (``pose``,
            ``trajectory``, ``retrieval``, ``output``, ``timings``, ``model_info``). Off by
            default: timings differ from run to run and these objects compare by identity, so
            they would break Gymnasium's determinism check (same seed and action, same info);
            they also weigh megabytes per step in a vector environment. They are always on
            :attr:`last_step`.
        route_lookahead_m: How far ahead on the way to the goal ``route_direction`` points,
            metres.

    Attributes:
        last_step: The last step's :class:`StepRecord` (trajectory, retrieval, output,
            timings), for wrappers and tools; ``None`` before the first step.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        city_db: str | os.PathLike[str] | CityDB | None = None,
        *,
        city: str | None = None,
        world_model: str | WorldModel | Callable[[], WorldModel] = "warp",
        world_model_options: Mapping[str, Any] | None = None,
        width: int | None = None,
        height: int | None = None,
        fov_deg: float = 90.0,
        chunk_length: int = 12,
        fps: float = 10.0,
        action_mode: str = "discrete",
        task: str = "navigation",
        observe: str = "last",
        camera_height: float | None = None,
        retrieval: Mapping[str, Any] | None = None,
        render_mode: str | None = None,
        max_speed: float = 10.0,
        action_options: Mapping[str, Any] | None = None,
        task_options: Mapping[str, Any] | None = None,
        town: Mapping[str, Any] | None = None,
        link_radius_m: float = 15.0,
        start_radius_m: float = 20.0,
        full_info: bool = False,
        route_lookahead_m: float = 10.0,
    ) -> None:
        check_env_arguments(
            width=width,
            height=height,
            fov_deg=fov_deg,
            chunk_length=chunk_length,
            fps=fps,
            camera_height=camera_height,
            max_speed=max_speed,
            link_radius_m=link_radius_m,
            start_radius_m=start_radius_m,
            mappings={
                "world_model_options": world_model_options,
                "action_options": action_options,
                "task_options": task_options,
                "retrieval": retrieval,
            },
        )
        _check_choice("observe", observe, ("last", "chunk"))
        _check_choice("render_mode", render_mode, (None, "rgb_array"))
        town_spec = TownSpec.from_options(town)  # checked even when another city is asked for
        self.render_mode = render_mode
        self.db = _open_db(city_db, city, town_spec, _build_progress(town))
        self.road_graph = RoadGraph.from_citydb(self.db, link_radius_m=link_radius_m)
        self.chunk_length, self.fps = int(chunk_length), float(fps)
        self.metadata = {**self.metadata, "render_fps": self.fps}
        self.action_mode, self.observe, self.full_info = action_mode, observe, bool(full_info)
        self.action_adapter = _adapter(action_mode, chunk_length, fps, max_speed, action_options)
        self.task: NavigationTask = make_task(task, **dict(task_options or {}))
        self.world_model = _make_world_model(
            world_model, _world_model_options(world_model, city, town_spec, world_model_options)
        )
        width, height = _frame_size(width, height, self.world_model)
        self.camera = PinholeCamera.from_fov(width, height, float(fov_deg))
        self.world_model.check_settings(self.camera, self.chunk_length)
        self.retriever, self.retrieval_k, self.exclude_traversals = _retriever(self.db, retrieval)
        self.loader = ReferenceLoader(self.db)
        self.start_radius_m = float(start_radius_m)
        self.camera_height = camera_height
        self._height_offset = _height_offset(self.db, camera_height)
        self.action_space = self.action_adapter.space
        self.observation_space = self._observation_space()
        self.pose: Pose | None = None
        self.prompt: str | None = None
        self.start_node: int | None = None
        self.time_s = 0.0
        self.metres_travelled = 0.0
        self.last_step: StepRecord | None = None
        self._last_frames: np.ndarray | None = None
        self.route_lookahead_m = float(route_lookahead_m)
        self._speed = 0.0
        self._last_action = np.zeros(_action_size(self.action_space), np.float32)

    # --- properties the policies read ----------------------------------------------------------
    @property
    def goal_node(self) -> int | None:
        """The goal's node in :attr:`road_graph` (``None`` without a goal)."""
        return self.task.goal_node

    @property
    def success_radius_m(self) -> float:
        """Distance to the goal that counts as reached, metres."""
        return self.task.success_radius_m

    @property
    def covered_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(min, max)`` ENU corners ``(3,)`` of the database's panoramas."""
        return self.road_graph.bounds

    # --- gymnasium API --------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode.

        Args:
            seed: Seed of ``self.np_random`` (start, heading, goal sampling).
            options: ``prompt`` (str), ``start`` (a :class:`Pose`, a node id, or an ENU
                ``(x, y)`` / ``(x, y, z)``; heading from ``heading_deg`` or along a road-graph
                edge), ``heading_deg`` (float), ``goal`` (a node id or an ENU position),
                ``start_image`` (uint8 ``(h, w, 3)`` taken at the start: the world model carries
                its weather and cars on; resized to the frame size).

        Returns:
            The observation and an info dict: ``start_node``, ``goal_node`` (-1 without a
            goal), ``distance_to_goal`` (with a goal), ``references_used``, ``prompt``; with
            ``full_info`` also ``pose`` and ``retrieval``.

        Raises:
            OutOfCoverageError: If the start or the goal lies outside the covered streets (a goal
                position farther than ``start_radius_m`` from every panorama, a goal node that
                is not a node of the road graph), or the goal cannot be reached from the start.
            UnknownOptionError: If an option is not one of the above ("Did you mean").
            InvalidOptionError: If ``options`` is not a dict or an option has the wrong type.
            ShapeMismatchError: If ``start_image`` is not a non-empty uint8 ``(h, w, 3)``.
        """
        super().reset(seed=seed)
        options = check_reset_options(options)
        self.prompt = options.get("prompt")
        start, goal = self._start_and_goal(options)
        self.pose, self.start_node = start, self.road_graph.nearest_node(start.position)
        self.time_s, self.metres_travelled = 0.0, 0.0
        self._speed, self._last_action[:] = 0.0, 0.0
        self.task.reset(self.road_graph, start.position, goal)
        result, refs, _ = self._references(Trajectory.from_poses([start]))
        first = self.world_model.reset(
            pose=start,
            camera=self.camera,
            references=refs,
            start_image=options.get("start_image"),
            prompt=self.prompt,
            generator=self.np_random,
        )
        self._check_frames(np.asarray(first)[None], 1)
        self._last_frames = np.repeat(np.asarray(first)[None], self.chunk_length, axis=0)
        self.last_step = None
        info: dict[str, Any] = {
            "start_node": self.start_node,
            "goal_node": -1 if self.goal_node is None else self.goal_node,
            "references_used": len(refs.views),
            "prompt": self.prompt,
        }
        if self.goal_node is not None:
            info["distance_to_goal"] = self.task.distance
        if len(self.db.damaged):  # damaged views skipped so far (only once there is one)
            info["skipped_views"] = len(self.db.damaged)
        if self.full_info:
            info.update(pose=start, retrieval=result)
        return self._observation(), info

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Move the camera along the action's chunk and generate its frames.

        Returns:
            ``(observation, reward, terminated, truncated, info)``; ``truncated`` is always
            False (time limits come from the registration's ``max_episode_steps``). ``info``:
            ``references_used``, ``distance_to_goal`` (with a goal), ``progress_m``,
            ``metres_travelled`` (episode total), ``is_success``, ``off_road``,
            ``distance_to_graph``; with ``full_info`` also ``pose``, ``trajectory``,
            ``retrieval``, ``output``, ``timings`` (``retrieval``, ``load``, ``generate``
            seconds) and ``model_info`` (the world model's ``output.info``).

        Raises:
            InvalidActionError: If the action is outside the action space or holds NaN/inf.
        """
        if self.pose is None:
            raise ResetNeededError(
                "the environment must be reset before step(); call env.reset() first."
            )
        chunk = self.action_adapter.chunk(self.pose, self.time_s, action, self._street_height)
        result, refs, timings = self._references(chunk)
        t0 = time.perf_counter()
        output = self.world_model.generate(chunk, refs)
        timings["generate"] = time.perf_counter() - t0
        self._check_frames(output.frames, len(chunk))
        self._advance(chunk, output)
        self._last_action = _action_features(self.action_space, action)
        self.last_step = StepRecord(chunk, result, output, timings)
        outcome = self.task.step(chunk.positions)
        info = self._step_info(outcome.info)
        return self._observation(), outcome.reward, outcome.terminated, False, info

    def render(self) -> np.ndarray | None:
        """The last generated frame, uint8 ``(H, W, 3)`` (``render_mode="rgb_array"``)."""
        if self.render_mode != "rgb_array" or self._last_frames is None:
            return None
        return self._last_frames[-1].copy()

    def close(self) -> None:
        """Close the database files (and the world model's renderer, if it has one)."""
        self.db.close()
        close = getattr(self.world_model, "close", None)
        if callable(close):
            close()
        super().close()

    def set_prompt(self, prompt: str | None) -> None:
        """Change the text prompt from the next chunk on."""
        self.prompt = check_prompt(prompt)
        self.world_model.set_prompt(prompt)

    # --- start and goal ------------------------------------------------------------------------
    def _start_and_goal(self, options: dict[str, Any]) -> tuple[Pose, int | None]:
        """The start pose and goal node of an episode from ``options`` or sampled."""
        graph, rng, task = self.road_graph, self.np_random, self.task
        goal = self._goal_node(options["goal"]) if options.get("goal") is not None else None
        given = options.get("start")
        if given is None:
            if goal is not None:  # the graph is undirected: sample a start around the goal
                node = graph.sample_goal(rng, goal, task.min_goal_m, task.max_goal_m)
            elif task.needs_goal:
                node, goal = graph.sample_start_goal(
                    rng, task.min_goal_m, task.max_goal_m, task.goal_mask(graph)
                )
            else:
                node = int(rng.integers(graph.num_nodes))
            start = self._pose_at(graph.positions[node], node, options.get("heading_deg"))
        else:
            start = self._given_start(given, options.get("heading_deg"))
        if goal is None and task.needs_goal:
            node = graph.nearest_node(start.position)
            goal = graph.sample_goal(
                rng, node, task.min_goal_m, task.max_goal_m, task.goal_mask(graph)
            )
        if goal is not None and not math.isfinite(graph.distance_to_goal(start.position, goal)):
            raise OutOfCoverageError(
                f"the goal (node {goal}) must be reachable from the start along the road graph, "
                f"got disconnected streets; pick a goal on the start's streets."
            )
        return start, goal

    def _given_start(self, start: Any, heading_deg: float | None) -> Pose:
        """A start pose from a :class:`Pose`, a node id or an ENU position."""
        graph = self.road_graph
        if isinstance(start, Pose):
            self._check_covered(start.position, "start")
            xy = start.position[None, :2]
            position = np.array([*start.position[:2], self._street_height(xy)[0]])
            heading = start.heading_deg if heading_deg is None else heading_deg
            return Pose(position, level_rotations([heading], [start.pitch_deg])[0])
        if isinstance(start, (int, np.integer)):
            node = check_node("start", int(start), graph.num_nodes)
            return self._pose_at(graph.positions[node], node, heading_deg)
        position = np.asarray(start, dtype=np.float64).reshape(-1)
        self._check_covered(position, "start")
        return self._pose_at(position, graph.nearest_node(position), heading_deg)

    def _pose_at(self, position: np.ndarray, node: int, heading_deg: float | None) -> Pose:
        """A level camera at street height over ``position``, heading given or along an edge."""
        if heading_deg is None:
            neighbours = self.road_graph.neighbors(node)
            heading_deg = (
                self.road_graph.heading_deg(node, int(self.np_random.choice(neighbours)))
                if neighbours.size
                else float(self.np_random.uniform(0.0, 360.0))
            )
        xy = np.asarray(position, np.float64)[None, :2]
        z = self._street_height(xy)[0]
        return Pose([xy[0, 0], xy[0, 1], z], level_rotations([float(heading_deg)], [0.0])[0])

    def _goal_node(self, goal: Any) -> int:
        if isinstance(goal, (int, np.integer)):
            return check_node("goal", int(goal), self.road_graph.num_nodes)
        position = np.asarray(goal, dtype=np.float64).reshape(-1)
        self._check_covered(position, "goal")
        return self.road_graph.nearest_node(position)

    def _check_covered(self, position: np.ndarray, what: str) -> None:
        """Raise :class:`OutOfCoverageError` if ``position`` is far from every panorama."""
        d = float(self.road_graph.nearest_nodes(position, 1)[0][0])
        if d > self.start_radius_m:
            lo, hi = self.covered_bounds
            raise OutOfCoverageError(
                f"the {what} must lie within {self.start_radius_m:g} m of the database's "
                f"panoramas (covered bounding box x in [{lo[0]:.1f}, {hi[0]:.1f}], y in "
                f"[{lo[1]:.1f}, {hi[1]:.1f}] m ENU), got {np.round(position, 2).tolist()}, "
                f"{d:.1f} m from the nearest panorama; start on the covered streets."
            )

    # --- stepping -------------------------------------------------------------------------------
    def _street_height(self, xy: np.ndarray) -> np.ndarray:
        """Camera height (ENU z) at horizontal positions ``(n, 2)``, shape ``(n,)``."""
        return self.road_graph.height_at(xy) + self._height_offset

    def _references(
        self, chunk: Trajectory
    ) -> tuple[RetrievalResult, ChunkReferences, dict[str, float]]:
        """Retrieve and load the references of a chunk, timing both."""
        t0 = time.perf_counter()
        result = self.retriever.retrieve(
            chunk, self.camera, k=self.retrieval_k, exclude_traversals=self.exclude_traversals
        )
        t1 = time.perf_counter()
        refs = self.loader.load(result)
        t2 = time.perf_counter()
        return result, refs, {"retrieval": t2 - t0, "load": t2 - t1}

    def _advance(self, chunk: Trajectory, output: ChunkOutput) -> None:
        """Move the camera to the chunk's last pose and keep its frames."""
        assert self.pose is not None
        path = np.concatenate([self.pose.position[None], chunk.positions])
        metres = float(np.linalg.norm(np.diff(path, axis=0), axis=1).sum())
        self.metres_travelled += metres
        self._speed = metres / max(float(chunk.timestamps[-1]) - self.time_s, 1e-9)
        self.pose, self.time_s = chunk[len(chunk) - 1], float(chunk.timestamps[-1])
        self._last_frames = np.asarray(output.frames)

    def _step_info(self, task_info: dict[str, Any]) -> dict[str, Any]:
        record = self.last_step
        assert record is not None
        info: dict[str, Any] = {
            "references_used": len(record.output.references.views),
            "metres_travelled": self.metres_travelled,
            **task_info,
        }
        if self.goal_node is None:
            info.pop("distance_to_goal", None)  # NaN would compare unequal to itself
        if len(self.db.damaged):  # damaged views skipped so far (only once there is one)
            info["skipped_views"] = len(self.db.damaged)
        if self.full_info:
            info.update(
                pose=self.pose,
                trajectory=record.trajectory,
                retrieval=record.retrieval,
                output=record.output,
                timings=record.timings,
                model_info=record.output.info,
            )
        return info

    def _check_frames(self, frames: np.ndarray, length: int) -> None:
        expected = (length, self.camera.height, self.camera.width, 3)
        if frames.shape != expected or frames.dtype != np.uint8:
            raise ShapeMismatchError(
                f"the world model must return uint8 frames of shape {expected}, got "
                f"{frames.dtype} {frames.shape}; check its camera and chunk handling."
            )

    # --- observation ----------------------------------------------------------------------------
    def _observation_space(self) -> spaces.Dict:
        shape = (self.camera.height, self.camera.width, 3)
        if self.observe == "chunk":
            shape = (self.chunk_length, *shape)
        return spaces.Dict(
            {
                "frames": spaces.Box(0, 255, shape, np.uint8),
                "pose": spaces.Box(
                    np.array([-_FAR] * 3 + [-1.0] * 4, np.float32),
                    np.array([_FAR] * 3 + [1.0] * 4, np.float32),
                    dtype=np.float32,
                ),
                "geo": spaces.Box(
                    np.array([-90.0, -180.0]), np.array([90.0, 180.0]), dtype=np.float64
                ),
                "goal": spaces.Box(-2 * _FAR, 2 * _FAR, (3,), np.float32),
                **self._navigation_spaces(),
            }
        )

    def _navigation_spaces(self) -> dict[str, spaces.Box]:
        """Spaces of what a navigating agent needs next to the frames (see the module doc)."""
        n = _action_size(self.action_space)
        low, high = _action_bounds(self.action_space)
        return {
            "goal_direction": spaces.Box(-1.0, 1.0, (2,), np.float32),
            "goal_distance": spaces.Box(0.0, _FAR, (1,), np.float32),
            "route_direction": spaces.Box(-1.0, 1.0, (2,), np.float32),
            "speed": spaces.Box(0.0, _FAR, (1,), np.float32),
            "last_action": spaces.Box(low, high, (n,), np.float32),
        }

    def _observation(self) -> dict[str, np.ndarray]:
        assert self.pose is not None and self._last_frames is not None
        pose = self.pose
        q = quaternion.as_float_array(pose.rotation)
        lat, lon, _ = self.db.frame.enu_to_geodetic(pose.position)
        frames = self._last_frames if self.observe == "chunk" else self._last_frames[-1]
        return {
            "frames": np.ascontiguousarray(frames, dtype=np.uint8),
            "pose": np.concatenate([pose.position, q]).astype(np.float32),
            "geo": np.array([float(lat), float(lon)], dtype=np.float64),
            "goal": self._goal_vector(pose),
            **self._navigation_features(pose),
        }

    def _navigation_features(self, pose: Pose) -> dict[str, np.ndarray]:
        """Goal and route directions, distance, speed and last action (float32 arrays)."""
        goal, node = self.task.goal_position(), self.task.goal_node
        distance = self.task.distance if goal is not None else 0.0
        route = (
            self.road_graph.route_point(pose.position, node, self.route_lookahead_m)
            if node is not None
            else None
        )
        return {
            "goal_direction": _horizontal_direction(pose, goal),
            "goal_distance": np.array([min(distance, _FAR)], np.float32),
            "route_direction": _horizontal_direction(pose, route),
            "speed": np.array([min(self._speed, _FAR)], np.float32),
            "last_action": self._last_action.copy(),
        }

    def _goal_vector(self, pose: Pose) -> np.ndarray:
        goal = self.task.goal_position()
        if goal is None:
            return np.zeros(3, np.float32)
        world = goal - pose.position
        return (pose.rotation_matrix.T @ world).astype(np.float32)


def _horizontal_direction(pose: Pose, target: np.ndarray | None) -> np.ndarray:
    """Unit ``[right, forward]`` direction from the camera to ``target`` ``(3,)`` ENU in the
    camera frame (OpenCV x, z), float32 ``(2,)``; zeros without a target or on top of it."""
    if target is None:
        return np.zeros(2, np.float32)
    local = pose.rotation_matrix.T @ (np.asarray(target, np.float64) - pose.position)
    flat = np.array([local[0], local[2]])
    norm = float(np.linalg.norm(flat))
    return (flat / norm).astype(np.float32) if norm > 1e-6 else np.zeros(2, np.float32)


def _action_size(space: spaces.Space) -> int:
    """Length of :func:`_action_features` for ``space``."""
    return int(space.n) if isinstance(space, spaces.Discrete) else int(np.prod(space.shape))


def _action_bounds(space: spaces.Space) -> tuple[np.ndarray, np.ndarray]:
    """Bounds ``(n,)`` of :func:`_action_features` (the Box's own, 0 and 1 for one-hot)."""
    if isinstance(space, spaces.Discrete):
        return np.zeros(int(space.n), np.float32), np.ones(int(space.n), np.float32)
    low = np.asarray(space.low, np.float32).reshape(-1)
    return low, np.asarray(space.high, np.float32).reshape(-1)


def _action_features(space: spaces.Space, action: Any) -> np.ndarray:
    """The action as the observation's ``last_action``: one-hot for ``Discrete``, else flat."""
    if isinstance(space, spaces.Discrete):
        onehot = np.zeros(int(space.n), np.float32)
        onehot[int(np.asarray(action).reshape(())) - int(space.start)] = 1.0
        return onehot
    return np.asarray(action, np.float32).reshape(-1).copy()


# --- construction helpers -------------------------------------------------------------------------
def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise unknown_name(name, value, [str(c) for c in choices])


def _open_db(
    city_db: str | os.PathLike[str] | CityDB | None,
    city: str | None,
    town: TownSpec,
    progress: bool,
) -> CityDB:
    if isinstance(city_db, CityDB):
        return city_db
    if city_db is not None:
        return CityDB.open(city_db)
    # Every city's provider gets the town's options; only the town's uses them.
    return CityDB.open(resolve_city_db(city or "town", town, progress=progress))


def _build_progress(town: Mapping[str, Any] | TownSpec | None) -> bool:
    """The ``progress`` build option of the env's ``town=`` mapping (default True)."""
    return bool(town.get("progress", True)) if isinstance(town, Mapping) else True


def _adapter(
    mode: str,
    chunk_length: int,
    fps: float,
    max_speed: float,
    options: Mapping[str, Any] | None,
) -> ActionAdapter:
    defaults: dict[str, Any] = (
        {"speed": 0.5 * max_speed, "turn_speed": 0.25 * max_speed}
        if mode == "discrete"
        else {"max_speed": max_speed}
    )
    return make_action_adapter(mode, chunk_length, fps, **{**defaults, **dict(options or {})})


def _frame_size(width: Any, height: Any, world_model: WorldModel) -> tuple[int, int]:
    """The frame size: the given sides, the unset (``None``) ones from the world model's
    :attr:`~cityenv.worldmodel.base.WorldModel.native_size` or :data:`DEFAULT_FRAME_SIZE`."""
    native = world_model.native_size or DEFAULT_FRAME_SIZE
    return (
        int(native[0] if width is None else width),
        int(native[1] if height is None else height),
    )


def _world_model_options(
    spec: Any, city: str | None, town: TownSpec, options: Mapping[str, Any] | None
) -> Mapping[str, Any] | None:
    """``options``, with the renderer and world of the env's city for ``world_model="truth"``
    (the true renders must show the town the database was captured from)."""
    if spec != "truth":
        return options
    renderer = dict(options or {}).get("renderer", city or "town")
    defaults = {"renderer": renderer, "spec": town if renderer == "town" else None}
    return {**defaults, **dict(options or {})}


def _make_world_model(
    spec: str | WorldModel | Callable[[], WorldModel], options: Mapping[str, Any] | None
) -> WorldModel:
    # Names are looked up, never imported: cityenv.worldmodel.registry says why.
    from cityenv.worldmodel.registry import make_world_model

    return make_world_model(spec, options)


def _retriever(
    db: CityDB, retrieval: Mapping[str, Any] | None
) -> tuple[Retriever, int, tuple[str, ...]]:
    check_retrieval_options(retrieval)
    options = dict(retrieval or {})
    k = int(options.pop("k", 5))
    exclude = options.pop("exclude_traversals", ())
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    return Retriever(db, **options), k, exclude


def _height_offset(db: CityDB, camera_height: float | None) -> float:
    """ENU z to add to the references' height to put the camera ``camera_height`` above road."""
    if camera_height is None:
        return 0.0
    return float(camera_height) - estimate_reference_height(db)


def estimate_reference_height(db: CityDB, samples: int = 24) -> float:
    """Median height of the database's cameras above the road, from their depth maps.

    For a few views (spread over the database), the bottom rows around the image centre see
    the road; their depth back-projected through the view's pose gives how far below the camera
    the road lies.

    Args:
        db: The opened database.
        samples: Views to look at.

    Returns:
        Metres; :data:`DEFAULT_REFERENCE_HEIGHT_M` when no sampled view has depth there.
    """
    if len(db) == 0:
        return DEFAULT_REFERENCE_HEIGHT_M
    drops: list[np.ndarray] = []
    for view_id in np.linspace(0, len(db) - 1, min(samples, len(db))).astype(int):
        depth, camera = db.load_depth(int(view_id)), db.camera(int(view_id))
        rows = slice(int(camera.height * 0.9), camera.height)
        cols = slice(int(camera.width * 0.4), int(camera.width * 0.6) + 1)
        z = depth[rows, cols]
        # Camera-frame points: the rays through the pixel centres (z = 1) scaled by z-depth.
        pts = (camera.pixel_rays()[rows, cols] * z[..., None])[z > 0]
        if pts.size:
            pose = db.pose(int(view_id))
            drops.append(-(pts @ pose.rotation_matrix.T)[:, 2])
    if not drops:
        return DEFAULT_REFERENCE_HEIGHT_M
    return float(np.median(np.concatenate(drops)))
