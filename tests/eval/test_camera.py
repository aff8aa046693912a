"""RotErr / TransErr: the pure math against hand-computed poses, and SfM on town renders."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
import pytest

from carla_tools.backends import make_simulator
from cityenv.errors import ConfigError, ShapeMismatchError
from cityenv.eval.camera import (
    SfMSettings,
    camera_errors,
    errors_from_poses,
    estimate_poses,
    normalise_translations,
    relative_to_first,
    rotation_angles,
)
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose, Trajectory

NOON = datetime(2024, 5, 1, 3, 0, tzinfo=timezone.utc)


def _rot_y(deg: float) -> np.ndarray:
    """Rotation about the camera's y axis (a yaw in OpenCV axes), ``(3, 3)``."""
    a = math.radians(deg)
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def _straight(n: int = 5, step: float = 1.0) -> np.ndarray:
    """``n`` cameras looking along +z, moving ``step`` metres along +z per frame, ``(n, 4, 4)``."""
    m = np.tile(np.eye(4), (n, 1, 1))
    m[:, 2, 3] = step * np.arange(n)
    return m


# --- the pure math ---------------------------------------------------------------------------
def test_a_rotation_of_10_degrees_is_10_degrees():
    angles = rotation_angles(np.stack([np.eye(3), _rot_y(5)]), np.stack([_rot_y(10), _rot_y(-5)]))
    np.testing.assert_allclose(np.degrees(angles), [10.0, 10.0], atol=1e-9)


def test_relative_to_first_puts_frame_0_at_identity_in_its_own_axes():
    world = Pose.from_heading([10.0, -3.0, 2.0], 37.0, pitch_deg=-8.0).matrix
    rel = relative_to_first(world @ _straight(3))  # the same rig seen from another world frame
    np.testing.assert_allclose(rel[0], np.eye(4), atol=1e-12)
    np.testing.assert_allclose(rel, _straight(3), atol=1e-12)


def test_translations_are_normalised_by_the_farthest_camera():
    t = np.array([[0.0, 0, 0], [0, 0, 2], [0, 3, 4]])
    np.testing.assert_allclose(normalise_translations(t), t / 5.0)
    assert normalise_translations(np.zeros((3, 3))) is None


def test_errors_are_zero_for_the_same_path_in_another_frame_and_scale():
    gt = _straight(6)
    gt[:, :3, :3] = [_rot_y(3 * i) for i in range(6)]
    similarity = Pose.from_heading([4.0, 5.0, 6.0], 120.0, roll_deg=20.0).matrix
    est = similarity @ gt
    est[:, :3, 3] *= 3.7  # SfM's arbitrary scale: camera centres scale, rotations do not
    result = errors_from_poses(est, gt)
    assert result.ok and result.registered == 6 and result.reason == ""
    assert result.rot_err == pytest.approx(0.0, abs=1e-9)
    assert result.trans_err == pytest.approx(0.0, abs=1e-9)


def test_hand_computed_errors_are_means_over_the_frames_after_the_anchor():
    gt = _straight(5)  # extent 4 m: normalised centres z = 0, .25, .5, .75, 1
    est = gt.copy()
    est[2, :3, :3] = _rot_y(10.0)  # frame 2 turned 10 degrees too far
    est[3, 0, 3] = 1.0  # frame 3 one metre to the right: 0.25 in normalised units
    result = errors_from_poses(est, gt)
    np.testing.assert_allclose(np.degrees(result.rot_per_frame), [0, 0, 10, 0, 0], atol=1e-9)
    np.testing.assert_allclose(result.trans_per_frame, [0, 0, 0, 0.25, 0], atol=1e-12)
    assert result.rot_err_deg == pytest.approx(10.0 / 4)
    assert result.trans_err == pytest.approx(0.25 / 4)


def test_unregistered_frames_are_skipped_and_counted():
    gt = _straight(5)
    est = gt.copy()
    est[0] = np.nan  # SfM lost frame 0: frame 1 becomes the anchor of both trajectories
    result = errors_from_poses(est, gt, np.array([False, True, True, True, True]))
    assert result.registered == 4 and result.frames == 5
    assert result.rot_err == pytest.approx(0.0, abs=1e-12) and np.isnan(result.rot_per_frame[0])


def test_too_few_registered_frames_give_none_with_the_reason():
    gt = _straight(5)
    registered = np.array([True, True, False, False, False])
    result = errors_from_poses(gt, gt, registered, min_registered=4)
    assert result.rot_err is None and result.trans_err is None and not result.ok
    assert result.registered == 2
    assert result.reason == "SfM registered 2 of 5 frames; at least 4 needed"


def test_a_ground_truth_that_does_not_move_gives_none():
    gt = np.tile(np.eye(4), (4, 1, 1))
    gt[:, :3, :3] = [_rot_y(5 * i) for i in range(4)]
    result = errors_from_poses(gt, gt)
    assert result.rot_err is None and "do not move" in result.reason


