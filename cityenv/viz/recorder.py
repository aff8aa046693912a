"""``RerunRecorder``: a Gymnasium wrapper that records a CityWorld env to Rerun.

Usage::

    env = RerunRecorder(gymnasium.make("CityWorld-Town-v0"), "run.rrd")
    obs, info = env.reset(seed=0)
    for _ in range(100):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    env.close()  # flushes the file

then ``rerun run.rrd``. Each reset and step is logged from the observation and ``info`` (keys
``"pose"``, ``"trajectory"``, ``"output"``, ``"references_used"``, ``"distance_to_goal"``,
``"progress_m"``); without the heavy keys (CityWorldEnv's ``full_info=False``, the default) the
trajectory and output come from the env's ``last_step`` record and the pose from ``env.pose``.
Geodetic positions come from the env's ``db.frame``. Timelines: ``step``
(a reset and every step advance it by one, across episodes), ``frame`` (every generated frame,
the reset frame included) and ``sim_time`` (episode seconds, later episodes shifted after the
earlier ones).
"""

from __future__ import annotations

import os
import time
from typing import Any, SupportsFloat

import gymnasium
import numpy as np
import rerun as rr

from cityenv.errors import ShapeMismatchError
from cityenv.geometry.geodesy import LocalFrame
from cityenv.geometry.pose import Pose, Trajectory
from cityenv.viz import log as L
from cityenv.viz.blueprint import default_blueprint
from cityenv.worldmodel.base import ChunkOutput, ChunkReferences
from cityenv.worldmodel.referencing import ReferenceView

__all__ = ["RerunRecorder"]

_MAX_PATH_POINTS = 2048  # the logged path (3D and map) is thinned to about this many points


def _chunk_frames(obs: Any) -> np.ndarray | None:
    """The frames of an observation as uint8 ``(L, H, W, 3)`` (``L = 1`` for one frame)."""
    frames = obs.get("frames") if isinstance(obs, dict) else obs
    if not isinstance(frames, np.ndarray) or frames.ndim not in (3, 4):
        return None
    return frames[None] if frames.ndim == 3 else frames


def _nearest_view(refs: ChunkReferences) -> ReferenceView | None:
    """The reference nearest to the chunk's last frame (the newest pose), else the best one."""
    valid = [int(i) for i in np.asarray(refs.per_frame) if 0 <= int(i) < len(refs.views)]
    if valid:
        return refs.views[valid[-1]]
    return refs.views[0] if refs.views else None


