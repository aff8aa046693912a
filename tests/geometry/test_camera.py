"""Tests of cityenv.geometry.camera against hand-computed intrinsics and projections."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from cityenv.errors import InvalidCameraError, ShapeMismatchError
from cityenv.geometry.camera import PinholeCamera


@pytest.fixture
def camera() -> PinholeCamera:
    return PinholeCamera(width=100, height=80, fx=100.0, fy=120.0, cx=50.0, cy=40.0)


def test_from_fov_90_degrees_gives_half_width_focal_length_and_centred_principal_point():
    cam = PinholeCamera.from_fov(640, 480, 90.0)
    assert cam.fx == pytest.approx(320.0)
    assert cam.fy == pytest.approx(320.0)  # square pixels when fov_y is None
    assert (cam.cx, cam.cy) == (320.0, 240.0)
    assert cam.fov_x_deg == pytest.approx(90.0)
    assert cam.fov_y_deg == pytest.approx(math.degrees(2 * math.atan(240 / 320)))


def test_from_fov_with_vertical_fov_sets_fy_independently():
    cam = PinholeCamera.from_fov(200, 100, 90.0, fov_y_deg=60.0)
    assert cam.fx == pytest.approx(100.0)
    assert cam.fy == pytest.approx(50.0 / math.tan(math.radians(30.0)))
    assert cam.fov_y_deg == pytest.approx(60.0)


def test_intrinsic_matrix_is_hand_written_k(camera):
    expected = np.array([[100.0, 0.0, 50.0], [0.0, 120.0, 40.0], [0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(camera.K, expected)
    assert camera.K.dtype == np.float64


def test_rescaled_scales_focal_and_principal_point_and_keeps_fov(camera):
    half = camera.rescaled(50, 20)
    assert (half.width, half.height) == (50, 20)
    assert (half.fx, half.cx) == (50.0, 25.0)
    assert (half.fy, half.cy) == (30.0, 10.0)
    assert half.fov_x_deg == pytest.approx(camera.fov_x_deg)
    assert half.fov_y_deg == pytest.approx(camera.fov_y_deg)


def test_pixel_rays_pass_through_pixel_centres(camera):
    rays = camera.pixel_rays()
    assert rays.shape == (80, 100, 3) and rays.dtype == np.float64
    np.testing.assert_allclose(rays[0, 0], [(0.5 - 50.0) / 100.0, (0.5 - 40.0) / 120.0, 1.0])
    np.testing.assert_allclose(rays[40, 50], [0.5 / 100.0, 0.5 / 120.0, 1.0])
    np.testing.assert_array_equal(rays[..., 2], 1.0)


def test_project_matches_hand_computation(camera):
    uv, z = camera.project([[1.0, 2.0, 4.0], [0.0, 0.0, 2.0]])
    np.testing.assert_allclose(uv, [[100.0 * 1 / 4 + 50.0, 120.0 * 2 / 4 + 40.0], [50.0, 40.0]])
    np.testing.assert_allclose(z, [4.0, 2.0])


def test_project_inverts_pixel_rays_at_any_depth(camera):
    points = camera.pixel_rays() * 7.5
    uv, z = camera.project(points)
    u, v = np.meshgrid(np.arange(100) + 0.5, np.arange(80) + 0.5)
    np.testing.assert_allclose(uv, np.stack([u, v], axis=-1), atol=1e-9)
    np.testing.assert_allclose(z, 7.5)


def test_project_rejects_points_without_three_coordinates(camera):
    with pytest.raises(ShapeMismatchError, match=r"points_cam must have shape \(\.\.\., 3\)"):
        camera.project(np.zeros((4, 2)))


def test_check_image_accepts_matching_shapes_and_rejects_others(camera):
    camera.check_image(np.zeros((80, 100, 3), dtype=np.uint8))
    camera.check_image(np.zeros((80, 100), dtype=np.float32), name="depth")
    with pytest.raises(
        ShapeMismatchError, match=r"depth must have shape .*\(80, 100.*got.*\(100, 80\)"
    ):
        camera.check_image(np.zeros((100, 80)), name="depth")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"fx": 0.0}, r"fx must be a positive finite focal length.*got 0\.0"),
        ({"fy": -5.0}, r"fy must be a positive finite focal length.*got -5\.0"),
        ({"fx": float("nan")}, r"fx must be a positive finite focal length.*got nan"),
        ({"cx": float("inf")}, r"cx must be a finite principal-point coordinate"),
        ({"width": 0}, r"width must be a positive integer.*got 0"),
        ({"height": 2.5}, r"height must be a positive integer.*got 2\.5"),
    ],
)
def test_invalid_intrinsics_raise(kwargs, pattern):
    args = {"width": 10, "height": 10, "fx": 5.0, "fy": 5.0, "cx": 5.0, "cy": 5.0} | kwargs
    with pytest.raises(InvalidCameraError, match=pattern):
        PinholeCamera(**args)


@pytest.mark.parametrize("fov", [0.0, 180.0, -10.0, float("nan")])
def test_from_fov_rejects_impossible_fields_of_view(fov):
    with pytest.raises(InvalidCameraError, match=r"fov_x_deg must be .* between 0 and 180"):
        PinholeCamera.from_fov(64, 64, fov)


def test_camera_is_frozen(camera):
    with pytest.raises(dataclasses.FrozenInstanceError):
        camera.fx = 1.0  # type: ignore[misc]


# --- unproject_pixels: the inverse of project at pixel centres ---------------------------------
def test_unproject_pixels_matches_hand_computation(camera):
    # pixel (u=59, v=39) has its centre at (59.5, 39.5): x = (59.5 - 50) / 100 * 4, y = -0.5/120*4
    points = camera.unproject_pixels(59, 39, 4.0)
    np.testing.assert_allclose(points, [0.38, -1.0 / 60.0, 4.0], atol=1e-12)


def test_unproject_pixels_of_a_window_inverts_project(camera):
    v, u = np.mgrid[70:80, 40:61]
    z = np.random.default_rng(0).uniform(0.5, 50.0, u.shape)
    z[0, 0] = 0.0  # no depth: the camera centre, which callers mask out
    points = camera.unproject_pixels(u, v, z)
    assert points.shape == (10, 21, 3)
    np.testing.assert_array_equal(points[0, 0], [0.0, 0.0, 0.0])
    uv, depth = camera.project(points[z > 0])
    np.testing.assert_allclose(uv, np.stack([u, v], -1)[z > 0] + 0.5, atol=1e-9)
    np.testing.assert_allclose(depth, z[z > 0], rtol=1e-12)
    np.testing.assert_allclose(points, camera.pixel_rays()[70:80, 40:61] * z[..., None])


def test_unproject_pixels_rejects_shapes_that_do_not_broadcast(camera):
    with pytest.raises(ShapeMismatchError, match=r"must broadcast to one shape, got shapes \(3,\)"):
        camera.unproject_pixels(np.arange(3), np.arange(4), 1.0)
