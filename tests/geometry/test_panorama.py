"""Tests of cutting equirectangular panoramas into pinhole views."""

from __future__ import annotations

import numpy as np
import pytest
import quaternion

from cityenv.errors import InvalidDepthError, ShapeMismatchError
from cityenv.geometry.panorama import equirect_to_pinholes
from cityenv.geometry.pose import Pose

PANO_H, PANO_W = 128, 256
SIZE = (40, 32)  # (w, h) of each view


def _pixel_angles(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Azimuth and elevation (radians) of every panorama pixel centre, each ``(H, W)``.

    Straight from the panorama convention: azimuth grows with the column, 0 at the centre column;
    row 0 is straight up.
    """
    azimuth = ((np.arange(width) + 0.5) / width - 0.5) * 2.0 * np.pi
    elevation = (0.5 - (np.arange(height) + 0.5) / height) * np.pi
    return np.broadcast_to(azimuth, (height, width)), np.broadcast_to(
        elevation[:, None], (height, width)
    )


def _direction_panorama() -> np.ndarray:
    """Float32 panorama whose pixels hold (sin azimuth, cos azimuth, elevation) of their centre.

    sin/cos instead of the azimuth itself keep the encoding smooth across the wrap-around seam.
    """
    azimuth, elevation = _pixel_angles(PANO_H, PANO_W)
    return np.stack([np.sin(azimuth), np.cos(azimuth), elevation], -1).astype(np.float32)


def _expected_angles(view) -> tuple[np.ndarray, np.ndarray]:
    """Azimuth and elevation of each view pixel's ray rotated into the panorama frame."""
    rays = view.camera.pixel_rays() @ quaternion.as_rotation_matrix(view.rotation).T
    x, y, z = rays[..., 0], rays[..., 1], rays[..., 2]
    return np.arctan2(x, z), np.arctan2(-y, np.hypot(x, z))


def _wrapped(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


@pytest.mark.parametrize(("yaw_offset", "pitch"), [(0.0, 0.0), (10.0, 25.0), (-22.5, -40.0)])
def test_every_view_pixel_samples_its_own_direction(yaw_offset, pitch):
    views = equirect_to_pinholes(
        _direction_panorama(), size=SIZE, yaw_offset_deg=yaw_offset, pitch_deg=pitch
    )
    assert len(views) == 8
    for view in views:
        assert view.image.shape == (32, 40, 3) and view.image.dtype == np.float32
        azimuth, elevation = _expected_angles(view)
        sampled_az = np.arctan2(view.image[..., 0], view.image[..., 1])
        # within 1/100 of a panorama pixel: bilinear sampling at the exact continuous coordinate
        np.testing.assert_array_less(
            np.abs(_wrapped(sampled_az - azimuth)), 0.01 * 2 * np.pi / PANO_W
        )
        np.testing.assert_array_less(np.abs(view.image[..., 2] - elevation), 0.01 * np.pi / PANO_H)


def test_sampling_near_the_poles_reads_across_them():
    # Unit direction vectors are smooth across the poles, so bilinear sampling must return the
    # ray's own direction even where it blends row 0 with the pixels on the far side of the pole.
    azimuth, elevation = _pixel_angles(PANO_H, PANO_W)
    unit = np.stack(
        [
            np.sin(azimuth) * np.cos(elevation),
            -np.sin(elevation),
            np.cos(azimuth) * np.cos(elevation),
        ],
        -1,
    )
    for pitch in (90.0, -90.0):
        # a narrow view: many rays within half a panorama row (0.7 degrees) of the pole
        views = equirect_to_pinholes(unit, num_views=3, fov_deg=6.0, size=(41, 41), pitch_deg=pitch)
        for view in views:
            rays = view.camera.pixel_rays() @ quaternion.as_rotation_matrix(view.rotation).T
            rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
            sampled = view.image / np.linalg.norm(view.image, axis=-1, keepdims=True)
            angle = np.arccos(np.clip(np.sum(sampled * rays, -1), -1.0, 1.0))
            np.testing.assert_array_less(angle, 0.05 * np.pi / PANO_H)


def test_views_look_at_45_degree_yaw_steps():
    views = equirect_to_pinholes(None, size=SIZE, pitch_deg=30.0)
    assert [v.yaw_deg for v in views] == [45.0 * k for k in range(8)]
    for view in views:
        axis = quaternion.rotate_vectors(view.rotation, [0.0, 0.0, 1.0])
        yaw, pitch = np.radians(view.yaw_deg), np.radians(30.0)
        expected = [np.sin(yaw) * np.cos(pitch), -np.sin(pitch), np.cos(yaw) * np.cos(pitch)]
        np.testing.assert_allclose(axis, expected, atol=1e-12)
        assert view.image is None and view.depth is None
        assert view.camera.width == 40 and view.camera.fov_x_deg == pytest.approx(90.0)
    right = quaternion.rotate_vectors(views[2].rotation, [1.0, 0.0, 0.0])  # yaw 90: right = back
    np.testing.assert_allclose(right, [0.0, 0.0, -1.0], atol=1e-12)


def test_view_rotation_composes_with_the_panorama_heading():
    position, heading = np.array([3.0, 4.0, 2.5]), 20.0
    for view in equirect_to_pinholes(None, size=SIZE, pitch_deg=10.0):
        world = Pose.from_heading(position, heading) @ Pose(np.zeros(3), view.rotation)
        expected = Pose.from_heading(position, heading + view.yaw_deg, pitch_deg=10.0)
        assert world.allclose(expected, atol=1e-9)


def test_constant_range_becomes_range_times_cos_and_zero_stays_zero():
    depth = np.full((PANO_H // 2, PANO_W // 2), 7.0)  # any resolution, independent of the image
    depth[: PANO_H // 4] = 0.0  # the sky: upper hemisphere has no depth
    views = equirect_to_pinholes(_direction_panorama(), depth, size=SIZE)
    for view in views:
        assert view.depth.dtype == np.float32 and view.depth.shape == (32, 40)
        rays = view.camera.pixel_rays()
        cos_axis = 1.0 / np.linalg.norm(rays, axis=-1)  # cos of the angle to the optical axis
        below = rays[..., 1] > 0  # camera y down: these rays point below the horizon
        np.testing.assert_allclose(view.depth[below], 7.0 * cos_axis[below], rtol=1e-6)
        assert np.all(view.depth[~below] == 0.0)


def test_depth_is_nearest_neighbour_never_blended():
    depth = np.arange(1.0, PANO_H * PANO_W + 1.0).reshape(PANO_H, PANO_W)  # 1 + flat index
    for view in equirect_to_pinholes(None, depth, size=SIZE, pitch_deg=15.0):
        rays = view.camera.pixel_rays()
        range_ = view.depth * np.linalg.norm(rays, axis=-1)
        index = np.rint(range_).astype(np.int64) - 1
        np.testing.assert_allclose(range_, index + 1.0, rtol=1e-6)  # an exact panorama value
        rows, cols = np.unravel_index(index, depth.shape)
        # the sampled panorama pixel contains the ray's continuous coordinate
        azimuth, elevation = _expected_angles(view)
        x = (azimuth / (2 * np.pi) + 0.5) * PANO_W
        y = (0.5 - elevation / np.pi) * PANO_H
        assert np.all(
            np.abs(_wrapped((cols + 0.5 - x) * 2 * np.pi / PANO_W)) <= np.pi / PANO_W + 1e-9
        )
        assert np.all(np.abs(rows + 0.5 - y) <= 0.5 + 1e-9)


def test_image_dtypes_and_shapes_are_kept():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (PANO_H, PANO_W, 3), dtype=np.uint8)
    gray = rgb[..., 0]
    (view,) = equirect_to_pinholes(rgb, num_views=1, size=(24, 16), fov_deg=60.0)
    assert view.image.shape == (16, 24, 3) and view.image.dtype == np.uint8
    assert view.camera.height == 16 and view.camera.fov_x_deg == pytest.approx(60.0)
    (view,) = equirect_to_pinholes(gray, num_views=1, size=(24, 16))
    assert view.image.shape == (16, 24) and view.image.dtype == np.uint8
    labels = rng.integers(0, 1000, (PANO_H, PANO_W, 1)).astype(np.int32)  # not a cv2 dtype
    (view,) = equirect_to_pinholes(labels, num_views=1, size=(24, 16))
    assert view.image.shape == (16, 24, 1) and view.image.dtype == np.int32


def test_bad_inputs_are_rejected():
    pano = np.zeros((PANO_H, PANO_W, 3), dtype=np.uint8)
    with pytest.raises(InvalidDepthError, match=r"depth must be finite and >= 0"):
        equirect_to_pinholes(pano, np.full((PANO_H, PANO_W), -1.0))
    with pytest.raises(ShapeMismatchError, match=r"depth must be an equirectangular range map"):
        equirect_to_pinholes(pano, np.zeros((PANO_H, PANO_W, 2)))
    with pytest.raises(ShapeMismatchError, match=r"panorama must be an equirectangular image"):
        equirect_to_pinholes(pano[None])
    with pytest.raises(ValueError, match=r"num_views must be a positive integer, got 0"):
        equirect_to_pinholes(pano, num_views=0)
