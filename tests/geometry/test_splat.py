"""Tests of depth unprojection, forward splatting and coverage against hand-computed warps."""

from __future__ import annotations

import numpy as np
import pytest
import quaternion
import torch

from cityenv.errors import InvalidDepthError, ShapeMismatchError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose, Trajectory
from cityenv.geometry.splat import coverage, forward_splat, unproject

# fx = fy = 100 px: a 1 m sideways step moves a plane at 10 m by exactly 10 px.
CAM = PinholeCamera(width=64, height=40, fx=100.0, fy=100.0, cx=32.0, cy=20.0)


def _step(pose: Pose, right_m: float) -> Pose:
    """``pose`` moved ``right_m`` metres along its own camera x axis (to the right)."""
    return pose @ Pose([right_m, 0.0, 0.0], quaternion.one)


def _scene(rng: np.random.Generator, camera: PinholeCamera = CAM):
    """Random uint8 image ``(H, W, 3)`` and depth in [2, 20] m with a band of zeros (sky)."""
    image = rng.integers(0, 256, (camera.height, camera.width, 3), dtype=np.uint8)
    depth = rng.uniform(2.0, 20.0, (camera.height, camera.width)).astype(np.float32)
    depth[:5] = 0.0
    return image, depth


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture
def src_pose() -> Pose:
    return Pose.from_heading([3.0, -4.0, 1.6], 30.0, pitch_deg=5.0)


# --- forward_splat: exact answers -----------------------------------------------------------------
def test_same_pose_reproduces_the_image_where_depth_is_positive(rng, src_pose):
    image, depth = _scene(rng)
    warped, valid = forward_splat(image, depth, CAM, src_pose, CAM, src_pose)
    np.testing.assert_array_equal(valid, depth > 0)
    np.testing.assert_array_equal(warped[valid], image[valid])
    assert not warped[~valid].any()
    assert warped.dtype == np.uint8 and valid.dtype == bool


def test_sideways_step_shifts_a_plane_at_10m_by_10px(rng, src_pose):
    image, _ = _scene(rng)
    depth = np.full(CAM.shape, 10.0, dtype=np.float32)
    warped, valid = forward_splat(image, depth, CAM, src_pose, CAM, _step(src_pose, 1.0))
    # The camera moved right, so the scene moves left: destination column u shows column u + 10.
    np.testing.assert_array_equal(warped[:, :54], image[:, 10:])
    assert valid[:, :54].all() and not valid[:, 54:].any()
    assert not warped[:, 54:].any()


@pytest.mark.parametrize(
    ("step_m", "near_col", "far_col", "dst_col"),
    [(1.0, 40, 30, 20), (-1.0, 20, 30, 40)],  # the nearer pixel after / before the farther one
)
def test_nearer_surface_wins_when_two_land_on_one_pixel(
    rng, src_pose, step_m, near_col, far_col, dst_col
):
    image, _ = _scene(rng)
    depth = np.full(CAM.shape, 10.0, dtype=np.float32)
    # After a sideways step, column u at depth z lands at u + 0.5 - 100 * step / z: the far column
    # (10 m) moves 10 px, the near one (5 m) 20 px, and both land in dst_col.
    depth[:, near_col] = 5.0
    warped, valid = forward_splat(image, depth, CAM, src_pose, CAM, _step(src_pose, step_m))
    np.testing.assert_array_equal(warped[:, dst_col], image[:, near_col])
    # the near column has left the place where it hid the background: a hole, nothing lands there
    hole = near_col - int(10 * step_m)
    assert valid[:, dst_col].all() and not valid[:, hole].any()
    assert not warped[:, hole].any()


def test_ties_at_equal_depth_go_to_the_first_source_pixel(rng, src_pose):
    camera = PinholeCamera.from_fov(32, 24, 70.0)
    image, _ = _scene(rng, camera)
    depth = np.full(camera.shape, 8.0, dtype=np.float32)
    half = camera.rescaled(16, 12)  # source pixel (u, v) lands in (u // 2, v // 2)
    warped, valid = forward_splat(image, depth, camera, src_pose, half, src_pose)
    assert valid.all()
    np.testing.assert_array_equal(warped, image[::2, ::2])


