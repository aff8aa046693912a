"""Fixtures for the CityDB tests: synthetic views and index-only databases.

The suite runs with ``--import-mode=importlib``, so test modules cannot import a helper module;
the helpers reach them through the ``tools`` fixture instead.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import quaternion

from cityenv.citydb import format as fmt
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


def index_tables(
    first_view: int,
    first_panorama: int,
    panorama_positions: np.ndarray,
    view_panorama: np.ndarray,
    view_headings: np.ndarray,
    camera_index: int,
    camera: PinholeCamera,
    traversals: list[str] | None = None,
    times_us: np.ndarray | None = None,
) -> tuple[pa.Table, pa.Table]:
    """Index-only view/panorama tables (no blobs).

    Args:
        first_view: Id of the first view row.
        first_panorama: Index of the first panorama row.
        panorama_positions: ``(P, 3)`` ENU positions.
        view_panorama: ``(V,)`` local panorama index (0..P-1) of each view (any order).
        view_headings: ``(V,)`` compass headings of the views.
        camera_index: From ``writer.register_camera(camera)``.
        camera: The views' intrinsics.
        traversals: ``P`` traversal ids (default ``"t0"``).
        times_us: ``(P,)`` capture times in microseconds (default ``T0``).
    """
    count, views = panorama_positions.shape[0], view_panorama.shape[0]
    traversals = traversals or ["t0"] * count
    if times_us is None:
        times_us = np.full(count, int(T0.timestamp() * 1_000_000), np.int64)
    stamp = pa.array(np.asarray(times_us, np.int64)).cast(pa.timestamp("us", tz="UTC"))
    lat, lon, height = FRAME.enu_to_geodetic(panorama_positions)
    pano_index = np.arange(first_panorama, first_panorama + count, dtype=np.int32)
    panoramas = pa.table(
        {
            "panorama_index": pano_index,
            "panorama_id": [f"p{i}" for i in pano_index],
            "traversal_id": traversals,
            "capture_time": stamp,
            "lat": np.atleast_1d(lat),
            "lon": np.atleast_1d(lon),
            "height": np.atleast_1d(height),
            "x": panorama_positions[:, 0],
            "y": panorama_positions[:, 1],
            "z": panorama_positions[:, 2],
        }
    )
    q = yaw_wxyz(view_headings) if views else np.zeros((0, 4))
    pos = panorama_positions[view_panorama]
    order = np.argsort(view_panorama, kind="stable")
    starts = np.searchsorted(view_panorama[order], view_panorama[order])
    view_index = np.empty(views, np.int16)
    view_index[order] = np.arange(views) - starts  # position of each view within its panorama
    columns = {
        "view_id": np.arange(first_view, first_view + views, dtype=np.int64),
        "panorama_index": pano_index[view_panorama],
        "view_index": view_index,
        "panorama_id": [f"p{pano_index[p]}" for p in view_panorama],
        "traversal_id": [traversals[p] for p in view_panorama],
        "capture_time": stamp.take(pa.array(view_panorama, pa.int64())),
        "lat": np.atleast_1d(lat)[view_panorama],
        "lon": np.atleast_1d(lon)[view_panorama],
        "height": np.atleast_1d(height)[view_panorama],
        "x": pos[:, 0],
        "y": pos[:, 1],
        "z": pos[:, 2],
        "qw": q[:, 0],
        "qx": q[:, 1],
        "qy": q[:, 2],
        "qz": q[:, 3],
        "camera_index": np.full(views, camera_index, np.int32),
        "image_width": np.full(views, camera.width, np.int32),
        "image_height": np.full(views, camera.height, np.int32),
        "fx": np.full(views, camera.fx),
        "fy": np.full(views, camera.fy),
        "cx": np.full(views, camera.cx),
        "cy": np.full(views, camera.cy),
        "source": ["index"] * views,
        **{name: np.zeros(views, np.int64) for name in fmt.BLOB_COLUMNS},
    }
    return pa.table(columns), panoramas


def build_index_db(
    path: Path,
    panorama_positions: np.ndarray,
    view_panorama: np.ndarray,
    view_headings: np.ndarray,
    camera: PinholeCamera,
    traversals: list[str] | None = None,
    times_us: np.ndarray | None = None,
) -> Path:
    """Write an index-only database in one part through ``CityDBWriter.append_index``."""
    with CityDBWriter(path, city="test", frame=FRAME) as writer:
        cam = writer.register_camera(camera)
        writer.append_index(
            *index_tables(
                0,
                0,
                panorama_positions,
                view_panorama,
                view_headings,
                cam,
                camera,
                traversals,
                times_us,
            )
        )
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
        index_tables=index_tables,
        build_index_db=build_index_db,
        eight_view_layout=eight_view_layout,
        hours=hours,
    )
