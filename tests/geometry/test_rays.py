"""Tests of Plücker ray embeddings against hand-computed rays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import quaternion
import torch

from cityenv.errors import ShapeMismatchError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose, Trajectory
from cityenv.geometry.rays import plucker_rays

# 5x3 pixels, f = 2: pixel (u, v) has the camera-frame ray ((u - 2) / 2, (v - 1) / 2, 1).
CAM = PinholeCamera(width=5, height=3, fx=2.0, fy=2.0, cx=2.5, cy=1.5)
S2 = 1.0 / math.sqrt(2.0)


def _world_rays(pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Origins and unit directions ``(H, W, 3)`` of the camera's pixel rays in the world frame."""
    d = CAM.pixel_rays()
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    return np.broadcast_to(pose.position, d.shape), d @ pose.rotation_matrix.T


def test_identity_pose_has_zero_moments_and_forward_centre_ray():
    rays = plucker_rays(CAM, Pose.identity())
    assert rays.shape == (6, 3, 5) and rays.dtype == torch.float32
    assert torch.all(rays[:3] == 0)
    torch.testing.assert_close(rays[3:, 1, 2], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(rays[3:, 1, 4], torch.tensor([S2, 0.0, S2]))  # ray (1, 0, 1)
    torch.testing.assert_close(rays[3:].norm(dim=0), torch.ones(3, 5))


def test_translation_gives_moment_t_cross_d():
    t = np.array([0.0, 1.0, 0.0])
    rays = plucker_rays(CAM, Pose(t, quaternion.one), dtype=torch.float64)
    # pixel (u=4, v=1): d = (1, 0, 1) / sqrt 2, t x d = (1*1 - 0*0, 0*1 - 0*1, 0*0 - 1*1) / sqrt 2
    torch.testing.assert_close(rays[:3, 1, 4], torch.tensor([S2, 0.0, -S2], dtype=torch.float64))
    expected = np.cross(t, rays[3:].numpy(), axis=0)
    np.testing.assert_allclose(rays[:3].numpy(), expected, atol=1e-15)


def test_rotated_camera_points_its_centre_ray_along_forward():
    pose = Pose.from_heading([5.0, -2.0, 1.5], 90.0)  # looking east
    rays = plucker_rays(CAM, pose, dtype=torch.float64)
    np.testing.assert_allclose(rays[3:, 1, 2].numpy(), [1.0, 0.0, 0.0], atol=1e-12)
    origins, directions = _world_rays(pose)
    np.testing.assert_allclose(rays[3:].numpy(), directions.transpose(2, 0, 1), atol=1e-12)
    moments = np.cross(origins, directions).transpose(2, 0, 1)
    np.testing.assert_allclose(rays[:3].numpy(), moments, atol=1e-12)


def test_reference_frame_equals_transforming_world_rays():
    pose = Pose.from_heading([5.0, -2.0, 1.5], 80.0, pitch_deg=10.0)
    reference = Pose.from_heading([1.0, 3.0, 1.0], -30.0, roll_deg=5.0)
    rays = plucker_rays(CAM, pose, reference, dtype=torch.float64).numpy()
    origins, directions = _world_rays(pose)
    r_ref = reference.rotation_matrix
    d_ref = directions @ r_ref  # R_ref^T d for row vectors
    o_ref = (origins - reference.position) @ r_ref
    np.testing.assert_allclose(rays[3:], d_ref.transpose(2, 0, 1), atol=1e-12)
    np.testing.assert_allclose(rays[:3], np.cross(o_ref, d_ref).transpose(2, 0, 1), atol=1e-12)
    # and it is the same as the relative pose's rays in the world frame
    relative = plucker_rays(CAM, pose.relative_to(reference), dtype=torch.float64).numpy()
    np.testing.assert_allclose(rays, relative, atol=1e-12)


def test_reference_equal_to_pose_gives_the_identity_rays():
    pose = Pose.from_heading([5.0, -2.0, 1.5], 123.0, pitch_deg=-7.0)
    torch.testing.assert_close(plucker_rays(CAM, pose, pose), plucker_rays(CAM, Pose.identity()))


def test_batches_match_single_calls():
    poses = [Pose.from_heading([k, 2.0 * k, 1.5], 20.0 * k) for k in range(4)]
    reference = poses[1]
    batch = plucker_rays(CAM, Trajectory.from_poses(poses, fps=10.0), reference)
    assert batch.shape == (4, 6, 3, 5)
    for k, pose in enumerate(poses):
        torch.testing.assert_close(batch[k], plucker_rays(CAM, pose, reference))
    matrices = np.stack([p.matrix for p in poses])
    paired = plucker_rays(CAM, matrices, matrices)  # each pose in its own frame
    torch.testing.assert_close(paired, plucker_rays(CAM, Pose.identity()).expand(4, -1, -1, -1))


def test_latent_resolution_via_rescaled_camera():
    camera = PinholeCamera.from_fov(832, 480, 90.0)
    rays = plucker_rays(camera.rescaled(104, 60), Pose.identity())
    assert rays.shape == (6, 60, 104)
    # the corner ray keeps its angle: x = (0.5 - 52) / 52 for fov 90 (fx = W / 2)
    corner = rays[3:, 0, 0] / rays[5, 0, 0]
    torch.testing.assert_close(corner[0], torch.tensor((0.5 - 52.0) / 52.0))


def test_bad_poses_are_rejected():
    with pytest.raises(ShapeMismatchError, match=r"pose must be a Pose or camera-to-world"):
        plucker_rays(CAM, np.eye(3))
    with pytest.raises(ShapeMismatchError, match=r"batches must have the same size, got 3 and 2"):
        plucker_rays(CAM, np.stack([np.eye(4)] * 3), np.stack([np.eye(4)] * 2))