def test_points_behind_the_destination_are_dropped(rng, src_pose):
    image, depth = _scene(rng)
    behind = src_pose @ Pose([0.0, 0.0, 0.0], quaternion.from_rotation_vector([0.0, np.pi, 0.0]))
    _, valid = forward_splat(image, depth, CAM, src_pose, CAM, behind)
    assert not valid.any()


# --- forward_splat: batches, types, devices -------------------------------------------------------
def test_batched_equals_a_loop_of_single_calls(rng, src_pose):
    images, depths = zip(*(_scene(rng) for _ in range(3)), strict=True)
    images, depths = np.stack(images), np.stack(depths)
    srcs = Trajectory.from_poses([_step(src_pose, 0.2 * k) for k in range(3)], fps=10.0)
    dst = _step(src_pose, 0.5) @ Pose(
        [0.0, 0.1, 0.3], quaternion.from_rotation_vector([0, 0.05, 0])
    )
    warped, valid = forward_splat(images, depths, CAM, srcs, CAM, dst)
    assert warped.shape == (3, 40, 64, 3) and valid.shape == (3, 40, 64)
    for k in range(3):
        w_k, v_k = forward_splat(images[k], depths[k], CAM, srcs[k], CAM, dst)
        np.testing.assert_array_equal(warped[k], w_k)
        np.testing.assert_array_equal(valid[k], v_k)
    assert valid.any(axis=(1, 2)).all()


def test_torch_and_numpy_paths_agree(rng, src_pose):
    image, depth = _scene(rng)
    image = image.astype(np.float32) / 255.0
    dst = _step(src_pose, 0.7).matrix
    warped_np, valid_np = forward_splat(image, depth, CAM, src_pose.matrix, CAM, dst)
    warped_t, valid_t = forward_splat(
        torch.from_numpy(image), torch.from_numpy(depth), CAM, torch.from_numpy(src_pose.matrix),
        CAM, torch.from_numpy(dst),
    )  # fmt: skip
    assert isinstance(warped_t, torch.Tensor) and warped_t.dtype == torch.float32
    np.testing.assert_array_equal(warped_t.numpy(), warped_np)
    np.testing.assert_array_equal(valid_t.numpy(), valid_np)


