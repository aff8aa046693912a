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
    segment_bounds,
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
    with pytest.raises(ConfigError, match="Did you mean 'two_view'"):
        SfMSettings(method="two-view")
    with pytest.raises(ConfigError, match="segment_frames must be null or an integer >= 3, got 2"):
        SfMSettings(segment_frames=2)
    with pytest.raises(ConfigError, match="min_parallax_px must be pixels >= 0, got -1"):
        SfMSettings(min_parallax_px=-1)


# --- structure from motion on rendered frames ---------------------------------------------------
CAMERA = PinholeCamera.from_fov(128, 96, 90.0)


def _route(town, turn_deg: float, lane_rank: int, count: int = 16) -> list[Pose]:
    """``count`` poses of a car along the ``lane_rank``-th long lane of the town, 0.8 m apart,
    turning ``turn_deg`` per frame, its camera nodding 2 degrees."""
    lanes = [
        lane
        for lane in town.road_network().lanes
        if lane.entry >= 0 and lane.exit >= 0 and len(lane.waypoints) > 20
    ]
    lane = lanes[lane_rank]
    start = lane.waypoints[len(lane.waypoints) // 4]
    d = lane.waypoints[len(lane.waypoints) // 4 + 1] - start
    d /= np.linalg.norm(d)
    heading = math.degrees(math.atan2(d[0], d[1]))
    return [
        Pose.from_heading(
            start + 0.8 * k * d + [0, 0, 1.6],
            heading + turn_deg * k,
            pitch_deg=2.0 * math.sin(k / 3),
        )
        for k in range(count)
    ]


@pytest.fixture(scope="module")
def drive():
    """16 frames of the empty town (SfM assumes a static scene) at known poses: a car along a
    lane, turning 1 degree per frame, its camera nodding 2 degrees."""
    with make_simulator(
        "town", seed=0, blocks=(2, 2), vehicle_density=0, pedestrian_density=0
    ) as town:
        poses = _route(town, turn_deg=1.0, lane_rank=0)
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


# --- the two-view estimator on rendered frames --------------------------------------------------
TWO_VIEW = SfMSettings(method="two_view")


@pytest.fixture(scope="module")
def two_view_floor(drive):
    """The two-view estimator on the drive's own frames: the floor a perfect generator gets."""
    frames, trajectory = drive
    return camera_errors(frames, trajectory, CAMERA, TWO_VIEW)


def test_two_view_recovers_the_rendered_trajectory(two_view_floor):
    result = two_view_floor
    # measured: 16 of 16 frames, RotErr 0.35 degree, TransErr 0.009
    assert result.ok and result.registered == 16, result.reason
    assert result.method == "two_view" and result.to_dict()["method"] == "two_view"
    assert result.rot_err_deg < 1.0
    assert result.trans_err < 0.05


def test_two_view_frames_played_backwards_are_far_above_the_floor(drive, two_view_floor):
    frames, trajectory = drive
    backwards = camera_errors(frames[::-1].copy(), trajectory, CAMERA, TWO_VIEW)
    # measured: every step found, all pointing the wrong way: RotErr 16.9 degrees, TransErr 1.05
    assert backwards.ok, backwards.reason
    assert backwards.trans_err > 0.5 and backwards.trans_err > 10 * two_view_floor.trans_err


def test_two_view_a_camera_that_does_not_move_is_far_above_the_floor(drive, two_view_floor):
    """One frame repeated (a generator stuck on its start image): every step has no parallax,
    so length 0, and the ground truth's turn is missed."""
    frames, trajectory = drive
    still = camera_errors(np.repeat(frames[:1], 16, axis=0), trajectory, CAMERA, TWO_VIEW)
    assert still.ok and still.registered == 16, still.reason
    # measured: RotErr 8.2 degrees (the turn and the nod), TransErr 0.53 (the mean of k / 15)
    assert still.trans_err > 0.4 and still.rot_err_deg > 5 * two_view_floor.rot_err_deg


def test_two_view_another_route_is_far_above_the_floor(drive, two_view_floor):
    """The same town from a car turning the other way on another street."""
    _, trajectory = drive
    with make_simulator(
        "town", seed=0, blocks=(2, 2), vehicle_density=0, pedestrian_density=0
    ) as town:
        other = _route(town, turn_deg=-2.0, lane_rank=1)
        town.set_time(NOON)
        frames = np.stack([town.render(CAMERA, pose).rgb for pose in other])
    wrong = camera_errors(frames, trajectory, CAMERA, TWO_VIEW)
    assert wrong.ok, wrong.reason
    # measured: RotErr 23.3 degrees; TransErr 0.023 only, as both routes are nearly straight
    # and the translations are normalised: TransErr alone cannot tell straight routes apart
    assert wrong.rot_err_deg > 5 * two_view_floor.rot_err_deg


def test_two_view_on_noise_gives_none_with_the_chain_named(drive):
    _, trajectory = drive
    noise = np.random.default_rng(0).integers(0, 256, (8, 96, 128, 3), dtype=np.uint8)
    settings = SfMSettings(method="two_view", max_features=512)  # noise: features everywhere
    result = camera_errors(noise, trajectory[:8], CAMERA, settings)
    assert result.rot_err is None and result.registered < 7
    assert result.reason.startswith(f"the two-view chain registered {result.registered} of 8")


def test_segments_are_scored_each_from_their_own_anchor(drive, two_view_floor):
    frames, trajectory = drive
    assert segment_bounds(49, 13) == [(0, 13), (12, 25), (24, 37), (36, 49)]
    assert segment_bounds(16, 6) == [(0, 6), (5, 11), (10, 16)]
    assert segment_bounds(14, 13) == [(0, 14)] and segment_bounds(16, None) == [(0, 16)]
    settings = SfMSettings(method="two_view", segment_frames=6)
    result = camera_errors(frames, trajectory, CAMERA, settings)
    assert result.ok and result.segments == 3 and result.segments_scored == 3
    # frame 0 is the only anchor not scored in another segment (5 and 10 end segments 1, 2)
    assert np.isnan(result.rot_per_frame[0]) and np.isfinite(result.rot_per_frame[1:]).all()
    # the middle segment's numbers are those of its frames alone, from its own first frame
    middle = camera_errors(frames[5:11], trajectory[5:11], CAMERA, TWO_VIEW)
    np.testing.assert_allclose(result.rot_per_frame[6:11], middle.rot_per_frame[1:6])
    np.testing.assert_allclose(result.trans_per_frame[6:11], middle.trans_per_frame[1:6])
    assert result.rot_err_deg < 1.0 and result.trans_err < 0.1
    assert result.to_dict()["segments_scored"] == 3
