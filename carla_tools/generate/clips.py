"""Target clips: what to render (planned from the config) and how (frame by frame)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from carla_tools.conditions import solar_position
from carla_tools.generate.captions import caption
from carla_tools.generate.split import AreaSplit, cell_name
from carla_tools.generate.trajectories import (
    KindParams,
    LaneGraph,
    RouteError,
    kinds_cycle,
    make_trajectory,
    trajectory_headings,
)
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.geodesy import LocalFrame
from cityenv.geometry.pose import Trajectory

_MAX_TRIES = 20  # trajectories drawn per clip before giving up on one inside a single split

# Half length, half width and height of the procedural town's actors (metres, before scale), to
# keep the camera out of them: the ego path knows nothing of the traffic on its lane.
_HALF_EXTENTS = {
    "car": (2.26, 0.9, 1.45),
    "van": (2.46, 0.98, 1.95),
    "bus": (5.51, 1.26, 3.02),
    "pedestrian": (0.24, 0.24, 1.73),
}
_CLEARANCE = 0.6  # metres kept between the camera and an actor's box


@dataclass(frozen=True)
class ClipTask:
    """One target clip to render.

    Attributes:
        clip_id: Unique id, ``clip-<index>``; also the clip's traversal id.
        index: Running number of the clip in the plan.
        kind: ``vehicle``, ``pedestrian`` or ``free``.
        seed: Seed the trajectory was drawn from (with the index).
        start_time: World time of the first frame, UTC.
        weather: Weather name.
        trajectory: ``F`` camera-to-world poses, timestamps ``0, 1/fps, ...`` seconds.
        fps: Frame rate.
        camera: Intrinsics of every frame.
        cells: Area cells the trajectory touches.
        split: ``"train"`` or ``"test"``.
    """

    clip_id: str
    index: int
    kind: str
    seed: int
    start_time: datetime
    weather: str
    trajectory: Trajectory
    fps: float
    camera: PinholeCamera
    cells: tuple[tuple[int, int], ...]
    split: str


def _draw(
    kind: str,
    graph: LaneGraph,
    num_frames: int,
    fps: float,
    rng: np.random.Generator,
    split: AreaSplit,
    params: KindParams | None,
) -> tuple[Trajectory, str]:
    """A trajectory whose area lies in one split (redrawn until it does)."""
    for _ in range(_MAX_TRIES):
        traj = make_trajectory(kind, graph, num_frames, fps, rng, params)
        which = split.split_of(traj.positions)
        if which is not None:
            return traj, which
    raise RouteError(
        f"expected a {kind} trajectory inside one split's area, got {_MAX_TRIES} that straddle "
        "train and test cells; use larger split cells or shorter clips."
    )


def plan_clips(
    graph: LaneGraph,
    split: AreaSplit,
    *,
    count: int,
    kinds: Sequence[str],
    times: Sequence[datetime],
    weathers: Sequence[str],
    num_frames: int,
    fps: float,
    camera: PinholeCamera,
    seed: int,
    time_jitter_s: float = 900.0,
    kind_params: dict[str, KindParams] | None = None,
) -> list[ClipTask]:
    """Plan ``count`` clips: kind round-robin, weather cycling, a random start time per clip.

    Args:
        graph: Lane graph of the road network.
        split: The area split (each clip lies in one split's cells).
        count: Number of clips.
        kinds: Kinds taken round-robin.
        times: Base start times (UTC); each clip picks one and adds up to ``time_jitter_s``.
        weathers: Weathers; clip ``i`` gets ``weathers[(i // len(kinds)) % len(weathers)]``.
        num_frames: Frames per clip.
        fps: Frame rate.
        camera: Intrinsics of the frames.
        seed: Seed; clip ``i`` draws from ``np.random.default_rng([seed, i])``.
        time_jitter_s: Largest random offset added to the base time, seconds.
        kind_params: Motion parameters per kind (defaults where missing).

    Returns:
        The clips, in index order (the plan is the same on every machine for one config).
    """
    if not times or not weathers:
        raise ValueError(f"need at least one time and one weather, got {times} and {weathers}.")
    tasks = []
    for i, kind in enumerate(kinds_cycle(list(kinds), count)):
        rng = np.random.default_rng([seed, i])
        params = (kind_params or {}).get(kind)
        traj, which = _draw(kind, graph, num_frames, fps, rng, split, params)
        start = times[int(rng.integers(len(times)))]
        start = start + timedelta(seconds=float(rng.uniform(0.0, time_jitter_s)))
        weather = weathers[(i // len(kinds)) % len(weathers)]
        cells = tuple(split.area(traj.positions))
        tasks.append(
            ClipTask(
                f"clip-{i:05d}", i, kind, seed, start, weather, traj, fps, camera, cells, which
            )
        )
    return tasks


def _inside_actor(rows: dict[str, np.ndarray], position: np.ndarray) -> bool:
    """Whether a camera at ``position`` ``(3,)`` is within :data:`_CLEARANCE` of an actor's box.

    Args:
        rows: Kind -> ``(M, 11)`` actor rows ``x, y, z, yaw, ..., scale`` (ENU, yaw in radians
            counter-clockwise from east).
        position: Camera centre, ENU metres.
    """
    for kind, r in rows.items():
        if kind not in _HALF_EXTENTS or len(r) == 0:
            continue
        hx, hy, hz = (np.array(_HALF_EXTENTS[kind])[:, None] * r[:, 10]) + _CLEARANCE
        dx, dy = position[0] - r[:, 0], position[1] - r[:, 1]
        along = dx * np.cos(r[:, 3]) + dy * np.sin(r[:, 3])
        across = -dx * np.sin(r[:, 3]) + dy * np.cos(r[:, 3])
        above = position[2] - r[:, 2]
        if np.any((np.abs(along) < hx) & (np.abs(across) < hy) & (above < hz)):
            return True
    return False


def clear_start_time(sim: Any, task: ClipTask, tries: int = 30, step_s: float = 13.0) -> datetime:
    """A start time near the planned one at which the camera never enters a moving actor.

    Tries ``start + k * step_s`` for ``k = 0 .. tries - 1`` and keeps the first whose every frame
    is clear (else the one with the fewest blocked frames). Backends without
    ``actor_instances()`` keep the planned time.

    Args:
        sim: The simulator (the procedural town exposes its actors' positions).
        task: The clip.
        tries: Start times tried.
        step_s: Seconds between tried start times.
    """
    if not hasattr(sim, "actor_instances"):
        return task.start_time
    best, best_blocked = task.start_time, len(task.trajectory) + 1
    for k in range(tries):
        start = task.start_time + timedelta(seconds=k * step_s)
        blocked = 0
        for i, position in enumerate(task.trajectory.positions):
            sim.set_time(start + timedelta(seconds=i / task.fps))
            blocked += _inside_actor(sim.actor_instances(), position)
        if blocked < best_blocked:
            best, best_blocked = start, blocked
        if blocked == 0:
            break
    return best


def render_clip(sim: Any, task: ClipTask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render every frame of a clip, advancing the world clock by ``1 / fps`` per frame.

    Args:
        sim: A :class:`~carla_tools.sim.Simulator`.
        task: The clip.

    Returns:
        ``(rgb, depth, dynamic)``: ``(F, H, W, 3)`` uint8, ``(F, H, W)`` float32 metres,
        ``(F, H, W)`` bool.
    """
    sim.set_weather(task.weather)
    sim.set_time(task.start_time)
    rgb, depth, dynamic = [], [], []
    for i, pose in enumerate(task.trajectory):
        if i:
            sim.advance(1.0 / task.fps)
        frame = sim.render(task.camera, pose)
        rgb.append(frame[0])
        depth.append(frame[1])
        dynamic.append(frame[2])
    return np.stack(rgb), np.stack(depth), np.stack(dynamic)


def clip_meta(task: ClipTask, frame: LocalFrame) -> dict[str, Any]:
    """The clip's index row (see :data:`cityenv.citydb.clips.INDEX_SCHEMA`)."""
    elevation, _ = solar_position(task.start_time, frame.lat, frame.lon)
    t = task.start_time
    local_hour = (t.hour + t.minute / 60 + frame.lon / 15.0) % 24.0
    headings = trajectory_headings(task.trajectory)
    xy = task.trajectory.positions[:, :2]
    cam = task.camera
    return {
        "clip_id": task.clip_id,
        "kind": task.kind,
        "split": task.split,
        "traversal_id": task.clip_id,
        "start_time": task.start_time,
        "weather": task.weather,
        "caption": caption(task.kind, task.weather, elevation, local_hour, headings),
        "num_frames": len(task.trajectory),
        "fps": float(task.fps),
        "width": cam.width,
        "height": cam.height,
        "fx": cam.fx,
        "fy": cam.fy,
        "cx": cam.cx,
        "cy": cam.cy,
        "cells": [cell_name(c) for c in task.cells],
        "xmin": float(xy[:, 0].min()),
        "ymin": float(xy[:, 1].min()),
        "xmax": float(xy[:, 0].max()),
        "ymax": float(xy[:, 1].max()),
        "seed": int(task.seed),
    }
