"""Rendering of the procedural town through headless EGL (Mesa llvmpipe works without a GPU)."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from carla_tools.town.meshes import Material, quads
from carla_tools.town.renderer import TownRenderer
from carla_tools.town.sky import lighting
from carla_tools.town.town import ProceduralTown
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose

NOON = datetime(2024, 5, 1, 3, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def town():
    with ProceduralTown(seed=3, blocks=(2, 2)) as t:
        yield t


def _lane_view(town, pitch_deg=0.0, height=1.6):
    lane = next(lane for lane in town.road_network().lanes if lane.entry >= 0 and lane.exit >= 0)
    i = len(lane.waypoints) // 4
    d = lane.waypoints[i + 1] - lane.waypoints[i]
    heading = np.degrees(np.arctan2(d[0], d[1]))
    return lane, Pose.from_heading(lane.waypoints[i] + [0, 0, height], heading, pitch_deg)


def test_same_seed_renders_identically(town):
    camera = PinholeCamera.from_fov(96, 64, 90.0)
    _, pose = _lane_view(town)
    town.set_time(NOON)
    first = town.render(camera, pose)
    with ProceduralTown(seed=3, blocks=(2, 2)) as again:
        again.set_time(NOON)
        second = again.render(camera, pose)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    rgb, depth, dynamic = first
    assert rgb.shape == (64, 96, 3) and rgb.dtype == np.uint8
    assert depth.shape == (64, 96) and depth.dtype == np.float32 and dynamic.dtype == bool


def test_rendered_quad_covers_exactly_the_projected_pixels():
    # off-centre principal point and non-square pixels exercise every term of the projection
    camera = PinholeCamera(80, 60, fx=50.0, fy=45.0, cx=37.3, cy=33.9)
    pose = Pose.from_heading([1.0, -2.0, 1.5], 20.0, pitch_deg=5.0, roll_deg=3.0)
    forward, right, down = (
        pose.rotation_matrix[:, 2],
        pose.rotation_matrix[:, 0],
        pose.rotation_matrix[:, 1],
    )
    centre = pose.position + 6.0 * forward
    corners = np.array(
        [
            centre + a * right + b * down
            for a, b in [(-1.3, -0.9), (1.1, -1.0), (1.2, 0.8), (-1.0, 1.1)]
        ]
    )
    renderer = TownRenderer()
    try:
        renderer.set_static(
            quads(corners[None], -forward, [1.0, 1.0, 1.0], params=[Material.PLAIN, 0, 0, 0])
        )
        _, depth, _ = renderer.render(camera, pose.matrix, lighting(45.0, 180.0, "clear"))
    finally:
        renderer.release()
    uv, _ = camera.project(pose.inverse().transform_points(corners))
    u, v = np.meshgrid(np.arange(80) + 0.5, np.arange(60) + 0.5)
    edges = np.roll(uv, -1, axis=0) - uv
    signed = [
        (e[0] * (v - p[1]) - e[1] * (u - p[0])) / np.linalg.norm(e)
        for p, e in zip(uv, edges, strict=True)
    ]
    signed = np.stack(signed)  # distance of each pixel centre to each edge, in pixels
    orient = np.sign(signed.sum())
    inside = np.all(orient * signed > 0, axis=0)
    clear = np.all(np.abs(signed) > 1e-3, axis=0)  # pixel centres on an edge may go either way
    assert inside.sum() > 200
    np.testing.assert_array_equal((depth > 0)[clear], inside[clear])


def test_flat_road_depth_matches_the_plane(town):
    town.set_time(NOON)
    camera = PinholeCamera.from_fov(128, 96, 90.0)
    lane, pose = _lane_view(town, pitch_deg=-35.0, height=1.6)
    with ProceduralTown(seed=3, blocks=(2, 2), vehicle_density=0, pedestrian_density=0) as empty:
        _, depth, _ = empty.render(camera, pose)
    rays = camera.pixel_rays() @ pose.rotation_matrix.T  # world directions with camera z = 1
    t = -pose.position[2] / np.where(rays[..., 2] < 0, rays[..., 2], np.nan)  # z-depth to z=0
    hit = pose.position[:2] + t[..., None] * rays[..., :2]
    seg = town.layout.segments[lane.segment]
    rel = hit - seg.start
    along, across = rel @ seg.direction, rel @ np.array([seg.direction[1], -seg.direction[0]])
    road = (np.abs(across) < seg.half_width - 0.3) & (along > 0) & (along < seg.length) & (t < 30)
    assert road.sum() > 1000
    np.testing.assert_allclose(depth[road], t[road], rtol=0.01)


def test_capture_times_differ_only_in_dynamic_pixels(town):
    camera = PinholeCamera.from_fov(128, 96, 90.0)
    _, pose = _lane_view(town)
    pose = Pose.from_heading(pose.position + [0, 0, 4.0], pose.heading_deg, pitch_deg=-15.0)
    town.set_time(NOON, sun_time=NOON)
    rgb1, depth1, mask1 = town.render(camera, pose)
    town.set_time(datetime(2024, 5, 9, 7, 42, 13, tzinfo=timezone.utc), sun_time=NOON)
    rgb2, depth2, mask2 = town.render(camera, pose)
    static = ~(mask1 | mask2)
    assert mask1.any() or mask2.any()
    assert not np.array_equal(mask1, mask2)
    np.testing.assert_array_equal(rgb1[static], rgb2[static])
    np.testing.assert_array_equal(depth1[static], depth2[static])


def test_sky_has_zero_depth(town):
    town.set_time(NOON)
    camera = PinholeCamera.from_fov(64, 64, 60.0)
    _, pose = _lane_view(town)
    up = Pose.from_heading(pose.position, 0.0, pitch_deg=89.0)
    rgb, depth, dynamic = town.render(camera, up)
    sky = depth == 0
    assert sky.mean() > 0.5 and not dynamic[sky].any()
    assert rgb[sky][:, 2].mean() > rgb[sky][:, 0].mean()  # blue clear sky
    level = town.render(camera, pose)[1]
    assert (level > 0).any() and (level >= 0).all()


def test_street_view_is_eight_views_45_degrees_apart(town):
    views = town.render_street_view(np.array([0.0, 0.0, 2.5]), size=32)
    assert len(views) == 8
    headings = [pose.heading_deg for *_, pose in views]
    np.testing.assert_allclose(np.diff(headings), 45.0, atol=1e-6)
    assert all(cam.fov_x_deg == pytest.approx(90.0) for *_, cam, _ in views)


def test_weather_and_time_change_the_image(town):
    camera = PinholeCamera.from_fov(64, 48, 90.0)
    _, pose = _lane_view(town)
    town.set_time(NOON)
    town.set_weather("clear")
    clear = town.render(camera, pose)[0].astype(int)
    town.set_weather("fog")
    fog = town.render(camera, pose)[0].astype(int)
    town.set_weather("clear")
    town.set_time(NOON, sun_time=datetime(2024, 5, 1, 14, 0, tzinfo=timezone.utc))  # 23:00 local
    night = town.render(camera, pose)[0].astype(int)
    town.set_time(NOON)
    assert np.abs(clear - fog).mean() > 10
    assert night.mean() < 0.5 * clear.mean()
    with pytest.raises(ValueError, match="weather must be one of"):
        town.set_weather("snow")
