"""Tests of cityenv.geometry.pose against hand-computed matrices (ENU world, OpenCV camera)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import quaternion

from cityenv.errors import InvalidPoseError, ShapeMismatchError
from cityenv.geometry.pose import (
    QUATERNION_PRODUCTS_TO_MATRIX,
    Pose,
    Trajectory,
    heading_quaternions,
    poses_to_matrices,
    quaternion_product_features,
    quaternions_to_matrices,
    rotation_matrix_column,
)

EAST, NORTH, UP = np.eye(3)
S30, C30 = 0.5, math.sqrt(3.0) / 2.0


def _random_pose(rng: np.random.Generator) -> Pose:
    return Pose(rng.normal(size=3) * 10.0, rng.normal(size=4))


# --- Pose.from_heading: hand-computed camera axes ---------------------------------------------
def test_heading_zero_looks_north_with_right_east_and_down_down():
    pose = Pose.from_heading([1.0, 2.0, 3.0], 0.0)
    # columns = camera x (right), y (down), z (forward) in ENU
    expected = np.column_stack([EAST, -UP, NORTH])
    np.testing.assert_allclose(pose.rotation_matrix, expected, atol=1e-12)
    np.testing.assert_array_equal(pose.position, [1.0, 2.0, 3.0])
    assert pose.heading_deg == pytest.approx(0.0, abs=1e-9)
    assert pose.pitch_deg == pytest.approx(0.0, abs=1e-9)


def test_heading_90_looks_east_with_right_south():
    pose = Pose.from_heading(np.zeros(3), 90.0)
    expected = np.column_stack([-NORTH, -UP, EAST])
    np.testing.assert_allclose(pose.rotation_matrix, expected, atol=1e-12)
    assert pose.heading_deg == pytest.approx(90.0)


@pytest.mark.parametrize("heading", [0.0, 45.0, 135.0, 200.0, 315.0])
def test_heading_property_round_trips(heading):
    pose = Pose.from_heading(np.zeros(3), heading, pitch_deg=-20.0, roll_deg=5.0)
    assert pose.heading_deg == pytest.approx(heading)
    h = math.radians(heading)
    np.testing.assert_allclose(
        pose.forward[:2] / np.linalg.norm(pose.forward[:2]), [math.sin(h), math.cos(h)], atol=1e-12
    )


def test_pitch_up_30_degrees_raises_the_optical_axis():
    pose = Pose.from_heading(np.zeros(3), 0.0, pitch_deg=30.0)
    np.testing.assert_allclose(pose.forward, [0.0, C30, S30], atol=1e-12)
    # camera "down" tilts back: it points down and slightly north
    np.testing.assert_allclose(pose.rotation_matrix[:, 1], [0.0, S30, -C30], atol=1e-12)
    assert pose.pitch_deg == pytest.approx(30.0)


def test_positive_roll_dips_the_right_side():
    pose = Pose.from_heading(np.zeros(3), 0.0, roll_deg=30.0)
    np.testing.assert_allclose(pose.rotation_matrix[:, 0], [C30, 0.0, -S30], atol=1e-12)
    np.testing.assert_allclose(pose.forward, NORTH, atol=1e-12)


def test_heading_of_a_camera_looking_straight_down_is_its_pre_pitch_heading():
    assert Pose.from_heading(np.zeros(3), 70.0, pitch_deg=-90.0).heading_deg == pytest.approx(70.0)
    assert Pose.from_heading(np.zeros(3), 70.0, pitch_deg=90.0).heading_deg == pytest.approx(70.0)


# --- matrix form and algebra ------------------------------------------------------------------
def test_identity_and_matrix_form():
    np.testing.assert_array_equal(Pose.identity().matrix, np.eye(4))
    pose = Pose.from_heading([4.0, 5.0, 6.0], 90.0)
    expected = np.eye(4)
    expected[:3, :3] = np.column_stack([-NORTH, -UP, EAST])
    expected[:3, 3] = [4.0, 5.0, 6.0]
    np.testing.assert_allclose(pose.matrix, expected, atol=1e-12)


def test_from_matrix_and_from_rt_round_trip():
    pose = Pose.from_heading([1.0, -2.0, 0.5], 33.0, 12.0, -7.0)
    assert Pose.from_matrix(pose.matrix).allclose(pose, atol=1e-12)
    assert Pose.from_rt(pose.rotation_matrix, pose.position).allclose(pose, atol=1e-12)


def test_rotation_from_wxyz_array_is_normalised_and_scalar_position_broadcasts():
    pose = Pose(0, [2.0, 0.0, 0.0, 2.0])  # 90 degrees about +z
    np.testing.assert_array_equal(pose.position, np.zeros(3))
    np.testing.assert_allclose(quaternion.as_float_array(pose.rotation), [2**-0.5, 0, 0, 2**-0.5])
    np.testing.assert_allclose(pose.transform_points([1.0, 0.0, 0.0]), [0.0, 1.0, 0.0], atol=1e-12)


def test_transform_points_maps_camera_frame_to_world():
    pose = Pose.from_heading([10.0, 20.0, 1.5], 90.0)
    points = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    expected = [[10.0, 20.0, 1.5], [12.0, 20.0, 1.5], [10.0, 19.0, 1.5], [10.0, 20.0, 0.5]]
    np.testing.assert_allclose(pose.transform_points(points), expected, atol=1e-12)
    assert pose.transform_points(np.zeros((2, 5, 3))).shape == (2, 5, 3)


def test_inverse_and_composition_match_matrix_algebra():
    rng = np.random.default_rng(0)
    a, b = _random_pose(rng), _random_pose(rng)
    np.testing.assert_allclose(a.inverse().matrix, np.linalg.inv(a.matrix), atol=1e-12)
    np.testing.assert_allclose((a @ b).matrix, a.matrix @ b.matrix, atol=1e-12)
    assert (a @ a.inverse()).allclose(Pose.identity(), atol=1e-12)
    assert (a.inverse() @ a).allclose(Pose.identity(), atol=1e-12)
    assert a.inverse().inverse().allclose(a, atol=1e-12)


def test_relative_to_is_reference_inverse_times_pose():
    rng = np.random.default_rng(1)
    pose, reference = _random_pose(rng), _random_pose(rng)
    relative = pose.relative_to(reference)
    np.testing.assert_allclose(
        relative.matrix, np.linalg.inv(reference.matrix) @ pose.matrix, atol=1e-12
    )
    assert (reference @ relative).allclose(pose, atol=1e-12)
    assert pose.relative_to(pose).allclose(Pose.identity(), atol=1e-12)


def test_relative_pose_of_a_camera_one_metre_ahead():
    reference = Pose.from_heading([0.0, 0.0, 0.0], 90.0)  # looking east
    ahead = Pose.from_heading([1.0, 0.0, 0.0], 90.0)
    relative = ahead.relative_to(reference)
    np.testing.assert_allclose(relative.position, [0.0, 0.0, 1.0], atol=1e-12)  # +z = forward
    np.testing.assert_allclose(relative.rotation_matrix, np.eye(3), atol=1e-12)


def test_allclose_treats_q_and_minus_q_as_the_same_rotation():
    q = quaternion.from_rotation_vector([0.1, 0.2, 0.3])
    assert Pose([1.0, 2.0, 3.0], q).allclose(Pose([1.0, 2.0, 3.0], -q))
    assert not Pose([1.0, 2.0, 3.0], q).allclose(Pose([1.0, 2.0, 3.1], q))


# --- bad input ----------------------------------------------------------------------------------
def test_nan_position_raises():
    with pytest.raises(InvalidPoseError, match=r"position must be finite, got \[nan, 0\.0, 0\.0\]"):
        Pose([np.nan, 0.0, 0.0], quaternion.one)


def test_inf_quaternion_raises():
    with pytest.raises(InvalidPoseError, match=r"rotation must be finite"):
        Pose(np.zeros(3), [np.inf, 0.0, 0.0, 0.0])


def test_zero_quaternion_raises():
    with pytest.raises(InvalidPoseError, match=r"non-zero quaternion.*use \(1, 0, 0, 0\)"):
        Pose(np.zeros(3), [0.0, 0.0, 0.0, 0.0])


def test_wrong_shapes_raise():
    with pytest.raises(
        InvalidPoseError, match=r"position must have shape \(3,\).*got shape \(2,\)"
    ):
        Pose([1.0, 2.0], quaternion.one)
    with pytest.raises(
        InvalidPoseError, match=r"rotation must be .*shape \(4,\).*got shape \(3, 3\)"
    ):
        Pose(np.zeros(3), np.eye(3))
    with pytest.raises(
        InvalidPoseError, match=r"pose matrix must have shape \(4, 4\).*got shape \(3, 4\)"
    ):
        Pose.from_matrix(np.zeros((3, 4)))
    with pytest.raises(ShapeMismatchError, match=r"points must have shape \(\.\.\., 3\)"):
        Pose.identity().transform_points(np.zeros((4, 2)))


def test_non_rotation_matrices_raise():
    with pytest.raises(
        InvalidPoseError, match=r"orthonormal.*max \|R\^T R - I\| = 3\.00e\+00.*det = 2\.0"
    ):
        Pose.from_rt(np.diag([2.0, 1.0, 1.0]), np.zeros(3))
    with pytest.raises(InvalidPoseError, match=r"det = -1\.0+.*left-handed"):
        Pose.from_rt(np.diag([1.0, 1.0, -1.0]), np.zeros(3))
    with pytest.raises(InvalidPoseError, match=r"finite \(3, 3\) array.*with NaN/inf"):
        Pose.from_rt(np.full((3, 3), np.nan), np.zeros(3))


def test_non_finite_heading_raises():
    with pytest.raises(InvalidPoseError, match=r"heading/pitch/roll must be finite.*nan"):
        Pose.from_heading(np.zeros(3), float("nan"))


# --- Trajectory -------------------------------------------------------------------------------
@pytest.fixture
def turn() -> Trajectory:
    """A camera that drives 10 m north while turning from heading 0 to 90 over 2 s."""
    poses = [Pose.from_heading([0.0, 0.0, 0.0], 0.0), Pose.from_heading([0.0, 10.0, 0.0], 90.0)]
    return Trajectory.from_poses(poses, timestamps=[1.0, 3.0])


def test_trajectory_container_protocol(turn):
    assert len(turn) == 2
    assert turn[1].allclose(Pose.from_heading([0.0, 10.0, 0.0], 90.0), atol=1e-12)
    assert isinstance(turn[0:1], Trajectory) and len(turn[0:1]) == 1
    assert [p.heading_deg for p in turn] == pytest.approx([0.0, 90.0])
    assert turn.matrices.shape == (2, 4, 4)
    np.testing.assert_allclose(turn.matrices[1], turn[1].matrix, atol=1e-12)
    assert turn.duration == 2.0


def test_trajectory_accepts_wxyz_rotations_and_normalises_them():
    traj = Trajectory(np.zeros((2, 3)), [[2.0, 0, 0, 0], [0, 0, 0, 3.0]], [0.0, 1.0])
    assert traj.rotations.dtype == np.quaternion
    np.testing.assert_allclose(
        quaternion.as_float_array(traj.rotations), [[1, 0, 0, 0], [0, 0, 0, 1]]
    )


def test_from_poses_timestamps_from_fps_or_default():
    poses = [Pose.identity()] * 3
    np.testing.assert_allclose(Trajectory.from_poses(poses, fps=4.0).timestamps, [0.0, 0.25, 0.5])
    np.testing.assert_allclose(Trajectory.from_poses(poses).timestamps, [0.0, 1.0, 2.0])
    with pytest.raises(InvalidPoseError, match=r"give timestamps or fps, not both"):
        Trajectory.from_poses(poses, timestamps=[0, 1, 2], fps=1.0)
    with pytest.raises(InvalidPoseError, match=r"fps must be a positive finite frame rate, got 0"):
        Trajectory.from_poses(poses, fps=0)


def test_interpolation_midpoint_of_a_90_degree_turn_is_45_degrees(turn):
    mid = turn.interpolate(2.0)
    assert len(mid) == 1
    assert mid[0].heading_deg == pytest.approx(45.0)
    np.testing.assert_allclose(mid.positions, [[0.0, 5.0, 0.0]])
    np.testing.assert_array_equal(mid.timestamps, [2.0])
    quarter = turn.interpolate([1.5])
    assert quarter[0].heading_deg == pytest.approx(22.5)
    np.testing.assert_allclose(quarter.positions, [[0.0, 2.5, 0.0]])


def test_interpolation_at_the_knots_returns_the_knots(turn):
    knots = turn.interpolate(turn.timestamps)
    for got, want in zip(knots, turn, strict=True):
        assert got.allclose(want, atol=1e-12)


def test_interpolation_takes_the_short_arc_when_quaternion_signs_flip():
    q0 = Pose.from_heading(np.zeros(3), 0.0).rotation
    q1 = Pose.from_heading(np.zeros(3), 90.0).rotation
    traj = Trajectory(np.zeros((2, 3)), np.array([q0, -q1]), [0.0, 1.0])
    assert traj.interpolate(0.5)[0].heading_deg == pytest.approx(45.0)


def test_interpolation_outside_the_range_raises(turn):
    with pytest.raises(InvalidPoseError, match=r"range \[1\.0, 3\.0\] s, got \[0\.5, 2\.0\]"):
        turn.interpolate([0.5, 2.0])


def test_resample_counts_frames_and_keeps_endpoints(turn):
    resampled = turn.resample(10.0)
    assert len(resampled) == 21  # 2 s at 10 fps, both ends included
    assert resampled.timestamps[0] == 1.0 and resampled.timestamps[-1] == pytest.approx(3.0)
    assert resampled[-1].allclose(turn[-1], atol=1e-9)
    np.testing.assert_allclose(np.diff(resampled.timestamps), 0.1)
    # 2 s at 0.8 fps: frames at 0 and 1.25 s; the last frame stops short of the end
    sparse = turn.resample(0.8)
    np.testing.assert_allclose(sparse.timestamps, [1.0, 2.25])


def test_resample_with_a_frame_period_that_does_not_divide_float_exactly():
    traj = Trajectory(np.zeros((2, 3)), np.array([quaternion.one] * 2), [0.0, 1.0])
    assert len(traj.resample(3.0)) == 4
    assert len(traj.resample(30.0)) == 31


def test_trajectory_relative_to_its_first_pose_starts_at_identity(turn):
    relative = turn.relative_to(turn[0])
    assert relative[0].allclose(Pose.identity(), atol=1e-12)
    assert relative[1].allclose(turn[1].relative_to(turn[0]), atol=1e-12)
    np.testing.assert_array_equal(relative.timestamps, turn.timestamps)


def test_trajectory_bad_input_raises():
    rotations = np.array([quaternion.one] * 2)
    with pytest.raises(InvalidPoseError, match=r"positions must be finite"):
        Trajectory([[0, 0, 0], [np.nan, 0, 0]], rotations, [0.0, 1.0])
    with pytest.raises(InvalidPoseError, match=r"strictly increasing, got t\[0\] = 1\.0 followed"):
        Trajectory(np.zeros((2, 3)), rotations, [1.0, 1.0])
    with pytest.raises(
        ShapeMismatchError, match=r"timestamps must have shape \(2,\).*got shape \(3,\)"
    ):
        Trajectory(np.zeros((2, 3)), rotations, [0.0, 1.0, 2.0])
    with pytest.raises(
        ShapeMismatchError, match=r"rotations must be .* shape \(2,\).*got shape \(1,\)"
    ):
        Trajectory(np.zeros((2, 3)), rotations[:1], [0.0, 1.0])
    with pytest.raises(InvalidPoseError, match=r"positions must have shape \(N, 3\) with N >= 1"):
        Trajectory(np.zeros((0, 3)), rotations[:0], [])


# --- batched conversions ------------------------------------------------------------------------
H = math.sqrt(0.5)
# hand-computed: a 90-degree turn about world up (yaw), a heading-0 camera, heading 90 camera
YAW_90 = ([H, 0.0, 0.0, H], np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
HEADING_0 = ([-H, H, 0.0, 0.0], np.column_stack([EAST, -UP, NORTH]))
HEADING_90 = ([-0.5, 0.5, -0.5, 0.5], np.column_stack([-NORTH, -UP, EAST]))


def _unit_quaternions(rng: np.random.Generator, n: int) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_quaternions_to_matrices_matches_hand_computed_rotations():
    wxyz = np.array([YAW_90[0], HEADING_0[0], HEADING_90[0], [1.0, 0.0, 0.0, 0.0]])
    expected = np.stack([YAW_90[1], HEADING_0[1], HEADING_90[1], np.eye(3)])
    np.testing.assert_allclose(quaternions_to_matrices(wxyz), expected, atol=1e-15)
    # a scaled quaternion is the same rotation (normalised first), q and -q too
    np.testing.assert_allclose(quaternions_to_matrices([0.0, 0.0, 0.0, -3.0]), np.diag([-1, -1, 1]))


def test_quaternions_to_matrices_matches_numpy_quaternion_on_random_rotations():
    q = np.random.default_rng(0).normal(size=(5, 7, 4))  # any leading shape, any norm
    expected = quaternion.as_rotation_matrix(quaternion.from_float_array(q))
    np.testing.assert_allclose(quaternions_to_matrices(q), expected, atol=1e-14)
    as_quaternions = quaternion.from_float_array(q)
    np.testing.assert_allclose(quaternions_to_matrices(as_quaternions), expected, atol=1e-14)


def test_quaternions_to_matrices_rejects_bad_input():
    with pytest.raises(ShapeMismatchError, match=r"shape \(\.\.\., 4\).*got shape \(2, 3\)"):
        quaternions_to_matrices(np.ones((2, 3)))
    with pytest.raises(InvalidPoseError, match="non-zero quaternion"):
        quaternions_to_matrices(np.zeros((1, 4)))
    with pytest.raises(InvalidPoseError, match="must be finite"):
        quaternions_to_matrices([[np.nan, 0.0, 0.0, 1.0]])


def test_poses_to_matrices_equals_pose_matrix():
    rng = np.random.default_rng(1)
    positions, wxyz = rng.normal(size=(6, 3)) * 20.0, rng.normal(size=(6, 4))
    matrices = poses_to_matrices(positions, wxyz)
    assert matrices.shape == (6, 4, 4)
    for m, p, q in zip(matrices, positions, wxyz, strict=True):
        np.testing.assert_allclose(m, Pose(p, q).matrix, atol=1e-14)
    yaw = poses_to_matrices([[1.0, 2.0, 3.0]], [YAW_90[0]])[0]
    np.testing.assert_allclose(yaw @ [1.0, 0.0, 0.0, 1.0], [1.0, 3.0, 3.0, 1.0], atol=1e-15)


def test_poses_to_matrices_rejects_mismatched_batches():
    with pytest.raises(ShapeMismatchError, match=r"positions must have shape \(2, 3\).*got shape"):
        poses_to_matrices(np.zeros((3, 3)), np.ones((2, 4)))
    with pytest.raises(InvalidPoseError, match="positions must be finite"):
        poses_to_matrices([[np.inf, 0.0, 0.0]], [[1.0, 0.0, 0.0, 0.0]])


@pytest.mark.parametrize("column", [0, 1, 2])
def test_rotation_matrix_column_is_that_column_and_keeps_float32(column):
    q = _unit_quaternions(np.random.default_rng(2), 50)
    expected = quaternion.as_rotation_matrix(quaternion.from_float_array(q))[:, :, column]
    np.testing.assert_allclose(rotation_matrix_column(q, column), expected, atol=1e-14)
    single = rotation_matrix_column(q.astype(np.float32).T.copy().T, column)  # a (4, N) view
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, expected, atol=1e-6)
    # hand-computed: the optical axis of a heading-90 camera is east
    np.testing.assert_allclose(rotation_matrix_column(HEADING_90[0], 2), EAST, atol=1e-15)


def test_rotation_matrix_column_rejects_bad_input():
    with pytest.raises(ValueError, match="column must be 0, 1 or 2"):
        rotation_matrix_column(np.array([1.0, 0, 0, 0]), 3)
    with pytest.raises(ShapeMismatchError, match=r"got shape \(3,\)"):
        rotation_matrix_column(np.zeros(3), 0)


def test_quaternion_product_features_give_pose_matrices_linearly():
    rng = np.random.default_rng(3)
    q, positions = _unit_quaternions(rng, 40), rng.normal(size=(40, 3))
    features = quaternion_product_features(q, positions)
    assert features.shape == (20, 40)
    flat = QUATERNION_PRODUCTS_TO_MATRIX @ features  # (16, N) row-major 4x4 matrices
    matrices = flat.T.reshape(-1, 4, 4)
    rotations = quaternion.as_rotation_matrix(quaternion.from_float_array(q))
    np.testing.assert_allclose(matrices[:, :3, :3], rotations, atol=1e-14)
    np.testing.assert_array_equal(matrices[:, :3, 3], positions)
    np.testing.assert_array_equal(matrices[:, 3], np.tile([0.0, 0.0, 0.0, 1.0], (40, 1)))
    # any linear map of the matrices folds into the constant: here the optical axes (column 2)
    pick = np.zeros((3, 16))
    pick[[0, 1, 2], [2, 6, 10]] = 1.0
    np.testing.assert_allclose(
        (pick @ QUATERNION_PRODUCTS_TO_MATRIX) @ features, rotations[:, :, 2].T, atol=1e-14
    )
    trajectory = Trajectory(positions, q, np.arange(40.0))
    np.testing.assert_array_equal(trajectory.wxyz, q / np.linalg.norm(q, axis=1, keepdims=True))
    np.testing.assert_allclose(matrices, trajectory.matrices, atol=1e-14)


def test_quaternion_product_features_hand_computed_yaw_and_shape_check():
    features = quaternion_product_features(np.array([YAW_90[0]]), np.array([[1.0, 2.0, 3.0]]))
    matrix = (QUATERNION_PRODUCTS_TO_MATRIX @ features)[:, 0].reshape(4, 4)
    np.testing.assert_allclose(matrix[:3, :3], YAW_90[1], atol=1e-15)
    assert not QUATERNION_PRODUCTS_TO_MATRIX.flags.writeable
    with pytest.raises(ShapeMismatchError, match=r"shapes \(N, 4\) and \(N, 3\), got \(2, 4\)"):
        quaternion_product_features(np.ones((2, 4)), np.ones((3, 3)))


def test_heading_quaternions_equal_pose_from_heading():
    headings = np.array([0.0, 90.0, 180.0, 270.0, 33.3, -45.0, 720.5])
    q = heading_quaternions(headings)
    assert q.shape == (7, 4)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-15)
    for h, row in zip(headings, q, strict=True):
        assert Pose(0.0, row).allclose(Pose.from_heading(np.zeros(3), h), atol=1e-14)
    np.testing.assert_allclose(quaternions_to_matrices(q[1]), HEADING_90[1], atol=1e-15)
    with pytest.raises(InvalidPoseError, match="heading_deg must be finite"):
        heading_quaternions([np.nan])