class RerunRecorder(gymnasium.Wrapper):
    """Records every reset and step of a CityWorld env to an ``.rrd`` file and/or a live viewer.

    Args:
        env: A CityWorld env (possibly wrapped), or any env whose ``info`` carries the keys above.
        path: ``.rrd`` file to write; ``None`` for none.
        spawn: Also (or only) stream to a Rerun viewer started on this machine.
        application_id: Rerun application id.
        recording: Log into this recording stream instead of making one (its sinks are left as
            they are; ``path`` and ``spawn`` are then ignored).
        jpeg_quality: JPEG quality of generated frames, warps and references (1-100); ``None``
            logs raw pixels (cheaper to log, about 10x bigger files).
        depth_stride: Pixel stride of the nearest reference's depth points.
        log_warps: Log the world model's warps and masks (about a third of the logging cost).
        num_references: Reference slots in the default blueprint; ``None`` = the env's
            ``retrieval_k`` (5 if it has none).

    Attributes:
        recording: The :class:`rerun.RecordingStream` written to.
        log_seconds: Wall time spent logging each step, seconds (the recorder's overhead).

    Raises:
        ValueError: If neither ``path``, ``spawn`` nor ``recording`` says where to record.
    """

    def __init__(
        self,
        env: gymnasium.Env,
        path: str | os.PathLike | None = "run.rrd",
        *,
        spawn: bool = False,
        application_id: str = "cityenv",
        recording: rr.RecordingStream | None = None,
        jpeg_quality: int | None = 85,
        depth_stride: int = 4,
        log_warps: bool = True,
        num_references: int | None = None,
    ) -> None:
        super().__init__(env)
        if recording is None and path is None and not spawn:
            raise ValueError(
                "RerunRecorder needs somewhere to record, got path=None and spawn=False; pass "
                "path='run.rrd', spawn=True or recording=rr.RecordingStream(...)."
            )
        self.jpeg_quality = jpeg_quality
        self.depth_stride = int(depth_stride)
        self.log_warps = bool(log_warps)
        self.log_seconds: list[float] = []
        if num_references is None:
            num_references = int(getattr(env.unwrapped, "retrieval_k", 5))
        self.recording = recording or self._open(application_id, path, spawn, num_references)
        self._step = -1
        self._frame = -1
        self._time_offset = 0.0
        self._last_time = -1.0
        self._path: list[np.ndarray] = []
        self._slots: list[int | None] = []
        self._sink_id: int | None = None
        self._depth_id: int | None = None
        self._closed = False
        L.log_world(self.recording)
        self._calibrated = self._log_calibration()

    # --- setup --------------------------------------------------------------------------------
    @staticmethod
    def _open(
        application_id: str, path: str | os.PathLike | None, spawn: bool, num_references: int
    ) -> rr.RecordingStream:
        """A new recording stream with its sinks: a file, a spawned viewer, or both."""
        rec = rr.RecordingStream(application_id)
        blueprint = default_blueprint(num_references)
        if spawn and path is not None:
            rec.spawn(connect=False)
            rec.set_sinks(rr.GrpcSink(), rr.FileSink(os.fspath(path)), default_blueprint=blueprint)
        elif spawn:
            rec.spawn(default_blueprint=blueprint)
        else:
            rec.save(os.fspath(path), default_blueprint=blueprint)
        return rec

    def _log_calibration(self) -> bool:
        """Log the env's camera intrinsics, static, if it has a ``camera``; True if it did."""
        camera = getattr(self.env.unwrapped, "camera", None)
        if camera is None:
            return False
        L.log_calibration(self.recording, camera)
        return True

    @property
    def _geo_frame(self) -> LocalFrame | None:
        """The city's ENU frame from the env's database, if it has one."""
        return getattr(getattr(self.env.unwrapped, "db", None), "frame", None)

    # --- gymnasium ----------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the env and log the start: pose, first frame, route; clears the references."""
        obs, info = self.env.reset(seed=seed, options=options)
        start = time.perf_counter()
        self._log_reset(obs, info)
        self.log_seconds.append(time.perf_counter() - start)
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the env and log the chunk: frames, poses, warps, references, map, scalars."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        start = time.perf_counter()
        self._log_step(obs, float(reward), info)
        self.log_seconds.append(time.perf_counter() - start)
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        """Flush and close the recording, then close the env."""
        if not self._closed:
            self._closed = True
            self.recording.flush()
            self.recording.disconnect()
        super().close()

    # --- logging ------------------------------------------------------------------------------
    def _current_pose(self, info: dict[str, Any]) -> Pose | None:
        pose = info.get("pose")
        return pose if isinstance(pose, Pose) else getattr(self.env.unwrapped, "pose", None)

    def _chunk(self, info: dict[str, Any]) -> tuple[Trajectory | None, ChunkOutput | None]:
        """The step's trajectory and world-model output (``info``, else the env's ``last_step``)."""
        record = getattr(self.env.unwrapped, "last_step", None)
        trajectory = info.get("trajectory", getattr(record, "trajectory", None))
        output = info.get("output", getattr(record, "output", None))
        return trajectory, output

    def _log_reset(self, obs: Any, info: dict[str, Any]) -> None:
        rec = self.recording
        self._step += 1
        self._frame += 1
        self._time_offset = self._last_time + 1.0 if self._last_time >= 0 else 0.0
        self._last_time = self._time_offset
        L.set_time(rec, step=self._step, frame=self._frame, sim_time=self._time_offset)
        if not self._calibrated:
            self._calibrated = self._log_calibration()
        pose = self._current_pose(info)
        frames = _chunk_frames(obs)
        self._path = []
        if pose is not None:
            L.log_pose(rec, pose)
            self._path = [pose.position]
            L.log_path(rec, np.stack(self._path))
        if frames is not None:
            L.log_image(rec, frames[-1], jpeg_quality=self.jpeg_quality)
        self._log_references(None)
        self._log_geo(obs)
        self._log_route(pose)
        L.log_scalars(rec, {"distance_to_goal": info.get("distance_to_goal")})

    def _log_step(self, obs: Any, reward: float, info: dict[str, Any]) -> None:
        rec = self.recording
        self._step += 1
        L.set_time(rec, step=self._step)
        trajectory, output = self._chunk(info)
        self._log_frames(obs, output, trajectory, info)
        L.log_path(rec, np.stack(self._path), max_points=_MAX_PATH_POINTS)
        self._log_references(output.references if output is not None else None)
        self._log_geo(obs)
        scalars = {"reward": reward, "references_used": info.get("references_used")}
        scalars.update({k: info.get(k) for k in ("progress_m", "distance_to_goal")})
        L.log_scalars(rec, scalars)

    def _log_frames(
        self,
        obs: Any,
        output: ChunkOutput | None,
        trajectory: Trajectory | None,
        info: dict[str, Any],
    ) -> None:
        """Log the chunk's frames, poses, warps and masks, each frame at its own time.

        Raises:
            ShapeMismatchError: If the frames and the trajectory differ in length.
        """
        frames = output.frames if output is not None else _chunk_frames(obs)
        if trajectory is None:  # an env without a trajectory: hold the current pose
            pose = self._current_pose(info)
            n = len(frames) if frames is not None else 1
            times = self._last_time - self._time_offset + 0.1 * np.arange(1, n + 1)
            trajectory = Trajectory.from_poses([pose] * n, times) if pose is not None else None
        else:
            times = np.asarray(trajectory.timestamps)
        if frames is not None and len(frames) != len(times):
            raise ShapeMismatchError(
                f"the chunk has {len(frames)} frames but its trajectory {len(times)} poses; "
                "info['output'].frames and info['trajectory'] must have the same length L."
            )
        indexes = L.frame_indexes(self._step, self._frame + 1, self._time_offset + times)
        self._frame += len(times)
        self._last_time = float(self._time_offset + times[-1])
        rec, quality = self.recording, self.jpeg_quality
        if trajectory is not None:
            L.log_poses(rec, trajectory, indexes)
            self._extend_path(trajectory.positions)
        if frames is not None:
            L.log_images(rec, frames, indexes, jpeg_quality=quality)
        if self.log_warps and output is not None and output.warps is not None:
            L.log_images(rec, output.warps, indexes, L.WARP_IMAGE, jpeg_quality=quality)
        if self.log_warps and output is not None and output.masks is not None:
            L.log_masks(rec, output.masks, indexes)
        L.set_time(rec, step=self._step, frame=self._frame, sim_time=self._last_time)

    def _extend_path(self, positions: np.ndarray) -> None:
        """Append ENU positions ``(n, 3)`` to the episode's path, thinning it when it gets long."""
        self._path.extend(positions)
        if len(self._path) > 4 * _MAX_PATH_POINTS:
            self._path = list(L.decimate(np.stack(self._path), _MAX_PATH_POINTS))

    def _log_references(self, refs: ChunkReferences | None) -> None:
        """Log the chunk's reference slots, sink and nearest depth, skipping unchanged ones."""
        rec = self.recording
        views = refs.views if refs is not None else []
        before = list(self._slots)
        self._slots = L.log_references(rec, views, self._slots, jpeg_quality=self.jpeg_quality)
        frame = self._geo_frame
        if frame is not None and self._slots != before and views:
            positions = np.stack([v.pose.position for v in views])
            L.log_geo_points(
                rec, L.lat_lon(frame, positions), L.MAP_REFERENCES, color=L.REFERENCE_COLOR
            )
        elif not views and before:
            rec.log(L.MAP_REFERENCES, rr.Clear(recursive=False))
        self._log_sink(refs.sink if refs is not None else None)
        nearest = _nearest_view(refs) if refs is not None else None
        nearest_id = nearest.view_id if nearest is not None else None
        if nearest_id != self._depth_id:
            L.log_reference_depth(rec, nearest, stride=self.depth_stride)
            self._depth_id = nearest_id

    def _log_sink(self, sink: ReferenceView | None) -> None:
        sink_id = sink.view_id if sink is not None else None
        if sink_id == self._sink_id:
            return
        if sink is None:
            L.clear_reference(self.recording, L.SINK)
        else:
            L.log_reference(
                self.recording, sink, L.SINK, color=L.SINK_COLOR, jpeg_quality=self.jpeg_quality
            )
        self._sink_id = sink_id

    def _log_geo(self, obs: Any) -> None:
        """The ego position and the driven path on the map."""
        frame = self._geo_frame
        if frame is not None and self._path:
            geo = L.lat_lon(frame, L.decimate(np.stack(self._path), _MAX_PATH_POINTS))
            L.log_geo_points(self.recording, geo[-1:])
            if len(geo) > 1:
                L.log_geo_line(self.recording, geo)
        elif isinstance(obs, dict) and obs.get("geo") is not None:
            L.log_geo_points(self.recording, np.asarray(obs["geo"], np.float64).reshape(1, 2))

    def _log_route(self, pose: Pose | None) -> None:
        """The planned route from the start to the goal node, if the env has a road graph."""
        env = self.env.unwrapped
        graph, goal = getattr(env, "road_graph", None), getattr(env, "goal_node", None)
        if graph is None or goal is None or pose is None:
            for path in (L.ROUTE, L.MAP_ROUTE, L.MAP_GOAL):
                self.recording.log(path, rr.Clear(recursive=False))
            return
        nodes = graph.shortest_path(graph.nearest_node(pose.position), int(goal))
        route = np.concatenate([pose.position[None], graph.positions[nodes]])
        L.log_path(self.recording, route, L.ROUTE, color=L.ROUTE_COLOR)
        frame = self._geo_frame
        if frame is not None:
            geo = L.lat_lon(frame, route)
            L.log_geo_line(self.recording, geo, L.MAP_ROUTE, color=L.ROUTE_COLOR)
            L.log_geo_points(self.recording, geo[-1:], L.MAP_GOAL, color=L.ROUTE_COLOR)
