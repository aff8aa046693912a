"""Fixtures for the CityDB tests: synthetic views and index-only databases.

The suite runs with ``--import-mode=importlib``, so test modules cannot import a helper module;
the helpers reach them through the ``tools`` fixture instead.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import quaternion

from cityenv.citydb.format import ViewRecords, to_utc_micros
from cityenv.citydb.writer import CityDBWriter
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.geodesy import LocalFrame
from cityenv.geometry.pose import Pose

FRAME = LocalFrame(37.5665, 126.9780, 30.0)
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def small_camera() -> PinholeCamera:
    """A 16x12 camera with a 90-degree horizontal field of view."""
    return PinholeCamera.from_fov(16, 12, 90.0)


def random_view(rng: np.random.Generator, camera: PinholeCamera) -> tuple[np.ndarray, np.ndarray]:
    """A random RGB image ``(H, W, 3)`` uint8 and depth ``(H, W)`` float32 (some zeros)."""
    image = rng.integers(0, 256, (camera.height, camera.width, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 120.0, camera.shape).astype(np.float32)
    depth[rng.random(camera.shape) < 0.1] = 0.0
    return image, depth


def add_random_panorama(
    writer: CityDBWriter,
    rng: np.random.Generator,
    camera: PinholeCamera,
    panorama_id: str,
    position: np.ndarray,
    traversal: str = "t0",
    time: datetime = T0,
) -> list[int]:
    """Add an 8-view panorama of random pixels at ``position`` (ENU)."""
    pairs = [random_view(rng, camera) for _ in range(8)]
    return writer.add_panorama(
        panorama_id=panorama_id,
        images=[p[0] for p in pairs],
        depths=[p[1] for p in pairs],
        cameras=camera,
        poses=[Pose.from_heading(position, 45.0 * k) for k in range(8)],
        traversal_id=traversal,
        capture_time=time,
        source="test",
    )


def yaw_wxyz(heading_deg: np.ndarray) -> np.ndarray:
    """wxyz quaternions ``(N, 4)`` of level cameras along compass headings ``(N,)``."""
    base = Pose.from_heading(np.zeros(3), 0.0).rotation
    turn = quaternion.from_rotation_vector(
        np.radians(-np.asarray(heading_deg, float))[:, None] * [0.0, 0.0, 1.0]
    )  # heading h = a turn of -h about world up, applied after the heading-0 rotation
    return quaternion.as_float_array(turn * base)


def view_records(
    panorama_positions: np.ndarray,
    view_panorama: np.ndarray,
    view_headings: np.ndarray,
    camera: PinholeCamera,
    traversals: list[str] | None = None,
    times_us: np.ndarray | None = None,
) -> ViewRecords:
    """Index-only rows (no blobs): panorama ``i`` is ``"p<i>"``, every view at its panorama.

    Args:
        panorama_positions: ``(P, 3)`` ENU positions.
        view_panorama: ``(V,)`` panorama row (0..P-1) of each view (any order).
        view_headings: ``(V,)`` compass headings of the views.
        camera: The views' intrinsics.
        traversals: ``P`` traversal ids (default ``"t0"``).
        times_us: ``(P,)`` capture times in microseconds (default ``T0``).
    """
    count = panorama_positions.shape[0]
    return ViewRecords(
        panorama_ids=[f"p{i}" for i in range(count)],
        traversal_ids=traversals or ["t0"] * count,
        capture_times=np.full(count, to_utc_micros(T0)) if times_us is None else times_us,
        panorama_positions=panorama_positions,
        view_panorama=view_panorama,
        wxyz=yaw_wxyz(view_headings),
        cameras=camera,
        source="index",
    )


def build_index_db(
    path: Path,
    panorama_positions: np.ndarray,
    view_panorama: np.ndarray,
    view_headings: np.ndarray,
    camera: PinholeCamera,
    traversals: list[str] | None = None,
    times_us: np.ndarray | None = None,
) -> Path:
    """Write an index-only database in one part through ``CityDBWriter.append_views``."""
    records = view_records(
        panorama_positions, view_panorama, view_headings, camera, traversals, times_us
    )
    with CityDBWriter(path, city="test", frame=FRAME) as writer:
        writer.append_views(records)
    return path


def eight_view_layout(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(view_panorama (8P,), view_headings (8P,))`` for ``count`` 8-view panoramas."""
    view_panorama = np.repeat(np.arange(count), 8)
    headings = rng.uniform(0, 360, count)[view_panorama] + 45.0 * np.tile(np.arange(8), count)
    return view_panorama, headings % 360.0


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


@pytest.fixture
def frame() -> LocalFrame:
    return FRAME


@pytest.fixture
def camera() -> PinholeCamera:
    return small_camera()


@pytest.fixture
def tools() -> SimpleNamespace:
    """The helpers above as a namespace (``tools.add_random_panorama(...)``)."""
    return SimpleNamespace(
        FRAME=FRAME,
        T0=T0,
        small_camera=small_camera,
        random_view=random_view,
        add_random_panorama=add_random_panorama,
        yaw_wxyz=yaw_wxyz,
        view_records=view_records,
        build_index_db=build_index_db,
        eight_view_layout=eight_view_layout,
        hours=hours,
    )
