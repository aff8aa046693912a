"""Street-view reference captures along every lane centre.

A capture is :data:`NUM_VIEWS` level pinhole views of 90 degrees at 45-degree heading steps from
one point at camera height, the first view looking along the lane. Points lie every
``spacing_m`` metres along each lane centre; a point closer than ``dedupe_m`` (default
``0.7 * spacing_m``) to one already kept (from a parallel lane of the same road, or the opposite
direction) is dropped, so two-way roads of up to two lanes per direction get about one capture
per ``spacing_m`` of road rather than one per lane (the outer lanes of wider roads keep theirs).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from scipy.spatial import cKDTree

from carla_tools.generate.split import AreaSplit, cell_name, reference_traversal
from carla_tools.generate.trajectories import LaneGraph, headings_deg, resample
from cityenv.geometry.pose import Pose

NUM_VIEWS = 8
"""Views per reference capture."""


@dataclass(frozen=True)
class ReferencePoint:
    """Where one street-view capture is taken.

    Attributes:
        index: Running number of the point (stable for a network and spacing).
        position: Camera centre, ENU ``(3,)`` metres.
        heading_deg: Heading of the first view (the lane direction), degrees clockwise from north.
        lane: Lane id the point was placed on.
    """

    index: int
    position: np.ndarray
    heading_deg: float
    lane: int


@dataclass(frozen=True)
class ReferenceTask:
    """One capture to render: a point at one capture time.

    Attributes:
        panorama_id: Unique id in the CityDB, ``ref-<time tag>-<index>``.
        traversal_id: ``ref-<time tag>-<split>`` (see :mod:`carla_tools.generate.split`).
        time: World (capture) time, UTC.
        weather: Weather name.
        point: The capture point.
        cell: Area cell ``(ix, iy)`` of the point.
        split: ``"train"`` or ``"test"``.
    """

    panorama_id: str
    traversal_id: str
    time: datetime
    weather: str
    point: ReferencePoint
    cell: tuple[int, int]
    split: str

    @property
    def source(self) -> str:
        """Provenance string stored with each view: generator, cell and split."""
        return f"carla_tools.generate cell={cell_name(self.cell)} split={self.split}"


def reference_points(
    graph: LaneGraph, spacing_m: float, camera_height: float, dedupe_m: float | None = None
) -> list[ReferencePoint]:
    """Capture points every ``spacing_m`` metres along every lane, deduplicated.

    Args:
        graph: Lane graph of the road network.
        spacing_m: Distance between points along a lane, metres.
        camera_height: Camera height above the road surface, metres.
        dedupe_m: Drop a point closer than this to a kept one; ``0.7 * spacing_m`` if None.

    Returns:
        The kept points in lane order.
    """
    if spacing_m <= 0:
        raise ValueError(f"spacing_m must be > 0, got {spacing_m}.")
    radius = 0.7 * spacing_m if dedupe_m is None else dedupe_m
    kept: list[ReferencePoint] = []
    kept_xy: list[np.ndarray] = []
    for lane, wp in enumerate(graph.waypoints):
        pts = resample(wp, spacing_m)
        heads = _lane_headings(wp, pts)
        tree = cKDTree(np.array(kept_xy)) if kept_xy else None
        for p, h in zip(pts, heads, strict=True):
            if tree is not None and tree.query(p[:2])[0] < radius:
                continue
            if any(np.linalg.norm(p[:2] - q) < radius for q in kept_xy[-64:]):
                continue  # points of this lane added since the tree was built
            kept_xy.append(p[:2])
            pos = p + np.array([0.0, 0.0, camera_height])
            kept.append(ReferencePoint(len(kept), pos, float(h), lane))
    return kept


def _lane_headings(waypoints: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Lane heading (degrees) at each of ``points`` ``(P, 3)``, from the nearest waypoint."""
    tangents = np.diff(waypoints, axis=0)
    tangents = np.concatenate([tangents, tangents[-1:]])
    nearest = np.linalg.norm(points[:, None, :2] - waypoints[None, :, :2], axis=-1).argmin(axis=1)
    return headings_deg(tangents[nearest])


def time_tag(when: datetime) -> str:
    """Compact UTC tag of a time for ids, e.g. ``20240501T0300Z``."""
    return when.strftime("%Y%m%dT%H%MZ")


def reference_tasks(
    points: list[ReferencePoint], times: list[datetime], weather: str, split: AreaSplit
) -> list[ReferenceTask]:
    """One task per point and capture time (the CityDB holds every point at every time)."""
    tasks = []
    for when in times:
        tag = time_tag(when)
        for p in points:
            cell = tuple(int(c) for c in split.area(p.position[None])[0])
            which = split.split_of_cell(cell)
            tasks.append(
                ReferenceTask(
                    panorama_id=f"ref-{tag}-{p.index:05d}",
                    traversal_id=reference_traversal(tag, which),
                    time=when,
                    weather=weather,
                    point=p,
                    cell=cell,
                    split=which,
                )
            )
    return tasks


def view_poses(point: ReferencePoint, num_views: int = NUM_VIEWS) -> list[Pose]:
    """Camera-to-world poses of a capture's views, headings increasing clockwise."""
    step = 360.0 / num_views
    return [
        Pose.from_heading(point.position, (point.heading_deg + k * step) % 360.0)
        for k in range(num_views)
    ]


def road_length(points: list[ReferencePoint], spacing_m: float) -> float:
    """Road length the captures cover, metres (points times spacing)."""
    return len(points) * spacing_m