def test_image_without_channels_and_other_dtypes(rng, src_pose):
    image, depth = _scene(rng)
    gray = image[..., 0].astype(np.int16)
    warped, valid = forward_splat(gray, depth, CAM, src_pose, CAM, src_pose)
    assert warped.shape == (40, 64) and warped.dtype == np.int16
    np.testing.assert_array_equal(warped[valid], gray[valid])
    mask, _ = forward_splat(depth > 10, depth, CAM, src_pose, CAM, src_pose)
    np.testing.assert_array_equal(mask, depth > 10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(rng, src_pose):
    image, depth = _scene(rng)
    dst = _step(src_pose, 0.7)
    warped, valid = forward_splat(image, depth, CAM, src_pose, CAM, dst)
    warped_c, valid_c = forward_splat(
        torch.from_numpy(image).cuda(), torch.from_numpy(depth).cuda(), CAM, src_pose, CAM, dst
    )
    assert warped_c.device.type == "cuda" and valid_c.device.type == "cuda"
    np.testing.assert_array_equal(warped_c.cpu().numpy(), warped)
    np.testing.assert_array_equal(valid_c.cpu().numpy(), valid)


# --- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_negative_or_non_finite_depth_is_rejected(rng, src_pose, bad):
    image, depth = _scene(rng)
    depth[7, 9] = bad
    with pytest.raises(InvalidDepthError, match=r"depth must be finite and >= 0"):
        forward_splat(image, depth, CAM, src_pose, CAM, src_pose)
    with pytest.raises(InvalidDepthError, match=r"replace missing or invalid depth with 0"):
        coverage(depth, CAM, src_pose, CAM, src_pose)


def test_shape_mismatches_are_rejected(rng, src_pose):
    image, depth = _scene(rng)
    with pytest.raises(ShapeMismatchError, match=r"image must have shape \(40, 64, 'C'\)"):
        forward_splat(image[:, :-1], depth, CAM, src_pose, CAM, src_pose)
    with pytest.raises(ShapeMismatchError, match=r"\(\.\.\., 40, 64\) to match the source camera"):
        forward_splat(image[:-1], depth[:-1], CAM, src_pose, CAM, src_pose)
    with pytest.raises(ShapeMismatchError, match=r"one pose or a batch of 1"):
        forward_splat(image, depth, CAM, np.stack([np.eye(4)] * 2), CAM, src_pose)
    with pytest.raises(ShapeMismatchError, match=r"src_pose must be a Pose or camera-to-world"):
        forward_splat(image, depth, CAM, np.eye(3), CAM, src_pose)


# --- unproject --------------------------------------------------------------------------------
def test_unproject_centre_pixel_and_world_frame():
    camera = PinholeCamera(width=5, height=3, fx=2.0, fy=2.0, cx=2.5, cy=1.5)
    depth = np.full((3, 5), 4.0)
    points = unproject(depth, camera)
    np.testing.assert_allclose(points[1, 2], [0.0, 0.0, 4.0])
    np.testing.assert_allclose(points[0, 4], [(4.5 - 2.5) / 2 * 4, (0.5 - 1.5) / 2 * 4, 4.0])
    pose = Pose.from_heading([10.0, 20.0, 2.0], 90.0)  # looking east: camera z = world +x
    world = unproject(depth, camera, pose)
    np.testing.assert_allclose(world[1, 2], [14.0, 20.0, 2.0])
    np.testing.assert_allclose(world, pose.transform_points(points))


def test_unproject_batched_torch():
    camera = PinholeCamera.from_fov(6, 4, 60.0)
    depth = torch.rand(2, 4, 6, dtype=torch.float64) + 1.0
    poses = np.stack([Pose.from_heading([k, 0.0, 0.0], 45.0 * k).matrix for k in range(2)])
    points = unproject(depth, camera, poses)
    assert isinstance(points, torch.Tensor) and points.shape == (2, 4, 6, 3)
    for k in range(2):
        expected = Pose.from_matrix(poses[k]).transform_points(unproject(depth[k].numpy(), camera))
        np.testing.assert_allclose(points[k].numpy(), expected)


# --- coverage ---------------------------------------------------------------------------------
def test_coverage_of_known_overlaps(rng, src_pose):
    depth = np.full(CAM.shape, 10.0, dtype=np.float32)
    assert coverage(depth, CAM, src_pose, CAM, src_pose) == 1.0
    assert coverage(depth, CAM, src_pose, CAM, _step(src_pose, 1.0)) == pytest.approx(54 / 64)
    depth[: CAM.height // 2] = 0.0
    assert coverage(depth, CAM, src_pose, CAM, src_pose) == pytest.approx(0.5)
    behind = src_pose @ Pose([0.0, 0.0, 0.0], quaternion.from_rotation_vector([0.0, np.pi, 0.0]))
    assert coverage(depth, CAM, src_pose, CAM, behind) == 0.0


def test_coverage_batch_matches_singles_and_forward_splat(rng, src_pose):
    depths = np.stack([_scene(rng)[1] for _ in range(4)])
    poses = np.stack([_step(src_pose, 0.4 * k).matrix for k in range(4)])
    target = _step(src_pose, 0.6) @ Pose([0.0, 0.0, 1.0], quaternion.one)
    fractions = coverage(depths, CAM, poses, CAM, target)
    assert fractions.shape == (4,) and fractions.dtype == np.float64
    for k in range(4):
        single = coverage(depths[k], CAM, poses[k], CAM, target)
        assert isinstance(single, float) and single == fractions[k]
        _, valid = forward_splat(depths[k], depths[k], CAM, poses[k], CAM, target)
        assert valid.mean() == pytest.approx(single)