def test_mismatched_shapes_are_refused():
    with pytest.raises(
        ShapeMismatchError, match=r"both be \(T, 4, 4\).*\(5, 4, 4\) and \(4, 4, 4\)"
    ):
        errors_from_poses(_straight(5), _straight(4))


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="Did you mean 'exhaustive'"):
        SfMSettings(matcher="exhaustiv")
    with pytest.raises(ConfigError, match="num_threads must be an integer >= 1, got 0"):
        SfMSettings(num_threads=0)
    assert SfMSettings().uses_exhaustive(24) and not SfMSettings().uses_exhaustive(40)


# --- structure from motion on rendered frames ---------------------------------------------------
CAMERA = PinholeCamera.from_fov(128, 96, 90.0)


@pytest.fixture(scope="module")
def drive():
    """16 frames of the empty town (SfM assumes a static scene) at known poses: a car along a
    lane, turning 1 degree per frame, its camera nodding 2 degrees."""
    with make_simulator(
        "town", seed=0, blocks=(2, 2), vehicle_density=0, pedestrian_density=0
    ) as town:
        lane = next(
            lane
            for lane in town.road_network().lanes
            if lane.entry >= 0 and lane.exit >= 0 and len(lane.waypoints) > 20
        )
        start = lane.waypoints[len(lane.waypoints) // 4]
        d = lane.waypoints[len(lane.waypoints) // 4 + 1] - start
        d /= np.linalg.norm(d)
        heading = math.degrees(math.atan2(d[0], d[1]))
        poses = [
            Pose.from_heading(
                start + 0.8 * k * d + [0, 0, 1.6], heading + k, pitch_deg=2.0 * math.sin(k / 3)
            )
            for k in range(16)
        ]
        trajectory = Trajectory.from_poses(poses, fps=10.0)
        town.set_time(NOON)
        frames = np.stack([town.render(CAMERA, pose).rgb for pose in poses])
    return frames, trajectory


def test_sfm_recovers_the_rendered_trajectory(drive):
    frames, trajectory = drive
    result = camera_errors(frames, trajectory, CAMERA)
    # measured: every frame registered, RotErr 0.3-1 degree, TransErr 0.01-0.05 at 128 x 96
    assert result.registered == 16 and result.ok, result.reason
    assert result.rot_err_deg < 2.0
    assert result.trans_err < 0.1
    assert set(result.seconds) == {"extract", "match", "map"}


def test_sfm_is_repeatable_and_sequential_matching_works(drive):
    frames, trajectory = drive
    first = estimate_poses(frames[:10], CAMERA)
    again = estimate_poses(frames[:10], CAMERA)
    np.testing.assert_array_equal(first.matrices, again.matrices)
    sequential = camera_errors(frames, trajectory, CAMERA, SfMSettings(matcher="sequential"))
    assert sequential.ok and sequential.rot_err_deg < 2.0 and sequential.trans_err < 0.1


def test_a_shuffled_video_gets_a_large_error_or_none(drive):
    frames, trajectory = drive
    order = np.random.default_rng(0).permutation(len(frames))
    result = camera_errors(frames[order], trajectory, CAMERA)
    # measured: all frames register at their true places, so the path is scrambled (~0.35)
    assert result.trans_err is None or result.trans_err > 0.2


def test_a_noise_video_gives_none_with_the_registered_count(drive):
    _, trajectory = drive
    noise = np.random.default_rng(0).integers(0, 256, (16, 96, 128, 3), dtype=np.uint8)
    result = camera_errors(noise, trajectory, CAMERA)
    assert result.rot_err is None and result.trans_err is None
    assert result.registered < 13
    assert result.reason.startswith(f"SfM registered {result.registered} of 16 frames")
    assert result.to_dict()["rot_err"] is None


def test_ignored_pixels_give_no_features(drive):
    frames, trajectory = drive
    ignore = np.ones(frames.shape[:3], bool)
    ignore[:, :, :8] = False  # an 8-pixel strip on the left: too little to start a model
    result = camera_errors(frames, trajectory, CAMERA, ignore=ignore)
    assert result.rot_err is None and result.registered < 13


def test_frames_that_do_not_fit_are_refused(drive):
    frames, trajectory = drive
    with pytest.raises(ShapeMismatchError, match="same length, got 15 frames and 16 poses"):
        camera_errors(frames[:15], trajectory, CAMERA)
    with pytest.raises(ShapeMismatchError, match=r"uint8 \(T, 96, 128, 3\)"):
        camera_errors(frames.astype(np.float32), trajectory, CAMERA)
    with pytest.raises(ShapeMismatchError, match="ignore must be"):
        camera_errors(frames, trajectory, CAMERA, ignore=np.zeros((16, 4, 4), bool))
